// The participants panel: everyone in the meeting, raised hands first, then oneself,
// then by name, each with their microphone, camera and hand state, an « identifié·e »
// badge for identified members of the room, and (for moderators) the moderation buttons
// and the waiting room (moderation.ts).

import { Track, type Participant } from 'livekit-client';
import { h, hueOf, initials } from './dom';
import { icon } from './icons';
import { t } from './i18n';
import { matrixIdOf, type Moderation } from './moderation';

/** How the meeting names people: its own rules for the local participant. */
export interface Naming {
  nameOf(p: Participant): string;
  identityOf(p: Participant): string;
}

/** The « identifié·e » badge, with the Matrix ID as its tooltip and accessible description. */
export function identifiedBadge(matrixId: string): HTMLElement {
  const label = t('participants.identifiedAs', { user: matrixId });
  return h('span', { class: 'id-badge', 'data-testid': 'identified-badge', 'data-matrix-id': matrixId, title: label },
    icon('verified'), h('span', { 'aria-hidden': 'true' }, t('participants.identified')), h('span', { class: 'sr-only' }, label));
}

export class ParticipantsPanel {
  readonly el: HTMLElement;
  private readonly heading = h('h2', { id: 'participants-heading' });
  private readonly list = h('ul', { class: 'participant-list', 'data-testid': 'participant-list' });
  /** The rows by identity, with what they show: a row is rebuilt only when that changes. */
  private readonly rows = new Map<string, { signature: string; el: HTMLElement }>();

  constructor(private readonly naming: Naming, close: () => void, private readonly moderation?: Moderation) {
    this.el = h(
      'section',
      { class: 'panel participants-panel', id: 'participants-panel', 'aria-labelledby': 'participants-heading', hidden: true },
      h('header', { class: 'panel-header' }, this.heading,
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('participants.close'), title: t('participants.close'), onclick: close }, icon('close'))),
      h('div', { class: 'panel-scroll' }, moderation?.el ?? null, this.list),
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
    const moderating = this.moderation?.isActive ?? false;
    // Rebuilding a row drops the focus inside it: put it back on the same button.
    const focused = document.activeElement instanceof HTMLElement && this.list.contains(document.activeElement)
      ? document.activeElement.dataset.focusKey
      : undefined;
    const seen = new Set<string>();
    const items = sorted.map((p) => {
      const identity = naming.identityOf(p);
      seen.add(identity);
      const name = naming.nameOf(p);
      const micPub = p.getTrackPublication(Track.Source.Microphone);
      const camPub = p.getTrackPublication(Track.Source.Camera);
      const micOff = !micPub || micPub.isMuted;
      const camOff = !camPub || camPub.isMuted;
      const hand = p.attributes?.hand === 'up';
      const matrixId = matrixIdOf(p);
      const isLocal = p === local;
      const signature = JSON.stringify([name, micOff, camOff, hand, matrixId, isLocal, moderating && !isLocal]);
      const row = this.rows.get(identity);
      if (row && row.signature === signature) return row.el;
      const states = [hand ? t('tile.handRaised') : '', micOff ? t('tile.micMuted') : '', camOff ? t('participants.cameraOff') : ''].filter(Boolean);
      const el = h(
        'li',
        { class: 'participant-item', 'data-testid': 'participant-item', 'data-identity': identity, 'data-matrix-id': matrixId },
        h('span', { class: 'avatar small', 'aria-hidden': 'true', style: `--hue:${hueOf(identity)}` }, initials(name)),
        h('span', { class: 'participant-name' },
          h('span', {}, isLocal ? t('tile.you', { name }) : name),
          matrixId ? identifiedBadge(matrixId) : null,
          matrixId ? h('span', { class: 'matrix-id', 'aria-hidden': 'true' }, matrixId) : null,
          states.length ? h('span', { class: 'sr-only' }, `, ${states.join(', ')}`) : null),
        h('span', { class: 'participant-icons', 'aria-hidden': 'true' },
          hand ? h('span', { class: 'hand-icon', title: t('tile.handRaised') }, icon('hand')) : null,
          icon(micOff ? 'micOff' : 'mic', micOff ? 'icon off' : 'icon'),
          icon(camOff ? 'camOff' : 'cam', camOff ? 'icon off' : 'icon')),
        moderating && !isLocal ? this.moderation?.participantActions(p, name, !micOff, !camOff) ?? null : null,
      );
      this.rows.set(identity, { signature, el });
      return el;
    });
    for (const identity of [...this.rows.keys()]) if (!seen.has(identity)) this.rows.delete(identity);
    const current = [...this.list.children];
    if (current.length !== items.length || current.some((el, i) => el !== items[i])) this.list.replaceChildren(...items);
    if (focused && !(document.activeElement instanceof HTMLElement && this.list.contains(document.activeElement))) {
      const byKey = (key: string) => this.list.querySelector<HTMLButtonElement>(`[data-focus-key="${CSS.escape(key)}"]`);
      const target = byKey(focused);
      // A button that became disabled (the microphone is muted now): its row's "remove".
      const fallback = byKey(`${focused.slice(0, focused.lastIndexOf(':'))}:remove`);
      if (target && !target.disabled) target.focus();
      else if (fallback) fallback.focus();
      else this.el.querySelector<HTMLElement>('.panel-header button')?.focus();
    }
  }
}
