// The chat panel on livekit-client's text streams (topic "lk.chat"). Messages from the
// server participant `tchap` (chat coming from the Matrix room) carry their author in
// the stream attribute `tchap.author_name`, and the Matrix event id as their stream id.
// On joining, the stored history (GET /api/v1/meetings/{slug}/chat) is merged in by id.

import { RoomEvent, type ChatMessage, type Participant, type Room, type TextStreamReader } from 'livekit-client';
import { getChatHistory, type HistoryMessage } from './api';
import { h } from './dom';
import { icon } from './icons';
import { currentLang, t } from './i18n';
import { renderMarkdown } from './markdown';

export const CHAT_TOPIC = 'lk.chat';
export const SERVER_IDENTITY = 'tchap';
const MAX_LENGTH = 4000;

interface Message {
  id: string;
  identity: string;
  author: string;
  text: string;
  timestamp: number;
  own: boolean;
  /** Written in the Matrix room (shown as such), not in the meeting. */
  fromMatrix: boolean;
}

/** A touch screen: focusing a text field there opens the on-screen keyboard. */
export function isTouchScreen(): boolean {
  return window.matchMedia('(pointer: coarse)').matches && !window.matchMedia('(pointer: fine)').matches;
}

export class ChatPanel {
  readonly el: HTMLElement;
  // The log role sits on a wrapper: on the list itself it would hide the list semantics
  // of its items (axe-core's listitem and aria-allowed-role rules).
  private readonly list = h('ol', { class: 'chat-list' });
  private readonly log = h('div', { class: 'chat-log', role: 'log', 'aria-live': 'polite', 'aria-label': t('chat.messages'), tabindex: '0' }, this.list);
  private readonly empty = h('p', { class: 'chat-empty' }, t('chat.empty'));
  readonly input = h('textarea', {
    class: 'chat-input',
    'data-testid': 'chat-input',
    rows: '1',
    maxlength: String(MAX_LENGTH),
    'aria-label': t('chat.inputLabel'),
    placeholder: t('chat.placeholder'),
  });
  private readonly sendButton = h('button', {
    type: 'submit',
    class: 'icon-btn send-btn',
    'data-testid': 'chat-send',
    'aria-label': t('chat.send'),
    title: t('chat.send'),
  }, icon('send'));
  private readonly seen = new Set<string>();
  private readonly timeFormat = new Intl.DateTimeFormat(currentLang(), { hour: '2-digit', minute: '2-digit' });
  private unreadCount = 0;
  private isOpen = false;

  constructor(
    private readonly room: Room,
    private readonly localName: () => string,
    private readonly onClose: () => void,
    private readonly onUnread: (count: number, latest?: { author: string; text: string }) => void,
    private readonly onError: (message: string) => void,
  ) {
    const form = h(
      'form',
      { class: 'chat-form', onsubmit: (e: Event) => { e.preventDefault(); void this.send(); } },
      this.input,
      this.sendButton,
    );
    this.input.addEventListener('keydown', (e: KeyboardEvent) => {
      if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
        e.preventDefault();
        void this.send();
      }
    });
    this.el = h(
      'section',
      { class: 'panel chat-panel', id: 'chat-panel', 'aria-labelledby': 'chat-heading', hidden: true },
      h('header', { class: 'panel-header' },
        h('h2', { id: 'chat-heading' }, t('chat.title')),
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('chat.close'), title: t('chat.close'), onclick: () => this.onClose() }, icon('close'))),
      this.empty,
      this.log,
      form,
    );
  }

  /** Listens for messages; call once, before connecting. */
  listen(): void {
    this.room.registerTextStreamHandler(CHAT_TOPIC, (reader: TextStreamReader, { identity }) => {
      void this.receiveStream(reader, identity);
    });
    // Older clients (and LiveKit's components, alongside the stream) send legacy chat
    // packets; the same id shows once.
    this.room.on(RoomEvent.ChatMessage, (message: ChatMessage, participant?: Participant) => {
      if (!participant || participant === this.room.localParticipant) return;
      this.add({
        id: message.id,
        identity: participant.identity,
        author: this.authorOf(participant.identity),
        text: message.message,
        timestamp: message.timestamp || Date.now(),
        own: false,
        fromMatrix: participant.identity === SERVER_IDENTITY,
      });
    });
  }

  /**
   * Loads the meeting's recent chat (also what was said before this page joined, in the
   * meeting or in the Matrix thread) and merges it with what arrived live, by id.
   */
  async loadHistory(slug: string, token: string): Promise<void> {
    let messages: HistoryMessage[];
    try {
      messages = (await getChatHistory(slug, token)).messages;
    } catch (error) {
      console.warn('chat history not loaded', error);
      return;
    }
    const localIdentity = this.room.localParticipant.identity;
    for (const m of messages) {
      // Someone still here is shown by their name in the meeting (the stored one is the
      // name Matrix saw, with its guest mark).
      const present = m.identity ? this.room.getParticipantByIdentity(m.identity) : undefined;
      this.add({
        id: m.id,
        identity: m.identity ?? SERVER_IDENTITY,
        author: present?.name || m.author,
        text: m.body,
        timestamp: m.sent_at,
        own: m.identity === localIdentity,
        fromMatrix: m.origin === 'matrix',
      }, true);
    }
  }

  private async receiveStream(reader: TextStreamReader, identity: string): Promise<void> {
    let text: string;
    try {
      text = await reader.readAll();
    } catch {
      return;
    }
    const info = reader.info;
    const author = identity === SERVER_IDENTITY
      ? info.attributes?.['tchap.author_name']?.trim() || t('chat.serverAuthor')
      : this.authorOf(identity);
    this.add({ id: info.id, identity, author, text, timestamp: info.timestamp || Date.now(), own: false, fromMatrix: identity === SERVER_IDENTITY });
  }

  private authorOf(identity: string): string {
    if (identity === SERVER_IDENTITY) return t('chat.serverAuthor');
    const participant = this.room.getParticipantByIdentity(identity);
    return participant?.name || identity;
  }

  /** Shows a message once (by id), in time order. `old`: from the history, not new to anyone. */
  private add(message: Message, old = false): void {
    if (!message.text.trim() || this.seen.has(message.id)) return;
    this.seen.add(message.id);
    const date = new Date(message.timestamp);
    const classes = ['chat-message', message.own ? 'own' : '', message.fromMatrix ? 'from-matrix' : ''].filter(Boolean).join(' ');
    const item = h(
      'li',
      {
        class: classes,
        'data-testid': 'chat-message',
        'data-id': message.id,
        'data-author': message.author,
        'data-identity': message.identity,
        'data-origin': message.fromMatrix ? 'matrix' : 'meeting',
        'data-ts': String(message.timestamp),
      },
      h('div', { class: 'chat-meta' },
        h('span', { class: 'chat-author' }, message.author),
        message.fromMatrix ? h('span', { class: 'chat-origin', 'data-testid': 'chat-origin' }, t('chat.fromMatrix')) : null,
        h('time', { datetime: date.toISOString() }, this.timeFormat.format(date))),
      h('div', { class: 'chat-text' }, renderMarkdown(message.text)),
    );
    const nearBottom = this.log.scrollHeight - this.log.scrollTop - this.log.clientHeight < 80;
    // History can arrive after live messages: each goes before the first later one.
    const later = [...this.list.children].find((li) => Number((li as HTMLElement).dataset.ts) > message.timestamp);
    this.list.insertBefore(item, later ?? null);
    this.empty.hidden = true;
    if (nearBottom || message.own) this.log.scrollTop = this.log.scrollHeight;
    if (!message.own && !old && !this.isOpen) {
      this.unreadCount += 1;
      this.onUnread(this.unreadCount, { author: message.author, text: message.text });
    }
  }

  async send(): Promise<void> {
    const text = this.input.value.trim();
    if (!text) return;
    this.sendButton.disabled = true;
    try {
      const info = await this.room.localParticipant.sendText(text, { topic: CHAT_TOPIC });
      this.input.value = '';
      this.add({
        id: info.id,
        identity: this.room.localParticipant.identity,
        author: this.localName(),
        text,
        timestamp: info.timestamp || Date.now(),
        own: true,
        fromMatrix: false,
      });
    } catch (error) {
      this.onError(t('chat.sendFailed'));
      console.warn('chat send failed', error);
    } finally {
      this.sendButton.disabled = false;
      // On a touch screen, focusing the field again would reopen the keyboard.
      if (!isTouchScreen()) this.input.focus();
    }
  }

  setOpen(open: boolean): void {
    this.isOpen = open;
    this.el.hidden = !open;
    if (open) {
      this.unreadCount = 0;
      this.onUnread(0);
      this.log.scrollTop = this.log.scrollHeight;
    }
  }

  /** The scrolling message log (focusable). */
  get logElement(): HTMLElement {
    return this.log;
  }

  get unread(): number {
    return this.unreadCount;
  }
}
