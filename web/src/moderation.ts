// What a moderator does from the page (the local participant carries the attribute
// `tchap.moderator` = "true", set by the server): mute someone's microphone or camera,
// remove them, let in or refuse the guests of the waiting room (polled while the
// participants panel is open, more slowly while it is closed), and end the meeting for
// everyone. The server checks every action again (POST .../moderation); this module
// only offers them.

import type { Participant } from 'livekit-client';
import { ApiError, getLobbyList, moderate, type ModerationAction, type WaitingGuest } from './api';
import { h } from './dom';
import { icon } from './icons';
import { t, type Key } from './i18n';
import type { Notices } from './notices';

/** The participant attributes the server sets (reserved: a page cannot set them on itself). */
export const MATRIX_ID_ATTRIBUTE = 'tchap.matrix_id';
export const ACCESS_ATTRIBUTE = 'tchap.access';
export const MODERATOR_ATTRIBUTE = 'tchap.moderator';

/** The Matrix ID of an identified member, if the participant is one. */
export function matrixIdOf(p: Participant): string | undefined {
  const id = p.attributes?.[MATRIX_ID_ATTRIBUTE];
  return id ? id : undefined;
}

export function isModerator(p: Participant): boolean {
  return p.attributes?.[MODERATOR_ATTRIBUTE] === 'true';
}

/** A 404 or 405 that is not the API's own JSON error: the server has no such route. */
function routeMissing(error: unknown): boolean {
  return error instanceof ApiError && ((error.status === 404 && !error.isJson) || error.status === 405);
}

/** Polling periods of the waiting room (ms): panel open, panel closed. */
const POLL_OPEN_MS = 4000;
const POLL_CLOSED_MS = 15000;

/** A yes/no question in a modal dialog (the browser's own confirm() is not styled or translated). */
class ConfirmDialog {
  readonly el = h('dialog', { class: 'dialog confirm-dialog', 'aria-labelledby': 'confirm-text', 'data-testid': 'confirm-dialog' });
  private readonly text = h('p', { id: 'confirm-text', class: 'confirm-text' });
  private readonly yes = h('button', { type: 'button', class: 'btn danger-btn', 'data-testid': 'confirm-yes' }, t('moderation.confirm'));
  private readonly no = h('button', { type: 'button', class: 'btn', 'data-testid': 'confirm-no' }, t('moderation.cancel'));
  private answer: ((yes: boolean) => void) | null = null;

  constructor() {
    this.el.append(this.text, h('div', { class: 'step-actions' }, this.no, this.yes));
    this.yes.addEventListener('click', () => this.close(true));
    this.no.addEventListener('click', () => this.close(false));
    // Escape closes the dialog: a "no".
    this.el.addEventListener('close', () => this.settle(false));
  }

  ask(question: string): Promise<boolean> {
    this.settle(false);
    this.text.textContent = question;
    return new Promise((resolve) => {
      this.answer = resolve;
      const back = document.activeElement instanceof HTMLElement ? document.activeElement : null;
      this.el.addEventListener('close', () => back?.isConnected && back.focus(), { once: true });
      if (!this.el.open) this.el.showModal();
      this.no.focus();
    });
  }

  private close(yes: boolean): void {
    this.settle(yes);
    if (this.el.open) this.el.close();
  }

  private settle(yes: boolean): void {
    const answer = this.answer;
    this.answer = null;
    answer?.(yes);
  }
}

export class Moderation {
  /** The waiting room and "end for everyone", shown in the participants panel to moderators. */
  readonly el: HTMLElement;
  readonly dialog = new ConfirmDialog();
  private readonly lobbyHeading = h('h3', { id: 'lobby-heading', class: 'lobby-heading' });
  private readonly lobbyList = h('ul', { class: 'lobby-list', 'data-testid': 'lobby-list' });
  private readonly lobbyEmpty = h('p', { class: 'lobby-empty' }, t('moderation.lobbyEmpty'));
  private readonly lobbySection: HTMLElement;
  private active = false;
  private panelOpen = false;
  /** The server answered 404 on the list: no waiting room to show (an older server). */
  private lobbyUnavailable = false;
  private timer = 0;
  private polling = false;
  private readonly known = new Set<string>();
  private firstPoll = true;
  private stopped = false;

  constructor(
    private readonly slug: string,
    private readonly notices: Notices,
  ) {
    this.lobbySection = h('section', { class: 'lobby-panel', 'aria-labelledby': 'lobby-heading', 'data-testid': 'lobby-panel', hidden: true },
      this.lobbyHeading, this.lobbyEmpty, this.lobbyList);
    const end = h('button', { type: 'button', class: 'btn small danger-btn end-all', 'data-testid': 'end-for-all', onclick: () => void this.endForAll() },
      icon('leave'), t('moderation.end'));
    this.el = h('div', { class: 'moderation', 'data-testid': 'moderation', hidden: true },
      this.lobbySection,
      h('div', { class: 'moderation-end' }, end));
    this.renderLobby([]);
  }

  get isActive(): boolean {
    return this.active;
  }

  /** Whether the local participant moderates (from its attributes); starts or stops the polling. */
  setActive(active: boolean): void {
    if (this.stopped || active === this.active) return;
    this.active = active;
    this.el.hidden = !active;
    if (active) this.schedule(0);
    else window.clearTimeout(this.timer);
  }

  /** The participants panel opened or closed: poll faster while it is open. */
  setPanelOpen(open: boolean): void {
    this.panelOpen = open;
    if (this.active && open) this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.timer);
    if (this.dialog.el.open) this.dialog.el.close();
  }

  private schedule(ms: number): void {
    window.clearTimeout(this.timer);
    if (!this.active || this.stopped || this.lobbyUnavailable) return;
    this.timer = window.setTimeout(() => void this.poll(), ms);
  }

  private async poll(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      const waiting = await getLobbyList(this.slug);
      if (this.stopped) return;
      this.lobbySection.hidden = false;
      this.renderLobby(waiting);
    } catch (error) {
      if (routeMissing(error)) {
        // No waiting room to read from this page (an older server): the bot's notice in
        // the room remains the way to admit guests.
        this.lobbyUnavailable = true;
        this.lobbySection.hidden = true;
      } else if (error instanceof ApiError && error.status === 403) {
        this.lobbySection.hidden = true;
      }
    } finally {
      this.polling = false;
      this.schedule(this.panelOpen ? POLL_OPEN_MS : POLL_CLOSED_MS);
    }
  }

  private renderLobby(waiting: WaitingGuest[]): void {
    const count = waiting.length;
    this.lobbyHeading.textContent = t('moderation.lobbyTitle', { count });
    this.lobbyEmpty.hidden = count > 0;
    // Newcomers, once the first list is known: a toast and a word for screen readers.
    const ids = new Set(waiting.map((g) => g.id));
    for (const guest of waiting) {
      if (!this.known.has(guest.id) && !this.firstPoll) {
        const text = t('moderation.newGuest', { name: guest.name });
        this.notices.toast(text);
        this.notices.announce(text);
      }
    }
    this.known.clear();
    for (const id of ids) this.known.add(id);
    this.firstPoll = false;

    const focusKey = (document.activeElement as HTMLElement | null)?.dataset?.focusKey;
    const items = waiting.map((guest) => {
      const minutes = guest.since ? Math.floor((Date.now() - guest.since) / 60000) : 0;
      return h('li', { class: 'lobby-item', 'data-testid': 'lobby-guest', 'data-lobby-id': guest.id, 'data-number': guest.number },
        h('span', { class: 'lobby-guest' },
          h('span', { class: 'lobby-guest-name' }, t('moderation.lobbyGuest', { number: guest.number, name: guest.name })),
          guest.user_id ? h('span', { class: 'matrix-id' }, guest.user_id) : null,
          minutes > 0 ? h('span', { class: 'lobby-since' }, t('moderation.waitingSince', { minutes })) : null),
        h('span', { class: 'lobby-actions' },
          this.actionButton('moderation.admitShort', t('moderation.admit', { name: guest.name }), `admit:${guest.id}`, 'lobby-admit', 'primary',
            () => this.act({ action: 'admit', lobby_id: guest.id }, t('moderation.admitted', { name: guest.name }))),
          this.actionButton('moderation.refuseShort', t('moderation.refuse', { name: guest.name }), `refuse:${guest.id}`, 'lobby-refuse', '',
            () => this.act({ action: 'refuse', lobby_id: guest.id }, t('moderation.refused', { name: guest.name })))),
      );
    });
    this.lobbyList.replaceChildren(...items);
    if (focusKey) (this.lobbyList.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`) as HTMLElement | null)?.focus();
  }

  private actionButton(text: Key, label: string, focusKey: string, testid: string, variant: string, run: () => void): HTMLButtonElement {
    return h('button', {
      type: 'button',
      class: `btn small ${variant}`.trim(),
      'aria-label': label,
      title: label,
      'data-testid': testid,
      'data-focus-key': focusKey,
      onclick: run,
    }, t(text));
  }

  /**
   * The moderator buttons of one participant in the list (mute microphone, mute camera,
   * remove), or null when the local participant does not moderate.
   */
  participantActions(p: Participant, name: string, micOn: boolean, camOn: boolean): HTMLElement | null {
    if (!this.active) return null;
    const identity = p.identity;
    const button = (iconName: Parameters<typeof icon>[0], label: string, action: string, enabled: boolean, run: () => void) =>
      h('button', {
        type: 'button',
        class: 'icon-btn mod-btn',
        'aria-label': label,
        title: label,
        'data-testid': `mod-${action}`,
        'data-focus-key': `${identity}:${action}`,
        disabled: !enabled,
        onclick: run,
      }, icon(iconName));
    return h('span', { class: 'mod-actions', role: 'group', 'aria-label': t('participants.actionsFor', { name }) },
      button('micOff', t('moderation.muteMic', { name }), 'mute-mic', micOn,
        () => void this.act({ action: 'mute', identity, source: 'microphone' }, t('moderation.muted'))),
      button('camOff', t('moderation.muteCamera', { name }), 'mute-camera', camOn,
        () => void this.act({ action: 'mute', identity, source: 'camera' }, t('moderation.muted'))),
      button('personRemove', t('moderation.remove', { name }), 'remove', true,
        () => void this.remove(identity, name)),
    );
  }

  private async remove(identity: string, name: string): Promise<void> {
    if (!(await this.dialog.ask(t('moderation.removeConfirm', { name })))) return;
    await this.act({ action: 'remove', identity }, t('moderation.removed', { name }));
  }

  private async endForAll(): Promise<void> {
    if (!(await this.dialog.ask(t('moderation.endConfirm')))) return;
    // The meeting's end disconnects everyone, this page too: its "ended" screen follows.
    await this.act({ action: 'end' });
  }

  private async act(action: ModerationAction, done?: string): Promise<void> {
    try {
      await moderate(this.slug, action);
      if (done) {
        this.notices.toast(done);
        this.notices.announce(done);
      }
      if (action.action === 'admit' || action.action === 'refuse') this.schedule(0);
    } catch (error) {
      const key =
        routeMissing(error) ? 'moderation.unsupported'
          : error instanceof ApiError && error.status === 403 ? 'moderation.forbidden'
            : 'moderation.failed';
      this.notices.toast(t(key));
      this.notices.announce(t(key));
    }
  }
}
