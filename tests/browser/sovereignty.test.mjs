// The page talks to its own server and nobody else: every request of a whole meeting
// (HTTP of any kind and WebSockets, in every page of three contexts) goes to the server
// that served it. STUN is not HTTP, so the request log cannot see it: the ICE servers
// are checked where they come from (the join endpoint, livekit-client's JoinResponse)
// and where they end up (every RTCPeerConnection's configuration). A second server with
// a configured STUN server shows that those checks see ICE servers when there are some.
//
// Runs in English from the browser language (en-US, no ?lang) and writes the English
// screenshots under target/browser-screenshots/.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  expectDecoding,
  freeUdpPort,
  joinFromPrejoin,
  openPrejoin,
  pageWait,
  screenshot,
  tileSelector,
  useFixture,
} from './lib/harness.mjs';

const fx = useFixture('sovereignty', { server: false });

/** Runs in every page before its own scripts: records each RTCPeerConnection's configuration. */
function recordPeerConnections() {
  const Native = window.RTCPeerConnection;
  const seen = (window.__peerConnections = []);
  class Recorded extends Native {
    constructor(config, ...rest) {
      super(config, ...rest);
      seen.push({ given: JSON.parse(JSON.stringify(config ?? null)), pc: this });
    }
  }
  window.RTCPeerConnection = Recorded;
}

/** In the page: the ICE servers livekit-client got and the ones its peer connections use. */
function iceServersInPage() {
  const room = window.tchapVisio.room;
  return {
    joinResponse: (room.engine.latestJoinResponse?.iceServers ?? []).map((s) => ({ urls: [...s.urls], username: s.username })),
    peerConnections: window.__peerConnections.map(({ given, pc }) => ({
      given: given?.iceServers ?? [],
      effective: pc.getConfiguration().iceServers ?? [],
      state: pc.connectionState,
    })),
  };
}

/** A context whose every request and WebSocket is written into `log`. */
async function recordedPage(log, opts) {
  const page = await fx.newPage(opts);
  const context = page.context();
  await context.addInitScript(recordPeerConnections);
  context.on('request', (request) => log.push({ kind: `http ${request.resourceType()}`, url: request.url() }));
  const watchSockets = (p) => p.on('websocket', (ws) => log.push({ kind: 'websocket', url: ws.url() }));
  watchSockets(page);
  context.on('page', watchSockets);
  page.on('response', async (response) => {
    if (/\/api\/v1\/meetings\/[^/]+\/join$/.test(new URL(response.url()).pathname)) {
      log.joinBodies ??= [];
      log.joinBodies.push(await response.text().catch(() => ''));
    }
  });
  return page;
}

test('a whole meeting makes requests to its own server only, and gets no ICE server', { timeout: 240_000 }, async () => {
  await fx.run(wholeMeeting);
});

async function wholeMeeting() {
  const server = await fx.startServer({ subdir: 'main' });
  const meeting = await server.createMeeting('Weekly sync');
  const log = [];

  const people = [];
  for (const [i, name] of ['Alice', 'Bruno', 'Chloé'].entries()) {
    // English from the browser language alone.
    const page = await recordedPage(log, { label: name, locale: 'en-US' });
    await openPrejoin(page, meeting.link, { title: 'Weekly sync' });
    if (i === 0) {
      assert.equal(await page.evaluate(() => document.documentElement.lang), 'en');
      assert.equal((await page.locator('button[data-testid=join]').textContent()).trim(), 'Join');
      await screenshot(page, 'en-prejoin');
    }
    people.push({ page, name, ...(await joinFromPrejoin(page, name)) });
  }
  const [alice, bruno, chloe] = people;
  for (const me of people) {
    const remotes = people.filter((p) => p !== me).map((p) => ({ identity: p.identity, source: 'camera' }));
    await expectDecoding(me.page, remotes, { newFrames: 5, timeout: 30_000 });
  }
  await screenshot(alice.page, 'en-grid-3');

  // Use the page the way people do, so that every feature's requests are in the log.
  await chloe.page.locator('[data-testid=toggle-screen]').click();
  await expectDecoding(alice.page, [{ identity: chloe.identity, source: 'screen_share' }], { timeout: 20_000 });
  await screenshot(alice.page, 'en-screen-share');
  await chloe.page.locator('[data-testid=toggle-screen]').click();
  await alice.page.locator(tileSelector(chloe.identity, 'screen_share')).waitFor({ state: 'detached', timeout: 10_000 });

  await bruno.page.locator('[data-testid=toggle-chat]').click();
  await alice.page.locator('[data-testid=toggle-chat]').click();
  await alice.page.locator('[data-testid=chat-input]').fill('Hello, see https://example.org/agenda');
  await alice.page.locator('[data-testid=chat-send]').click();
  await pageWait(bruno.page, () => document.querySelectorAll('[data-testid=chat-message]').length > 0, undefined, { what: 'the chat message' });
  await screenshot(bruno.page, 'en-chat-open');

  await bruno.page.locator('[data-testid=raise-hand]').click();
  await bruno.page.locator('[data-testid=reactions]').click();
  await bruno.page.locator('[data-testid=reaction]').first().click();
  await alice.page.locator('[data-testid=toggle-participants]').click();
  await alice.page.locator('[data-testid=participant-item]').nth(2).waitFor({ timeout: 10_000 });
  await alice.page.locator('[data-testid=toggle-camera]').click();
  await alice.page.locator('[data-testid=toggle-camera]').click();
  await expectDecoding(bruno.page, [{ identity: alice.identity, source: 'camera' }], { timeout: 20_000 });

  // ICE servers: none anywhere.
  for (const body of log.joinBodies ?? []) {
    assert.doesNotMatch(body, /stun:|turns?:|ice_?servers/i, `the join endpoint's answer mentions ICE servers: ${body}`);
  }
  assert.equal(log.joinBodies?.length, 3, 'three join answers seen');
  for (const me of people) {
    const ice = await me.page.evaluate(iceServersInPage);
    assert.deepEqual(ice.joinResponse, [], `${me.name}: the JoinResponse carries ICE servers`);
    // One peer connection per page (/rtc/v1); every one of them is checked below.
    assert.ok(ice.peerConnections.length >= 1, `${me.name}: expected a peer connection, saw ${ice.peerConnections.length}`);
    for (const pc of ice.peerConnections) {
      assert.deepEqual(pc.given, [], `${me.name}: a peer connection was given ICE servers`);
      assert.deepEqual(pc.effective, [], `${me.name}: a peer connection uses ICE servers`);
    }
  }

  // Leave, with the log still recording, then judge every request.
  await alice.page.locator('[data-testid=leave]').click();
  await alice.page.locator('[data-testid=left]').waitFor({ timeout: 10_000 });

  const foreign = log.filter(({ url }) => {
    const u = new URL(url);
    if (['data:', 'blob:', 'about:'].includes(u.protocol)) return false;
    return !(['http:', 'ws:'].includes(u.protocol) && u.host === server.host);
  });
  const summary = new Map();
  for (const { kind, url } of log) {
    const u = new URL(url);
    const key = `${kind} ${u.protocol}//${u.host}${u.pathname.replace(/\/m\/[^/]+$/, '/m/<slug>').replace(/meetings\/[^/]+/, 'meetings/<slug>')}`;
    summary.set(key, (summary.get(key) ?? 0) + 1);
  }
  console.log(`${log.length} requests recorded:\n${[...summary].map(([k, n]) => `  ${n} × ${k}`).join('\n')}`);
  assert.deepEqual(foreign, [], 'requests to a host other than the server');
  assert.ok(log.some((r) => r.kind === 'websocket' && new URL(r.url).pathname === '/rtc/v1'), 'the signalling WebSocket was recorded');
}

test('a configured STUN server does reach the page (the checks above can see one)', { timeout: 120_000 }, async () => {
  const page = await fx.run(async () => {
    const stun = `stun:127.0.0.1:${await freeUdpPort()}`;
    const server = await fx.startServer({ subdir: 'stun', config: { 'sfu.ice_servers': [{ urls: [stun] }] } });
    const meeting = await server.createMeeting('With STUN');
    const log = [];
    const p = await recordedPage(log, { label: 'stun', locale: 'fr-FR' });
    await openPrejoin(p, meeting.link, { lang: 'fr' });
    await joinFromPrejoin(p, 'Alice');
    const ice = await p.evaluate(iceServersInPage);
    assert.deepEqual(ice.joinResponse.map((s) => s.urls), [[stun]]);
    assert.ok(ice.peerConnections.length >= 1);
    for (const pc of ice.peerConnections) assert.deepEqual(pc.effective.map((s) => s.urls).flat(), [stun]);
    return p;
  });
  await page.context().close();
});
