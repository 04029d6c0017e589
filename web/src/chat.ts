// The chat panel on livekit-client's text streams (topic "lk.chat"). Messages from the
// server participant `tchap` (chat coming from the Matrix room) carry their author in
// the stream attribute `tchap.author_name`.

import { RoomEvent, type ChatMessage, type Participant, type Room, type TextStreamReader } from 'livekit-client';
import { h } from './dom';
import { icon } from './icons';
import { currentLang, t } from './i18n';

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
}

const URL_RE = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/g;

/** The message text with http(s) links made clickable (text nodes only, never HTML). */
function linkified(text: string): Node[] {
  const nodes: Node[] = [];
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    const start = match.index ?? 0;
    if (start > last) nodes.push(document.createTextNode(text.slice(last, start)));
    nodes.push(h('a', { href: match[0], target: '_blank', rel: 'noopener noreferrer nofollow' }, match[0]));
    last = start + match[0].length;
  }
  if (last < text.length) nodes.push(document.createTextNode(text.slice(last)));
  return nodes;
}

export class ChatPanel {
  readonly el: HTMLElement;
  private readonly list = h('ol', { class: 'chat-list', role: 'log', 'aria-live': 'polite', 'aria-label': t('chat.messages'), tabindex: '0' });
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
      this.list,
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
      });
    });
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
    this.add({ id: info.id, identity, author, text, timestamp: info.timestamp || Date.now(), own: false });
  }

  private authorOf(identity: string): string {
    if (identity === SERVER_IDENTITY) return t('chat.serverAuthor');
    const participant = this.room.getParticipantByIdentity(identity);
    return participant?.name || identity;
  }

  private add(message: Message): void {
    if (!message.text.trim() || this.seen.has(message.id)) return;
    this.seen.add(message.id);
    const date = new Date(message.timestamp);
    const item = h(
      'li',
      { class: message.own ? 'chat-message own' : 'chat-message', 'data-testid': 'chat-message', 'data-author': message.author, 'data-identity': message.identity },
      h('div', { class: 'chat-meta' },
        h('span', { class: 'chat-author' }, message.author),
        h('time', { datetime: date.toISOString() }, this.timeFormat.format(date))),
      h('p', { class: 'chat-text' }, ...linkified(message.text)),
    );
    const nearBottom = this.list.scrollHeight - this.list.scrollTop - this.list.clientHeight < 80;
    this.list.appendChild(item);
    this.empty.hidden = true;
    if (nearBottom || message.own) this.list.scrollTop = this.list.scrollHeight;
    if (!message.own && !this.isOpen) {
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
      });
    } catch (error) {
      this.onError(t('chat.sendFailed'));
      console.warn('chat send failed', error);
    } finally {
      this.sendButton.disabled = false;
      this.input.focus();
    }
  }

  setOpen(open: boolean): void {
    this.isOpen = open;
    this.el.hidden = !open;
    if (open) {
      this.unreadCount = 0;
      this.onUnread(0);
      this.list.scrollTop = this.list.scrollHeight;
    }
  }

  get unread(): number {
    return this.unreadCount;
  }
}
