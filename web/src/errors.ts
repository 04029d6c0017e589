// Error screens and the classification of failures into them.

import { ConnectionError, ConnectionErrorReason, DisconnectReason, MediaDeviceFailure } from 'livekit-client';
import { ApiError } from './api';
import { h, clear } from './dom';
import { icon } from './icons';
import { currentLang, t, type Key } from './i18n';

/**
 * What went wrong. The first five are the test contract (`data-error`); the others are
 * rarer cases that still deserve their own words.
 */
export type ErrorKind =
  | 'not-found'
  | 'ended'
  | 'media-denied'
  | 'no-media-connection'
  | 'full'
  | 'connection' // the server (HTTP or signalling WebSocket) could not be reached
  | 'connection-lost' // connected, then lost for good
  | 'duplicate' // the same identity joined elsewhere
  | 'removed' // removed by a moderator
  | 'left-room' // removed: left the meeting's Matrix room
  | 'banned' // removed: banned from the meeting's Matrix room
  | 'access-changed' // removed: the access level became stricter
  | 'forbidden' // the server refused the join (access level)
  | 'members-only' // the meeting is for identified members of its room
  | 'lobby-refused' // a moderator refused the guest waiting in the lobby
  | 'lobby-expired' // nobody let the guest in in time
  | 'lobby-full' // too many guests wait already
  | 'unavailable' // the homeserver cannot say who is a member right now
  | 'rate-limited' // too many requests (429)
  | 'unsupported' // browser without WebRTC
  | 'generic';

const TEXTS: Record<ErrorKind, { title: Key; body: Key; hint?: Key }> = {
  'not-found': { title: 'err.notFound.title', body: 'err.notFound.body' },
  ended: { title: 'err.ended.title', body: 'err.ended.body' },
  'media-denied': { title: 'err.mediaDenied.title', body: 'err.mediaDenied.body', hint: 'err.mediaDenied.hint' },
  'no-media-connection': { title: 'err.noMedia.title', body: 'err.noMedia.body', hint: 'err.noMedia.hint' },
  full: { title: 'err.full.title', body: 'err.full.body' },
  connection: { title: 'err.connection.title', body: 'err.connection.body', hint: 'err.connection.hint' },
  'connection-lost': { title: 'err.lost.title', body: 'err.lost.body', hint: 'err.noMedia.hint' },
  duplicate: { title: 'err.duplicate.title', body: 'err.duplicate.body' },
  removed: { title: 'err.removed.title', body: 'err.removed.body' },
  'left-room': { title: 'err.leftRoom.title', body: 'err.leftRoom.body' },
  banned: { title: 'err.banned.title', body: 'err.banned.body' },
  'access-changed': { title: 'err.accessChanged.title', body: 'err.accessChanged.body', hint: 'err.accessChanged.hint' },
  forbidden: { title: 'err.forbidden.title', body: 'err.forbidden.body' },
  'members-only': { title: 'err.membersOnly.title', body: 'err.forbidden.body' },
  'lobby-refused': { title: 'err.refused.title', body: 'err.refused.body' },
  'lobby-expired': { title: 'err.lobbyExpired.title', body: 'err.lobbyExpired.body' },
  'lobby-full': { title: 'err.lobbyFull.title', body: 'err.lobbyFull.body' },
  unavailable: { title: 'err.unavailable.title', body: 'err.unavailable.body' },
  'rate-limited': { title: 'err.rateLimited.title', body: 'err.rateLimited.body' },
  unsupported: { title: 'err.unsupported.title', body: 'err.unsupported.body' },
  generic: { title: 'err.generic.title', body: 'err.generic.body' },
};

/** Kinds after which trying again may help. */
const RETRYABLE = new Set<ErrorKind>([
  'no-media-connection', 'full', 'connection', 'connection-lost', 'duplicate', 'generic',
  'access-changed', 'lobby-expired', 'lobby-full', 'unavailable', 'rate-limited',
]);

/** A button of an error screen besides "Try again". */
export interface ErrorAction {
  label: Key;
  run: () => void;
  testid?: string;
}

export interface ErrorOptions {
  detail?: string;
  /** For `ended`: the meeting's title and when it ended (ms since the epoch), when known. */
  meeting?: { title?: string; endedAt?: number };
  /** "Try again" action; defaults to reloading the page. */
  onRetry?: () => void;
  /** The server's own sentence (a 403's `error`), shown instead of the default body. */
  body?: string;
  /** More buttons (the first one primary when the kind has no "Try again"). */
  actions?: ErrorAction[];
}

/** Replaces the page with a full-screen error. */
export function showErrorScreen(root: HTMLElement, kind: ErrorKind, options: ErrorOptions = {}): void {
  clear(root);
  const main = h('main', { class: 'screen error-screen', id: 'main' });
  main.appendChild(errorBox(kind, options, true));
  root.appendChild(main);
  const heading = main.querySelector('h1');
  heading?.focus();
  document.title = `${t(TEXTS[kind].title)} – ${t('app.name')}`;
}

/** The error block itself (`[data-testid=error][data-error=kind]`), full screen or inline. */
/** The screen after leaving: a way back in (reloading the link). */
export function showLeftScreen(root: HTMLElement): void {
  clear(root);
  const heading = h('h1', { tabindex: '-1' }, t('left.title'));
  root.appendChild(
    h('main', { class: 'screen error-screen', id: 'main' },
      h('section', { class: 'error-card', 'data-testid': 'left' },
        heading,
        h('p', {}, t('left.body')),
        h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'btn primary', onclick: () => window.location.reload() }, t('left.rejoin'))))),
  );
  document.title = `${t('left.title')} – ${t('app.name')}`;
  heading.focus();
}

export function errorBox(kind: ErrorKind, options: ErrorOptions = {}, fullScreen = false): HTMLElement {
  const texts = TEXTS[kind];
  const heading = fullScreen
    ? h('h1', { tabindex: '-1' }, t(texts.title))
    : h('h2', { class: 'error-title' }, t(texts.title));
  const box = h(
    'section',
    {
      class: fullScreen ? 'error-card' : 'error-inline',
      'data-testid': 'error',
      'data-error': kind,
      role: fullScreen ? null : 'alert',
      'aria-labelledby': null,
    },
    h('div', { class: 'error-icon' }, icon('warning')),
    heading,
    options.meeting?.title ? h('p', { class: 'error-meeting-title', 'data-testid': 'ended-title' }, options.meeting.title) : null,
    options.meeting?.endedAt ? h('p', { 'data-testid': 'ended-at' }, t('err.ended.when', { date: formatDate(options.meeting.endedAt) })) : null,
    h('p', { 'data-testid': 'error-body' }, options.body ?? t(texts.body)),
    texts.hint ? h('p', { class: 'hint' }, t(texts.hint)) : null,
    options.detail ? h('details', { class: 'error-detail' }, h('summary', {}, t('err.details')), h('code', {}, options.detail)) : null,
  );
  if (fullScreen) {
    const actions = h('div', { class: 'actions' });
    const retry = RETRYABLE.has(kind);
    if (retry) {
      actions.appendChild(
        h('button', { type: 'button', class: 'btn primary', onclick: options.onRetry ?? (() => window.location.reload()) }, t('err.retry')),
      );
    }
    (options.actions ?? []).forEach((action, i) => {
      actions.appendChild(
        h('button', {
          type: 'button',
          class: !retry && i === 0 ? 'btn primary' : 'btn',
          'data-testid': action.testid,
          onclick: action.run,
        }, t(action.label)),
      );
    });
    box.appendChild(actions);
  }
  return box;
}

function formatDate(ms: number): string {
  return new Intl.DateTimeFormat(currentLang(), { dateStyle: 'long', timeStyle: 'short' }).format(new Date(ms));
}

/** The join endpoint's refusal, as an error kind (null: not an error screen, e.g. a bad name). */
export function kindOfApiError(error: ApiError): ErrorKind | null {
  if (error.status === 0) return 'connection';
  if (error.status === 410) return 'ended';
  if (error.status === 404) return /\bended\b|terminée/i.test(error.message) ? 'ended' : 'not-found';
  if (error.status === 400) return null;
  if (error.status === 403 && error.reason === 'members_only') return 'members-only';
  if (error.status === 403 || error.status === 401) return 'forbidden';
  if (error.status === 429) return 'rate-limited';
  if (error.status === 503 && error.errcode === 'M_UNAVAILABLE') return 'unavailable';
  if (error.status === 503 && error.errcode === 'M_LIMIT_EXCEEDED') return 'lobby-full';
  if (error.status === 503 || /full|complète|M_RESOURCE_LIMIT_EXCEEDED/i.test(`${error.errcode} ${error.message}`)) return 'full';
  if (error.status >= 500) return 'connection';
  return 'generic';
}

/** A media failure (getUserMedia) as an error kind, or null when it is not a refusal. */
export function isMediaDenied(error: unknown): boolean {
  const failure = MediaDeviceFailure.getFailure(error);
  return failure === MediaDeviceFailure.PermissionDenied;
}

/**
 * A failed `room.connect`, as an error kind. `signalConnected`: whether the signalling
 * WebSocket had been answered (then the failure is on the media path: ICE/UDP).
 */
export function kindOfConnectError(error: unknown, signalConnected: boolean): ErrorKind {
  const message = error instanceof Error ? error.message : String(error);
  if (/meeting is full|\bfull\b/i.test(message)) return 'full';
  if (error instanceof ConnectionError) {
    if (error.reason === ConnectionErrorReason.LeaveRequest) {
      const reason = error.context as DisconnectReason | undefined;
      if (reason === DisconnectReason.ROOM_DELETED || reason === DisconnectReason.ROOM_CLOSED) return 'ended';
      if (reason === DisconnectReason.DUPLICATE_IDENTITY) return 'duplicate';
      if (reason === DisconnectReason.PARTICIPANT_REMOVED) return 'removed';
    }
    if (error.reason === ConnectionErrorReason.NotAllowed) {
      return error.status === 404 ? 'not-found' : 'forbidden';
    }
    if (error.status === 503) return 'full';
  }
  if (signalConnected || /pc connection|peer ?connection|publisher|subscriber|\bice\b/i.test(message)) return 'no-media-connection';
  if (error instanceof ConnectionError) return 'connection';
  return 'generic';
}

/** The kind of screen for a room that disconnected on its own. */
export function kindOfDisconnect(reason: DisconnectReason | undefined): ErrorKind {
  switch (reason) {
    case DisconnectReason.ROOM_DELETED:
    case DisconnectReason.ROOM_CLOSED:
      return 'ended';
    case DisconnectReason.DUPLICATE_IDENTITY:
      return 'duplicate';
    case DisconnectReason.PARTICIPANT_REMOVED:
      return 'removed';
    default:
      return 'connection-lost';
  }
}

/**
 * Why `/rtc/validate` refused a token, as an error kind: `removed from the meeting:
 * <reason>` (removed, left_room, banned, access_changed) or `the meeting has ended`; null
 * when the answer says neither (the token may simply have expired).
 */
export function kindOfRefusalText(status: number, text: string): ErrorKind | null {
  if (status !== 403 && status !== 404 && status !== 410) return null;
  if (/meeting has ended/i.test(text)) return 'ended';
  const match = /removed from the meeting:\s*([a-z_]+)/i.exec(text);
  if (!match) return null;
  switch (match[1]) {
    case 'left_room':
      return 'left-room';
    case 'banned':
      return 'banned';
    case 'access_changed':
      return 'access-changed';
    default:
      return 'removed';
  }
}
