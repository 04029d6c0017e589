// Passing messages: toasts (at most four on screen, five seconds each) and the
// screen-reader announcer (a polite live region).

import { h } from './dom';

export class Notices {
  readonly toasts = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite' });
  readonly announcer = h('div', { class: 'sr-only', 'aria-live': 'polite' });

  toast(message: string, detail?: string): void {
    const el = h('div', { class: 'toast' }, h('strong', {}, message), detail ? h('span', {}, detail) : null);
    this.toasts.appendChild(el);
    while (this.toasts.childElementCount > 4) this.toasts.firstElementChild?.remove();
    window.setTimeout(() => el.remove(), 5000);
  }

  /** Says `message` to a screen reader (emptied first, so that a repeat is said again). */
  announce(message: string): void {
    this.announcer.textContent = '';
    window.setTimeout(() => { this.announcer.textContent = message; }, 50);
  }
}
