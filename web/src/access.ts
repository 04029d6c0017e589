// Getting in when the meeting asks who you are: the identity code a member sends the bot
// from Tchap (`!visio entrer CODE`, then ✅ in their private conversation with it), and
// the waiting room where a guest waits for a moderator. Both are steps shown in the
// pre-join screen's join pane (prejoin.ts places them), each long-polling the server
// until something changes; neither knows about the camera or the meeting.

import {
  ApiError,
  createVerification,
  getLobbyStatus,
  leaveLobby,
  getVerification,
  type JoinResponse,
  type LobbyTicket,
  type VerificationCreated,
} from './api';
import { h } from './dom';
import { icon } from './icons';
import type { ErrorKind } from './errors';
import { t } from './i18n';

/** Seconds of each long-poll (the server's maximum). */
const LONG_POLL_S = 25;

/** Where a step is shown: the pre-join's pane, which moves the focus to its heading. */
export interface StepHost {
  show(step: HTMLElement, heading: HTMLElement): void;
}

/** Waits `ms`, or less when `signal` aborts. For backing off after a failure only. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = window.setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      window.clearTimeout(timer);
      resolve();
    }, { once: true });
  });
}

/** How long to wait after a failed poll (ms): what 429 says, or a growing back-off. */
function backoff(error: unknown, attempt: number): number {
  if (error instanceof ApiError && error.retryAfter) return error.retryAfter * 1000;
  return Math.min(10_000, 1000 * 2 ** Math.min(attempt, 4));
}

/** Whether a failed poll is worth retrying (network, 5xx, 429) rather than final. */
function transient(error: unknown): boolean {
  return error instanceof ApiError && (error.status === 0 || error.status === 429 || error.status >= 500);
}

function heading(key: Parameters<typeof t>[0], vars?: Record<string, string | number>): HTMLHeadingElement {
  return h('h2', { class: 'step-title', tabindex: '-1' }, t(key, vars));
}

function liveStatus(testid: string, text: string): HTMLParagraphElement {
  return h('p', { class: 'step-status', role: 'status', 'aria-live': 'polite', 'data-testid': testid }, text);
}

/**
 * Copies `text`: the asynchronous clipboard API, else the selection and the older
 * `execCommand('copy')`. Whatever happens, `el`'s text ends up selected, so that a
 * failure leaves it ready to copy by hand.
 */
export async function copyText(text: string, el: HTMLElement): Promise<boolean> {
  const select = () => {
    const range = document.createRange();
    range.selectNodeContents(el);
    const selection = window.getSelection();
    selection?.removeAllRanges();
    selection?.addRange(range);
  };
  try {
    if (navigator.clipboard?.writeText) {
      await navigator.clipboard.writeText(text);
      return true;
    }
  } catch {
    // not allowed (no focus, insecure origin): try the selection below
  }
  select();
  try {
    return document.execCommand('copy');
  } catch {
    return false;
  }
}

/** What the identity step tells the pre-join. */
export interface IdentifyEvents {
  /** Confirmed from Matrix: join with this verification id, as `userId`. */
  verified(verification: string, userId: string): void;
  /** The person gave up (back to the choice). */
  cancelled(): void;
}

/**
 * The identity code: asks for one, shows it with the command to send and copy buttons,
 * then follows it: pending → confirming (the ✅ in the private conversation) → verified
 * (or expired, with a new code on offer).
 */
export class IdentifyStep {
  private abort = new AbortController();
  private created: VerificationCreated | null = null;
  /** The live status line of the step on screen. */
  private statusEl: HTMLElement | null = null;

  constructor(
    private readonly slug: string,
    private readonly host: StepHost,
    private readonly events: IdentifyEvents,
  ) {}

  /** Stops polling; the step's elements stay where they are. */
  stop(): void {
    this.abort.abort();
  }

  async start(): Promise<void> {
    this.stop();
    this.abort = new AbortController();
    const signal = this.abort.signal;
    const title = heading('identify.title');
    const status = liveStatus('identify-status', t('identify.requesting'));
    this.host.show(this.section('requesting', title, status, this.cancelButton()), title);
    try {
      this.created = await createVerification(this.slug);
    } catch (error) {
      if (signal.aborted) return;
      const key =
        error instanceof ApiError && error.status === 409 ? 'identify.noRoom'
          : error instanceof ApiError && error.status === 429 ? 'identify.tooMany'
            : 'identify.failed';
      status.textContent = t(key);
      status.classList.add('error');
      // A meeting without a room has nobody to be a member of: no point trying again.
      if (key !== 'identify.noRoom') {
        const retry = h('button', { type: 'button', class: 'btn primary', 'data-testid': 'identify-retry', onclick: () => void this.start() }, t('err.retry'));
        status.after(h('div', { class: 'step-actions' }, retry));
      }
      return;
    }
    if (signal.aborted) return;
    this.showCode(this.created);
    await this.follow(this.created.id, signal);
  }

  private section(state: string, ...children: (HTMLElement | null)[]): HTMLElement {
    return h('section', { class: 'access-step', 'data-testid': 'identify', 'data-state': state, 'aria-labelledby': null }, ...children);
  }

  private cancelButton(): HTMLButtonElement {
    return h('button', {
      type: 'button',
      class: 'btn',
      'data-testid': 'identify-cancel',
      onclick: () => {
        this.stop();
        this.events.cancelled();
      },
    }, t('identify.cancel'));
  }

  /** A value to copy (the code, the command) with its button; `big` for the code. */
  private copyable(value: string, label: Parameters<typeof t>[0], testid: string, big: boolean, feedback: HTMLElement): HTMLElement {
    const shown = h(big ? 'output' : 'code', {
      class: big ? 'code-value' : 'command-value',
      'data-testid': testid,
      translate: 'no',
      'aria-labelledby': big ? 'identify-code-label' : null,
    }, value);
    const button = h('button', {
      type: 'button',
      class: 'btn small copy-btn',
      'data-testid': `${testid}-copy`,
      onclick: async () => {
        const ok = await copyText(value, shown);
        feedback.textContent = '';
        // A fresh text each time, so that a second copy is announced too.
        window.setTimeout(() => { feedback.textContent = t(ok ? 'identify.copied' : 'identify.copyFailed'); }, 30);
      },
    }, t(label));
    return h('div', { class: big ? 'code-box' : 'command-box' }, shown, button);
  }

  private showCode(created: VerificationCreated): void {
    const title = heading('identify.title');
    const feedback = h('p', { class: 'copy-feedback', role: 'status', 'aria-live': 'polite', 'data-testid': 'identify-copied' });
    const status = liveStatus('identify-status', t('identify.waiting'));
    const minutes = Math.max(1, Math.round((created.expires_in || 300) / 60));
    this.host.show(
      this.section(
        'pending',
        title,
        h('p', { class: 'step-label', id: 'identify-code-label' }, t('identify.codeLabel')),
        this.copyable(created.code, 'identify.copyCode', 'identify-code', true, feedback),
        h('p', {}, t('identify.send')),
        // The command is never translated: it is what the bot reads.
        this.copyable(created.command || `!visio entrer ${created.code}`, 'identify.copyCommand', 'identify-command', false, feedback),
        feedback,
        h('p', {}, t('identify.then')),
        h('p', { class: 'hint' }, t('identify.validity', { minutes })),
        status,
        h('div', { class: 'step-actions' }, this.cancelButton()),
      ),
      title,
    );
    this.statusEl = status;
  }

  private async follow(id: string, signal: AbortSignal): Promise<void> {
    let shown = 'pending';
    let failures = 0;
    while (!signal.aborted) {
      let state: string;
      let userId: string | undefined;
      try {
        const answer = await getVerification(this.slug, id, LONG_POLL_S, signal);
        state = answer.state;
        userId = answer.user_id;
        failures = 0;
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && error.status === 404) {
          state = 'expired';
        } else if (transient(error)) {
          if (this.statusEl) this.statusEl.textContent = t('identify.lost');
          await pause(backoff(error, failures++), signal);
          continue;
        } else {
          state = 'expired';
        }
      }
      if (signal.aborted) return;
      if (state === shown && state !== 'verified') {
        // The long-poll ended without news: restore the status after a hiccup.
        if (this.statusEl && state === 'pending') this.statusEl.textContent = t('identify.waiting');
        continue;
      }
      shown = state;
      if (state === 'confirming') this.showConfirming();
      else if (state === 'verified' && userId) {
        this.showVerified(userId);
        this.events.verified(id, userId);
        return;
      } else if (state === 'expired' || state === 'verified') {
        this.showExpired();
        return;
      }
    }
  }

  private showConfirming(): void {
    const title = heading('identify.confirmTitle');
    const status = liveStatus('identify-status', t('identify.confirmBody'));
    this.host.show(
      this.section(
        'confirming',
        title,
        // The reaction to add, drawn (not every system has a colour emoji font).
        h('div', { class: 'step-emoji', 'aria-hidden': 'true' }, icon('checkBox', 'icon big')),
        status,
        h('p', { class: 'hint' }, t('identify.confirmIgnore')),
        h('div', { class: 'step-actions' }, this.cancelButton()),
      ),
      title,
    );
    this.statusEl = status;
  }

  private showVerified(userId: string): void {
    const title = heading('identify.verified', { user: userId });
    title.dataset.testid = 'identified-as';
    title.dataset.userId = userId;
    const status = liveStatus('identify-status', t('prejoin.joining'));
    this.host.show(this.section('verified', title, status), title);
    this.statusEl = status;
  }

  private showExpired(): void {
    const title = heading('identify.expiredTitle');
    const again = h('button', { type: 'button', class: 'btn primary', 'data-testid': 'identify-new-code', onclick: () => void this.start() }, t('identify.newCode'));
    this.host.show(
      this.section('expired', title, h('p', {}, t('identify.expiredBody')), h('div', { class: 'step-actions' }, again, this.cancelButton())),
      title,
    );
    this.statusEl = null;
  }

  /** After a refused join with this verification (used, expired meanwhile): a new code. */
  expired(): void {
    this.stop();
    this.showExpired();
  }
}

/** What the waiting room tells the pre-join. */
export interface LobbyEvents {
  /** A moderator let the guest in: connect with this. */
  admitted(join: JoinResponse): void;
  /** It is over without entering (refused, expired, the meeting ended). */
  finished(kind: ErrorKind): void;
  /** The guest gave up waiting. */
  cancelled(): void;
}

/** The waiting room: the guest's number, a cancel button, and the long-poll until a decision. */
export class LobbyStep {
  private readonly abort = new AbortController();
  private status: HTMLElement | null = null;

  constructor(
    private readonly slug: string,
    private readonly ticket: LobbyTicket,
    private readonly host: StepHost,
    private readonly events: LobbyEvents,
  ) {}

  stop(): void {
    this.abort.abort();
  }

  start(): void {
    const title = heading('lobby.title');
    this.status = liveStatus('lobby-status', t('lobby.waiting'));
    const cancel = h('button', {
      type: 'button',
      class: 'btn',
      'data-testid': 'lobby-cancel',
      onclick: () => {
        this.stop();
        // Best effort: the moderators' notice stops listing this guest.
        void leaveLobby(this.slug, this.ticket.id).catch(() => undefined);
        this.events.cancelled();
      },
    }, t('lobby.cancel'));
    this.host.show(
      h('section', { class: 'access-step lobby-step', 'data-testid': 'lobby', 'data-state': 'waiting' },
        title,
        h('p', { class: 'lobby-lead' }, t('lobby.body')),
        h('div', { class: 'lobby-number' },
          h('span', { class: 'step-label' }, t('lobby.number')),
          h('strong', { class: 'code-value', 'data-testid': 'lobby-number' }, String(this.ticket.number))),
        h('p', { class: 'hint' }, t('lobby.numberHint')),
        h('div', { class: 'step-wait' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), this.status),
        h('div', { class: 'step-actions' }, cancel)),
      title,
    );
    void this.follow();
  }

  private async follow(): Promise<void> {
    const signal = this.abort.signal;
    let failures = 0;
    while (!signal.aborted) {
      try {
        const answer = await getLobbyStatus(this.slug, this.ticket.id, LONG_POLL_S, signal);
        failures = 0;
        if (signal.aborted) return;
        if (this.status) this.status.textContent = t('lobby.waiting');
        switch (answer.state) {
          case 'waiting':
            continue;
          case 'admitted':
            if (answer.url && answer.token && answer.identity) {
              if (this.status) this.status.textContent = t('lobby.admitted');
              const meeting = (answer.meeting ?? {}) as { id?: string; title?: string };
              this.events.admitted({
                url: answer.url,
                token: answer.token,
                identity: answer.identity,
                meeting: { id: meeting.id ?? '', title: meeting.title ?? '' },
                user_id: answer.user_id,
              });
              return;
            }
            this.events.finished('generic');
            return;
          case 'refused':
            this.events.finished('lobby-refused');
            return;
          case 'expired':
            this.events.finished('lobby-expired');
            return;
          case 'ended':
            this.events.finished('ended');
            return;
          default:
            continue;
        }
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && error.status === 404) {
          this.events.finished('lobby-expired');
          return;
        }
        if (!transient(error)) {
          this.events.finished('generic');
          return;
        }
        if (this.status) this.status.textContent = t('identify.lost');
        await pause(backoff(error, failures++), signal);
      }
    }
  }
}
