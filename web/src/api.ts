// The HTTP calls the page makes to its own server.

import type { components, operations } from './api-types';

// Request and response shapes: generated from docs/openapi.json into api-types.ts
// (`npm run api-types`; the build fails while that file is stale).
type Schemas = components['schemas'];
type JoinOperation = operations['joinMeeting'];

/** What the pre-join page shows (GET /api/v1/meetings/{slug}). */
export type MeetingInfo = Schemas['MeetingInfo'];
/** One message of the meeting's stored chat. */
export type HistoryMessage = Schemas['HistoryMessage'];
export type ChatHistory = Schemas['ChatHistory'];
export type JoinRequest = JoinOperation['requestBody']['content']['application/json'];
export type JoinResponse = JoinOperation['responses'][200]['content']['application/json'];

/** An answer other than 2xx; status 0 when the server could not be reached. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly errcode: string,
    message: string,
    /** The answer was a Matrix-style JSON error (not some proxy's page). */
    readonly isJson = false,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

async function call<T>(method: 'GET' | 'POST', path: string, body?: unknown, bearer?: string): Promise<T> {
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
    });
  } catch (error) {
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
    const err = (json ?? {}) as { errcode?: unknown; error?: unknown };
    const isJson = typeof err.errcode === 'string';
    throw new ApiError(
      response.status,
      isJson ? (err.errcode as string) : '',
      typeof err.error === 'string' ? err.error : response.statusText,
      isJson,
    );
  }
  return json as T;
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
 * Joins with a display name. The browser's stable id travels in an HttpOnly cookie the
 * server sets (same origin, sent by fetch by default); the page never sees it.
 */
export function joinMeeting(slug: string, name: string): Promise<JoinResponse> {
  const body: JoinRequest = { name };
  return call<JoinResponse>('POST', `/api/v1/meetings/${enc(slug)}/join`, body);
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
