// Reactions: the menu of emoji (a keyboard-navigable menu button), sending one as a data
// packet on topic `tv.reaction` ({"emoji": "👍"}), and the bubbles that float up for
// ours and everyone else's. Only the emoji of the menu are shown; others are ignored.

import type { RemoteParticipant, Room } from 'livekit-client';
import { h } from './dom';
import { t, type Key } from './i18n';
import type { Notices } from './notices';
import { participantName } from './tile';

export const REACTION_TOPIC = 'tv.reaction';
const REACTIONS: { emoji: string; label: Key }[] = [
  { emoji: '👍', label: 'reaction.thumbsUp' },
  { emoji: '👏', label: 'reaction.clap' },
  { emoji: '😂', label: 'reaction.laugh' },
  { emoji: '❤️', label: 'reaction.heart' },
  { emoji: '🎉', label: 'reaction.party' },
  { emoji: '😮', label: 'reaction.surprised' },
  { emoji: '🤔', label: 'reaction.thinking' },
];

/** What reactions need from the meeting. */
export interface ReactionHost {
  room: Room;
  /** Whether the meeting is connected (nothing is sent before, or after leaving). */
  connected(): boolean;
  notices: Notices;
}

export class Reactions {
  private readonly menu = h('div', { class: 'reaction-menu', role: 'menu', id: 'reaction-menu', 'aria-label': t('meeting.reactions'), hidden: true });
  /** Where the bubbles float (over the stage, hidden from assistive technology). */
  readonly layer = h('div', { class: 'reaction-layer', 'aria-hidden': 'true' });
  private lastSentAt = 0;

  constructor(
    private readonly host: ReactionHost,
    /** The control bar's button that opens the menu. */
    private readonly button: HTMLButtonElement,
  ) {
    button.setAttribute('aria-haspopup', 'menu');
    button.setAttribute('aria-controls', 'reaction-menu');
    button.setAttribute('aria-expanded', 'false');
    for (const reaction of REACTIONS) {
      this.menu.appendChild(
        h('button', {
          type: 'button',
          role: 'menuitem',
          class: 'reaction-item',
          'data-testid': 'reaction',
          'data-emoji': reaction.emoji,
          'aria-label': t(reaction.label),
          title: t(reaction.label),
          tabindex: '-1',
          onclick: () => { this.send(reaction.emoji); this.closeMenu(true); },
        }, reaction.emoji),
      );
    }
    this.menu.addEventListener('keydown', (e: KeyboardEvent) => this.onMenuKey(e));
    this.menu.addEventListener('focusout', (e: FocusEvent) => {
      const next = e.relatedTarget as Node | null;
      if (next && !this.menu.contains(next) && next !== this.button) this.closeMenu(false);
    });
  }

  /** The button and its menu, for the control bar. */
  controls(): HTMLElement {
    return h('div', { class: 'reaction-wrap' }, this.button, this.menu);
  }

  get menuOpen(): boolean {
    return !this.menu.hidden;
  }

  toggleMenu(): void {
    if (this.menu.hidden) this.openMenu();
    else this.closeMenu(true);
  }

  private openMenu(): void {
    this.menu.hidden = false;
    this.button.setAttribute('aria-expanded', 'true');
    (this.menu.firstElementChild as HTMLElement | null)?.focus();
  }

  closeMenu(returnFocus: boolean): void {
    if (this.menu.hidden) return;
    this.menu.hidden = true;
    this.button.setAttribute('aria-expanded', 'false');
    if (returnFocus) this.button.focus();
  }

  private onMenuKey(e: KeyboardEvent): void {
    const items = [...this.menu.querySelectorAll<HTMLButtonElement>('[role=menuitem]')];
    const index = items.indexOf(document.activeElement as HTMLButtonElement);
    const move = (i: number) => items[(i + items.length) % items.length]?.focus();
    switch (e.key) {
      case 'ArrowRight':
      case 'ArrowDown':
        move(index + 1);
        break;
      case 'ArrowLeft':
      case 'ArrowUp':
        move(index - 1);
        break;
      case 'Home':
        move(0);
        break;
      case 'End':
        move(items.length - 1);
        break;
      case 'Escape':
        this.closeMenu(true);
        break;
      case 'Tab':
        this.closeMenu(false);
        return;
      default:
        return;
    }
    e.preventDefault();
    e.stopPropagation();
  }

  /** Sends a reaction (at most one every 300 ms) and shows it as ours. */
  private send(emoji: string): void {
    const now = Date.now();
    if (now - this.lastSentAt < 300 || !this.host.connected()) return;
    this.lastSentAt = now;
    const payload = new TextEncoder().encode(JSON.stringify({ emoji }));
    this.host.room.localParticipant.publishData(payload, { reliable: true, topic: REACTION_TOPIC }).catch(() => this.host.notices.toast(t('meeting.actionFailed')));
    this.show(emoji, t('tile.youShort'));
  }

  /** A data packet on REACTION_TOPIC from `p`: shown and announced if it is one of ours. */
  receive(payload: Uint8Array, p: RemoteParticipant): void {
    try {
      const data = JSON.parse(new TextDecoder().decode(payload)) as { emoji?: unknown };
      const emoji = typeof data.emoji === 'string' ? data.emoji : '';
      if (!REACTIONS.some((r) => r.emoji === emoji)) return;
      const name = participantName(p);
      this.show(emoji, name);
      this.host.notices.announce(t('meeting.reactedBy', { name, reaction: t(REACTIONS.find((r) => r.emoji === emoji)!.label) }));
    } catch {
      /* not ours */
    }
  }

  private show(emoji: string, name: string): void {
    const bubble = h('div', { class: 'reaction-bubble', 'data-testid': 'reaction-bubble', style: `--x:${10 + Math.random() * 60}%` },
      h('span', { class: 'reaction-emoji' }, emoji), h('span', { class: 'reaction-name' }, name));
    this.layer.appendChild(bubble);
    window.setTimeout(() => bubble.remove(), 4000);
  }
}
