// The HTTP calls the page makes to its own server.

import type { components, operations } from './api-types';

// Request and response shapes: generated from docs/openapi.json into api-types.ts
// (`npm run api-types`; the build fails while that file is stale).
type Schemas = components['schemas'];
type JoinOperation = operations['joinMeeting'];
type VerificationCreateOperation = operations['createVerification'];
type VerificationOperation = operations['getVerification'];
type LobbyOperation = operations['getLobbyRequest'];

/** What the pre-join page shows (GET /api/v1/meetings/{slug}). */
export type MeetingInfo = Schemas['MeetingInfo'];
/** One message of the meeting's stored chat. */
export type HistoryMessage = Schemas['HistoryMessage'];
export type ChatHistory = Schemas['ChatHistory'];
export type JoinRequest = JoinOperation['requestBody']['content']['application/json'];
export type JoinResponse = JoinOperation['responses'][200]['content']['application/json'];
/** 202: the guest waits in the lobby under this number. */
export type LobbyTicket = JoinOperation['responses'][202]['content']['application/json']['lobby'];
/** What a join ends in: a token to connect with, or a place in the lobby. */
export type JoinOutcome = { kind: 'granted'; join: JoinResponse } | { kind: 'lobby'; lobby: LobbyTicket };
export type VerificationCreated = VerificationCreateOperation['responses'][201]['content']['application/json'];
export type VerificationStatus = VerificationOperation['responses'][200]['content']['application/json'];
export type LobbyStatus = LobbyOperation['responses'][200]['content']['application/json'];

type ListLobbyOperation = operations['listLobby'];
type ModerateOperation = operations['moderate'];

/** A guest waiting in the lobby, as moderators see them (GET .../lobby). */
export type WaitingGuest = ListLobbyOperation['responses'][200]['content']['application/json']['waiting'][number];

/** What a moderator may do from the page (POST .../moderation). */
export type ModerationAction = ModerateOperation['requestBody']['content']['application/json'];

/** Why a join was refused (403 `reason`). */
export type RefusalReason = 'members_only' | 'external' | 'banned';

/** An answer other than 2xx; status 0 when the server could not be reached. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly errcode: string,
    message: string,
    /** The answer was a Matrix-style JSON error (not some proxy's page). */
    readonly isJson = false,
    /** The 403's `reason`, when the server gave one. */
    readonly reason?: string,
    /** Seconds to wait before trying again (429 `Retry-After`). */
    readonly retryAfter?: number,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

interface CallOptions {
  body?: unknown;
  bearer?: string;
  signal?: AbortSignal;
}

/** One request; the answer's status and JSON body when it is 2xx, an ApiError otherwise. */
async function request<T>(method: 'GET' | 'POST' | 'DELETE', path: string, options: CallOptions = {}): Promise<{ status: number; json: T }> {
  const { body, bearer, signal } = options;
  let response: Response;
  const headers: Record<string, string> = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: 'same-origin',
      cache: 'no-store',
      signal,
    });
  } catch (error) {
    if (signal?.aborted) throw error;
    throw new ApiError(0, 'NETWORK', error instanceof Error ? error.message : String(error));
  }
  let json: unknown = null;
  const text = await response.text();
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const err = (json ?? {}) as { errcode?: unknown; error?: unknown; reason?: unknown };
    const isJson = typeof err.errcode === 'string';
    const retry = Number(response.headers.get('Retry-After'));
    throw new ApiError(
      response.status,
      isJson ? (err.errcode as string) : '',
      typeof err.error === 'string' ? err.error : response.statusText,
      isJson,
      typeof err.reason === 'string' ? err.reason : undefined,
      Number.isFinite(retry) && retry > 0 ? retry : undefined,
    );
  }
  return { status: response.status, json: json as T };
}

async function call<T>(method: 'GET' | 'POST', path: string, body?: unknown, bearer?: string): Promise<T> {
  return (await request<T>(method, path, { body, bearer })).json;
}

const enc = encodeURIComponent;

export function getMeeting(slug: string): Promise<MeetingInfo> {
  return call<MeetingInfo>('GET', `/api/v1/meetings/${enc(slug)}`);
}

/** The meeting's recent chat, with the access token the join gave. */
export function getChatHistory(slug: string, token: string): Promise<ChatHistory> {
  return call<ChatHistory>('GET', `/api/v1/meetings/${enc(slug)}/chat`, undefined, token);
}

/**
 * Joins with a display name, and a confirmed verification for an identified member. The
 * browser's stable id travels in an HttpOnly cookie the server sets (same origin, sent by
 * fetch by default); the page never sees it. 200: a token; 202: a place in the lobby.
 * `rejoin`: the page lost its node (rejoin.ts).
 */
export async function joinMeeting(slug: string, name: string, verification?: string, rejoin = false): Promise<JoinOutcome> {
  const body: JoinRequest = verification ? { name, verification } : { name };
  // A page that lost its node: the same access again (the server checks this browser's grant).
  if (rejoin) body.rejoin = true;
  const { status, json } = await request<JoinResponse & { lobby?: LobbyTicket }>('POST', `/api/v1/meetings/${enc(slug)}/join`, { body });
  if (status === 202 && json.lobby) return { kind: 'lobby', lobby: json.lobby };
  return { kind: 'granted', join: json };
}

/** A code for the person to send the bot from Matrix (`!visio entrer CODE`). */
export function createVerification(slug: string): Promise<VerificationCreated> {
  return call<VerificationCreated>('POST', `/api/v1/meetings/${enc(slug)}/verification`);
}

/** Where a code stands; `wait` seconds of long-poll (the answer comes as soon as it changes). */
export async function getVerification(slug: string, id: string, wait: number, signal?: AbortSignal): Promise<VerificationStatus> {
  const path = `/api/v1/meetings/${enc(slug)}/verification/${enc(id)}?wait=${wait}`;
  return (await request<VerificationStatus>('GET', path, { signal })).json;
}

/** A waiting guest's state (long-poll); the join token comes with `admitted`. */
export async function getLobbyStatus(slug: string, id: string, wait: number, signal?: AbortSignal): Promise<LobbyStatus> {
  const path = `/api/v1/meetings/${enc(slug)}/lobby/${enc(id)}?wait=${wait}`;
  return (await request<LobbyStatus>('GET', path, { signal })).json;
}

/** The guest stops waiting: the lobby notice in the room says they left. */
export async function leaveLobby(slug: string, id: string): Promise<void> {
  await request<unknown>('DELETE', `/api/v1/meetings/${enc(slug)}/lobby/${enc(id)}`);
}

/** Who waits in the lobby (a connected moderator's browser only). */
export async function getLobbyList(slug: string): Promise<WaitingGuest[]> {
  const json = await call<{ waiting?: WaitingGuest[] }>('GET', `/api/v1/meetings/${enc(slug)}/lobby`);
  return Array.isArray(json?.waiting) ? json.waiting : [];
}

/** A moderator's action (admit, refuse, mute, remove, end). */
export async function moderate(slug: string, action: ModerationAction): Promise<void> {
  await call<unknown>('POST', `/api/v1/meetings/${enc(slug)}/moderation`, action);
}

/**
 * Asks the SFU why a WebSocket could not be opened. Browsers hide the status of a failed
 * upgrade, so after a failure the page asks `/rtc/validate` with the same token (what
 * livekit-client does too): 503 means the meeting is full.
 */
export async function probeSignal(wsUrl: string, token: string): Promise<{ status: number; text: string } | null> {
  try {
    const url = new URL(wsUrl);
    url.protocol = url.protocol === 'wss:' ? 'https:' : 'http:';
    url.pathname = url.pathname.replace(/\/$/, '') + '/rtc/validate';
    url.search = '';
    url.searchParams.set('access_token', token);
    const response = await fetch(url.toString(), { cache: 'no-store', signal: AbortSignal.timeout(3000) });
    return { status: response.status, text: await response.text() };
  } catch {
    return null;
  }
}
