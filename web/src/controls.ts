// The meeting's buttons (control bar and header): each made with its label, shortcut
// hint and icon, and kept in step with what is on (pressed state, icon, label).

import { h } from './dom';
import { icon, type IconName } from './icons';
import { t, type Key } from './i18n';
import type { Layout } from './layout';

/** What the buttons show. */
export interface ControlState {
  mic: boolean;
  camera: boolean;
  screen: boolean;
  hand: boolean;
  layout: Layout;
}

export class ControlButtons {
  /** Every button made, by its `data-testid`. */
  readonly byId: Record<string, HTMLButtonElement> = {};

  /** A button with an icon, a label (its name and tooltip) and an optional shortcut hint. */
  make(testid: string, iconName: IconName, label: Key, run: () => void, shortcut?: string, variant = ''): HTMLButtonElement {
    const text = t(label);
    const button = h('button', {
      type: 'button',
      class: `ctrl ${variant}`.trim(),
      'data-testid': testid,
      'aria-label': text,
      title: shortcut ? `${text} (${shortcut})` : text,
      'aria-keyshortcuts': shortcut ? shortcut.replace('Maj+', 'Shift+') : null,
      onclick: run,
    }, icon(iconName));
    this.byId[testid] = button;
    return button;
  }

  update(state: ControlState): void {
    const set = (id: string, pressed: boolean, iconOn: IconName, iconOff: IconName) => {
      const button = this.byId[id];
      button.setAttribute('aria-pressed', String(pressed));
      button.classList.toggle('off', !pressed && (id === 'toggle-mic' || id === 'toggle-camera'));
      button.classList.toggle('active', pressed && id !== 'toggle-mic' && id !== 'toggle-camera');
      const svg = button.querySelector('svg');
      const wanted = pressed ? iconOn : iconOff;
      if (svg?.dataset.icon !== wanted) {
        const next = icon(wanted);
        next.dataset.icon = wanted;
        if (svg) svg.replaceWith(next);
        else button.prepend(next);
      }
    };
    set('toggle-mic', state.mic, 'mic', 'micOff');
    set('toggle-camera', state.camera, 'cam', 'camOff');
    set('toggle-screen', state.screen, 'screenStop', 'screen');
    set('raise-hand', state.hand, 'hand', 'hand');
    this.byId['toggle-screen'].setAttribute('aria-label', t(state.screen ? 'meeting.screenStop' : 'meeting.screen'));
    const layoutButton = this.byId['toggle-layout'];
    const speaker = state.layout === 'speaker';
    const layoutLabel = t(speaker ? 'meeting.layoutGrid' : 'meeting.layoutSpeaker');
    layoutButton.setAttribute('aria-label', layoutLabel);
    layoutButton.title = `${layoutLabel} (G)`;
    const layoutIcon: IconName = speaker ? 'grid' : 'speaker';
    const svg = layoutButton.querySelector('svg');
    if (svg?.dataset.icon !== layoutIcon) {
      const next = icon(layoutIcon);
      next.dataset.icon = layoutIcon;
      svg?.replaceWith(next);
    }
  }
}
