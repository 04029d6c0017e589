// livekit-client in Chromium joins over one peer connection (`/rtc/v1`, the page's
// default) with no detour: no 404, no `/rtc` fallback, no `validate` probe in any page's
// network log, and the server counts the connections on `/rtc/v1`. A third page forced
// onto two peer connections (`?pc=dual`, `/rtc`) shares the meeting: both paths in one
// room, every page decoding the two others. Issue 6 item 1.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import {
  Server,
  expectDecoding,
  joinFromPrejoin,
  launchBrowser,
  makeWorkdir,
  newPage,
  openPrejoin,
  removeWorkdir,
  withDiagnostics,
} from './lib/harness.mjs';

const CONNECTIONS = 'tchap_visio_signal_connections_total';

let dir;
let server;
let browser;
const pages = [];
let failed = false;

before(async () => {
  dir = makeWorkdir('single-pc');
  server = await Server.start(dir);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close().catch(() => {});
  await server?.stop();
  if (!failed) removeWorkdir(dir);
  else process.stderr.write(`work directory kept: ${dir}\n`);
});

test('pages join over /rtc/v1 without fallback, alongside a dual-PC page', { timeout: 180_000 }, async () => {
  await withDiagnostics(() => ({ server, pages }), async () => {
    try {
      await scenario();
    } catch (error) {
      failed = true;
      throw error;
    }
  });
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
  page.on('websocket', (ws) => log.sockets.push(new URL(ws.url()).pathname));
  return log;
}

async function scenario() {
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
    const page = await newPage(browser, { locale: 'fr-FR' });
    page.label = `${name} (${pc})`;
    pages.push(page);
    const network = recordNetwork(page);
    await openPrejoin(page, pc === 'dual' ? `${meeting.link}?pc=dual` : meeting.link);
    people.push({ page, name, pc, network, ...(await joinFromPrejoin(page, name)) });
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
}
