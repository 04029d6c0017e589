// livekit-client in Chromium joins over one peer connection (`/rtc/v1`, the page's
// default) with no detour: no 404, no `/rtc` fallback, no `validate` probe in any page's
// network log, and the server counts the connections on `/rtc/v1`. A third page forced
// onto two peer connections (`?pc=dual`, `/rtc`) shares the meeting: both paths in one
// room, every page decoding the two others. Then one leaves and two join: the spare
// receive m-line carries one newcomer, the server asks for one more
// (`MediaSectionsRequirement`) for the other, and both decode.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  expectDecoding,
  joinFromPrejoin,
  openPrejoin,
  useFixture,
} from './lib/harness.mjs';

const CONNECTIONS = 'tchap_visio_signal_connections_total';

const fx = useFixture('single-pc');

test('pages join over /rtc/v1 without fallback, alongside a dual-PC page', { timeout: 180_000 }, async () => {
  await fx.run(scenario);
});

/** Every HTTP request (with its status) and WebSocket a page opens, by path. */
function recordNetwork(page) {
  const log = { requests: [], sockets: [] };
  page.on('response', (response) => {
    const url = new URL(response.url());
    log.requests.push({ path: url.pathname, status: response.status() });
  });
  page.on('requestfailed', (request) => {
    log.requests.push({ path: new URL(request.url()).pathname, status: 'failed' });
  });
  page.on('websocket', (ws) => {
    log.sockets.push(new URL(ws.url()).pathname);
    log.urlLengths = [...(log.urlLengths ?? []), ws.url().length];
  });
  return log;
}

/** In the page: the video m-lines it receives on (no local track) and how many of them. */
function receiveVideoLines() {
  const transceivers = window.tchapVisio.room.engine.pcManager.publisher.getTransceivers();
  return transceivers.filter((t) => t.receiver.track.kind === 'video' && !t.sender.track).length;
}

async function join(meeting, name, pc) {
  const page = await fx.newPage({ label: `${name} (${pc})`, locale: 'fr-FR' });
  const network = recordNetwork(page);
  await openPrejoin(page, pc === 'dual' ? `${meeting.link}?pc=dual` : meeting.link);
  return { page, name, pc, network, ...(await joinFromPrejoin(page, name)) };
}

async function scenario() {
  const { server } = fx;
  const meeting = await server.createMeeting('Une seule connexion');
  const before = {
    v1: await server.metric(CONNECTIONS, { path: '/rtc/v1' }),
    v0: await server.metric(CONNECTIONS, { path: '/rtc' }),
  };
  const people = [];
  for (const [name, pc] of [
    ['Alice', 'single'],
    ['Bruno', 'single'],
    ['Chloé', 'dual'],
  ]) {
    people.push(await join(meeting, name, pc));
  }

  for (const me of people) {
    const others = people.filter((p) => p !== me).map((p) => ({ identity: p.identity, source: 'camera' }));
    const frames = await expectDecoding(me.page, others, { newFrames: 15, timeout: 45_000 });
    console.log(`${me.name} (${me.pc}) decodes: ${JSON.stringify(frames)}`);
  }

  for (const { name, pc, network } of people) {
    const expected = pc === 'single' ? '/rtc/v1' : '/rtc';
    assert.deepEqual(network.sockets, [expected], `${name}: signalling WebSockets opened`);
    const bad = network.requests.filter((r) => r.status === 'failed' || r.status >= 400);
    assert.deepEqual(bad, [], `${name}: no failed or 4xx/5xx request`);
    // What reverse proxies must let through (docs/signalling.md): the URL holds the token
    // and, on /rtc/v1, the gzipped publisher offer.
    console.log(`${name} (${pc}): signalling URL of ${network.urlLengths} bytes`);
    const probes = network.requests.filter((r) => r.path.endsWith('/validate'));
    assert.deepEqual(probes, [], `${name}: livekit-client never had to ask /validate why a join failed`);
  }
  // The server saw two single-PC joins and one dual-PC join.
  assert.equal((await server.metric(CONNECTIONS, { path: '/rtc/v1' })) - before.v1, 2);
  assert.equal((await server.metric(CONNECTIONS, { path: '/rtc' })) - before.v0, 1);
  // One peer connection on the single-PC pages, two on the dual one.
  for (const { name, pc, page } of people) {
    const count = await page.evaluate(() => {
      const manager = window.tchapVisio.room.engine.pcManager;
      return [manager?.publisher, manager?.subscriber].filter(Boolean).length;
    });
    assert.equal(count, pc === 'single' ? 1 : 2, `${name}: peer connections`);
  }

  // Bruno leaves; Denis and Emma join. Alice had three receive-only video m-lines (from
  // her first offer), two in use. Bruno's is retired (livekit-client ended its track),
  // the spare one carries a newcomer, and one more is asked for the other.
  const [alice, bruno, chloe] = people;
  const linesBefore = await alice.page.evaluate(receiveVideoLines);
  await bruno.page.locator('[data-testid=leave]').click();
  await bruno.page.locator('[data-testid=left]').waitFor({ timeout: 10_000 });
  await alice.page.locator(`[data-testid=tile][data-identity="${bruno.identity}"]`).waitFor({ state: 'detached', timeout: 10_000 });
  const newcomers = [await join(meeting, 'Denis', 'single'), await join(meeting, 'Emma', 'single')];
  const cameras = (list) => list.map((p) => ({ identity: p.identity, source: 'camera' }));
  await expectDecoding(alice.page, cameras([chloe, ...newcomers]), { newFrames: 15, timeout: 45_000 });
  await expectDecoding(chloe.page, cameras([alice, ...newcomers]), { newFrames: 15, timeout: 45_000 });
  await expectDecoding(newcomers[1].page, cameras([alice, chloe, newcomers[0]]), { newFrames: 15, timeout: 45_000 });
  assert.equal(linesBefore, 3, 'livekit-client offers three receive-only video m-lines at first');
  assert.equal(await alice.page.evaluate(receiveVideoLines), linesBefore + 1, 'Alice: one receive m-line added on request');
}
