// Entry point: /m/{slug} shows the pre-join screen, then the meeting.

import { isBrowserSupported, LogLevel, setLogLevel } from 'livekit-client';
import './diagnostics';
import { showErrorScreen } from './errors';
import { currentLang } from './i18n';
import { Meeting } from './meeting';
import { PreJoin } from './prejoin';
import './style.css';

function slugFromLocation(): string | null {
  const match = /^\/m\/([^/]+)\/?$/.exec(window.location.pathname);
  if (match) return decodeURIComponent(match[1]);
  // For a static preview of the built page: /index.html?slug=...
  return new URLSearchParams(window.location.search).get('slug');
}

function main(): void {
  document.documentElement.lang = currentLang();
  // ?debug=1: livekit-client's debug logs in the console (for bug reports).
  setLogLevel(new URLSearchParams(window.location.search).get('debug') ? LogLevel.debug : LogLevel.warn);
  const root = document.getElementById('app');
  if (!root) return;
  const slug = slugFromLocation();
  if (!slug) {
    showErrorScreen(root, 'not-found');
    return;
  }
  if (!isBrowserSupported()) {
    showErrorScreen(root, 'unsupported');
    return;
  }
  const prejoin = new PreJoin(root, slug, (joined) => {
    void new Meeting(root, joined).start();
  });
  prejoin.start();
}

main();
