// The participants panel: everyone in the meeting, raised hands first, then oneself,
// then by name, each with their microphone, camera and hand state.

import { Track, type Participant } from 'livekit-client';
import { h, hueOf, initials } from './dom';
import { icon } from './icons';
import { t } from './i18n';

/** How the meeting names people: its own rules for the local participant. */
export interface Naming {
  nameOf(p: Participant): string;
  identityOf(p: Participant): string;
}

export class ParticipantsPanel {
  readonly el: HTMLElement;
  private readonly heading = h('h2', { id: 'participants-heading' });
  private readonly list = h('ul', { class: 'participant-list', 'data-testid': 'participant-list' });

  constructor(private readonly naming: Naming, close: () => void) {
    this.el = h(
      'section',
      { class: 'panel participants-panel', id: 'participants-panel', 'aria-labelledby': 'participants-heading', hidden: true },
      h('header', { class: 'panel-header' }, this.heading,
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('participants.close'), title: t('participants.close'), onclick: close }, icon('close'))),
      this.list,
    );
  }

  render(people: Participant[], local: Participant): void {
    const naming = this.naming;
    this.heading.textContent = t('participants.title', { count: people.length });
    const sorted = [...people].sort((a, b) => {
      const handA = a.attributes?.hand === 'up' ? 0 : 1;
      const handB = b.attributes?.hand === 'up' ? 0 : 1;
      if (handA !== handB) return handA - handB;
      if (a === local) return -1;
      if (b === local) return 1;
      return naming.nameOf(a).localeCompare(naming.nameOf(b));
    });
    const items = sorted.map((p) => {
      const name = naming.nameOf(p);
      const micPub = p.getTrackPublication(Track.Source.Microphone);
      const camPub = p.getTrackPublication(Track.Source.Camera);
      const micOff = !micPub || micPub.isMuted;
      const camOff = !camPub || camPub.isMuted;
      const hand = p.attributes?.hand === 'up';
      const states = [hand ? t('tile.handRaised') : '', micOff ? t('tile.micMuted') : '', camOff ? t('participants.cameraOff') : ''].filter(Boolean);
      return h(
        'li',
        { class: 'participant-item', 'data-testid': 'participant-item', 'data-identity': naming.identityOf(p) },
        h('span', { class: 'avatar small', 'aria-hidden': 'true', style: `--hue:${hueOf(naming.identityOf(p))}` }, initials(name)),
        h('span', { class: 'participant-name' }, p === local ? t('tile.you', { name }) : name,
          states.length ? h('span', { class: 'sr-only' }, `, ${states.join(', ')}`) : null),
        h('span', { class: 'participant-icons', 'aria-hidden': 'true' },
          hand ? h('span', { class: 'hand-icon', title: t('tile.handRaised') }, icon('hand')) : null,
          icon(micOff ? 'micOff' : 'mic', micOff ? 'icon off' : 'icon'),
          icon(camOff ? 'camOff' : 'cam', camOff ? 'icon off' : 'icon')),
      );
    });
    this.list.replaceChildren(...items);
  }
}
