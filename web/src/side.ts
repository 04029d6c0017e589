// The side panel: the chat or the participants list, one at a time, the two control-bar
// buttons that open them (with the unread-messages and people-count badges), and where
// the focus goes when one opens or closes.

import type { Participant, Room } from 'livekit-client';
import { ChatPanel, isTouchScreen } from './chat';
import type { ControlButtons } from './controls';
import { h } from './dom';
import { t } from './i18n';
import type { Notices } from './notices';
import type { Moderation } from './moderation';
import { ParticipantsPanel, type Naming } from './participants';

export type PanelName = 'chat' | 'participants';

/** What the side panel needs from the meeting. */
export interface SideHost {
  room: Room;
  /** The local participant's display name (for their own chat messages). */
  name: () => string;
  naming: Naming;
  buttons: ControlButtons;
  notices: Notices;
  /** The meeting's element: marked `panel-open` while a panel is open. */
  main: HTMLElement;
  /** The stage changed width: lay it out again. */
  relayout: () => void;
  /** The moderator's tools, shown in the participants panel. */
  moderation?: Moderation;
}

export class SidePanels {
  readonly el = h('aside', { class: 'side', hidden: true });
  readonly chat: ChatPanel;
  private readonly participants: ParticipantsPanel;
  readonly chatButton: HTMLButtonElement;
  readonly peopleButton: HTMLButtonElement;
  private readonly unreadBadge = h('span', { class: 'badge', 'data-testid': 'chat-unread', hidden: true, 'aria-hidden': 'true' });
  private readonly countBadge = h('span', { class: 'badge neutral', 'aria-hidden': 'true' });
  private current: PanelName | null = null;

  constructor(private readonly host: SideHost) {
    this.chat = new ChatPanel(
      host.room,
      host.name,
      () => this.set(null),
      (count, latest) => this.onUnread(count, latest),
      (message) => host.notices.toast(message),
    );
    this.participants = new ParticipantsPanel(host.naming, () => this.set(null), host.moderation);
    this.el.append(this.chat.el, this.participants.el);
    this.chatButton = host.buttons.make('toggle-chat', 'chat', 'meeting.chat', () => this.toggle('chat'), 'C');
    this.chatButton.setAttribute('aria-controls', 'chat-panel');
    this.chatButton.setAttribute('aria-expanded', 'false');
    this.chatButton.appendChild(this.unreadBadge);
    this.peopleButton = host.buttons.make('toggle-participants', 'people', 'meeting.participants', () => this.toggle('participants'), 'P');
    this.peopleButton.setAttribute('aria-controls', 'participants-panel');
    this.peopleButton.setAttribute('aria-expanded', 'false');
    this.peopleButton.appendChild(this.countBadge);
  }

  toggle(panel: PanelName): void {
    this.set(this.current === panel ? null : panel);
  }

  /** Escape: closes the open panel if the focus is inside it; true when it did. */
  closeIfFocused(): boolean {
    if (!this.current || !this.el.contains(document.activeElement)) return false;
    this.set(null);
    return true;
  }

  set(panel: PanelName | null): void {
    const previous = this.current;
    this.current = panel;
    this.el.hidden = panel === null;
    this.chat.setOpen(panel === 'chat');
    this.participants.el.hidden = panel !== 'participants';
    this.host.moderation?.setPanelOpen(panel === 'participants');
    this.chatButton.setAttribute('aria-expanded', String(panel === 'chat'));
    this.peopleButton.setAttribute('aria-expanded', String(panel === 'participants'));
    this.chatButton.classList.toggle('active', panel === 'chat');
    this.peopleButton.classList.toggle('active', panel === 'participants');
    this.host.main.classList.toggle('panel-open', panel !== null);
    // On a touch screen the field is not focused: that would open the keyboard over the chat.
    if (panel === 'chat') (isTouchScreen() ? this.chat.logElement : this.chat.input).focus();
    else if (panel === 'participants') (this.participants.el.querySelector('button') as HTMLButtonElement | null)?.focus();
    else if (previous) (previous === 'chat' ? this.chatButton : this.peopleButton).focus();
    this.host.relayout();
  }

  /** The people count on the participants button, and the list. */
  renderParticipants(people: Participant[], local: Participant): void {
    const count = people.length;
    this.countBadge.textContent = String(count);
    // The visible count is part of the button's name (axe-core: label-content-name-mismatch;
    // it ignores words in parentheses, so "Participants (2)" would not do).
    const peopleLabel = t('meeting.count', { count });
    this.peopleButton.setAttribute('aria-label', peopleLabel);
    this.peopleButton.title = `${peopleLabel} (P)`;
    this.participants.render(people, local);
  }

  private onUnread(count: number, latest?: { author: string; text: string }): void {
    this.unreadBadge.hidden = count === 0;
    const shown = count > 99 ? '99+' : String(count);
    this.unreadBadge.textContent = shown;
    // The name holds the badge's text as shown, outside parentheses (axe-core's
    // label-content-name-mismatch).
    const label = count === 0 ? t('meeting.chat') : t('meeting.chatUnread', { count, shown });
    this.chatButton.setAttribute('aria-label', label);
    if (latest) this.host.notices.toast(t('chat.newMessage', { name: latest.author }), latest.text.slice(0, 120));
  }
}
