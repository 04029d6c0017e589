#!/usr/bin/env node
// Join benchmark (not part of the test run): time from clicking Join on the meeting
// page to the first decoded remote video frame, over N joins (default 10) against one
// participant who publishes a camera; prints min, p50, p90 and max.
//
//   node tests/browser/bench-join.mjs [--joins 10] [--warmup 1] [--publisher chromium|python]
//                                     [--pc single|dual] [--json]
//
// --pc: how the joining pages connect: one peer connection (/rtc/v1, the page's default)
// or two (/rtc, `?pc=dual`).
//
// Needs what scripts/test-browser.sh prepares: the binary ($TCHAP_VISIO_BIN, default
// target/debug/tchap-visio; a release build gives the numbers worth recording), web/dist,
// /usr/bin/chromium, tests/browser/node_modules, and for --publisher python the .venv.
//
// The times are the page's own (`window.tchapVisio.timings`, performance.now() in the
// page): `joinClicked` is set by the Join button's handler, `firstRemoteFrame` by
// requestVideoFrameCallback on the first remote video; `connected` is when livekit-client
// reported the room connected. Each join is a fresh browser context (no cache, nothing
// remembered) that first loads the pre-join screen, so page load and camera start are
// not counted; after each join it leaves, and the next one starts once the server has
// seen it go.

import { parseArgs } from 'node:util';

import { expectDecoding, joinFromPrejoin, openPrejoin, pageWait, withFixture } from './lib/harness.mjs';

const { values: args } = parseArgs({
  options: {
    joins: { type: 'string', default: '10' },
    warmup: { type: 'string', default: '1' },
    publisher: { type: 'string', default: 'chromium' },
    pc: { type: 'string', default: 'single' },
    json: { type: 'boolean', default: false },
  },
});
const JOINS = Number(args.joins);
const WARMUP = Number(args.warmup);
if (!['chromium', 'python'].includes(args.publisher)) throw new Error('--publisher is chromium or python');
if (!['single', 'dual'].includes(args.pc)) throw new Error('--pc is single or dual');

/** Nearest-rank percentile. */
function percentile(sorted, p) {
  return sorted[Math.max(0, Math.ceil(p * sorted.length) - 1)];
}

await withFixture('bench', async (fx) => {
  const server = await fx.startServer();
  await fx.launchBrowser();
  const meeting = await server.createMeeting('Banc d’essai');

  // The participant already in the meeting, publishing its camera.
  let publisherIdentity;
  if (args.publisher === 'python') {
    publisherIdentity = 'publisher';
    const peer = await fx.startPeer({ name: 'publisher', url: server.livekitUrl, token: server.token(publisherIdentity, meeting.id, { name: 'Publisher' }) });
    await peer.wait((st) => st.published?.video, { what: 'the Python peer to publish' });
  } else {
    const page = await fx.newPage({ locale: 'fr-FR' });
    await openPrejoin(page, meeting.link, { lang: 'fr' });
    publisherIdentity = (await joinFromPrejoin(page, 'Publisher')).identity;
    await pageWait(page, () => !!window.tchapVisio.room.localParticipant.getTrackPublication('camera')?.track?.sid, undefined, { what: 'the camera to be published' });
  }

  const results = [];
  for (let i = 0; i < WARMUP + JOINS; i++) {
    const page = await fx.newPage({ locale: 'fr-FR' });
    await openPrejoin(page, `${meeting.link}?lang=fr${args.pc === 'dual' ? '&pc=dual' : ''}`);
    const joined = await joinFromPrejoin(page, `Participant ${i + 1}`);
    const timings = await pageWait(
      page,
      () => {
        const t = window.tchapVisio.timings;
        return t.firstRemoteFrame !== undefined && t.joinClicked !== undefined ? { ...t } : null;
      },
      undefined,
      { timeout: 20_000, what: 'the first decoded remote frame' },
    );
    // The frame counted is the publisher's camera (the only remote video), and it keeps decoding.
    await expectDecoding(page, [{ identity: publisherIdentity, source: 'camera' }], { newFrames: 3, timeout: 10_000 });
    const r = {
      join: i + 1,
      warmup: i < WARMUP,
      firstFrameMs: timings.firstRemoteFrame - timings.joinClicked,
      connectedMs: timings.connected - timings.joinClicked,
    };
    results.push(r);
    if (!args.json) {
      console.log(`join ${String(r.join).padStart(2)}${r.warmup ? ' (warm-up)' : '          '}  connected ${r.connectedMs.toFixed(0).padStart(5)} ms  first remote frame ${r.firstFrameMs.toFixed(0).padStart(5)} ms`);
    }
    await page.locator('[data-testid=leave]').click();
    await page.locator('[data-testid=left]').waitFor({ timeout: 10_000 });
    await page.context().close();
    // The next join starts in a room of two again.
    await waitParticipantsGone(server, joined.identity);
  }

  const measured = results.filter((r) => !r.warmup);
  const first = measured.map((r) => r.firstFrameMs).sort((a, b) => a - b);
  const conn = measured.map((r) => r.connectedMs).sort((a, b) => a - b);
  const summary = {
    publisher: args.publisher,
    pc: args.pc,
    joins: measured.length,
    firstRemoteFrameMs: { min: first[0], p50: percentile(first, 0.5), p90: percentile(first, 0.9), max: first.at(-1) },
    connectedMs: { min: conn[0], p50: percentile(conn, 0.5), p90: percentile(conn, 0.9), max: conn.at(-1) },
    binary: process.env.TCHAP_VISIO_BIN || 'target/debug/tchap-visio',
  };
  if (args.json) {
    console.log(JSON.stringify({ summary, results }));
  } else {
    const f = (x) => `${x.toFixed(0)} ms`;
    console.log(
      `\nJoin (${args.pc} PC) → first decoded remote frame, ${measured.length} joins against one ${args.publisher} publisher (${summary.binary}):\n` +
        `  p50 ${f(summary.firstRemoteFrameMs.p50)}   p90 ${f(summary.firstRemoteFrameMs.p90)}   min ${f(first[0])}   max ${f(first.at(-1))}\n` +
        `Join → room connected:\n` +
        `  p50 ${f(summary.connectedMs.p50)}   p90 ${f(summary.connectedMs.p90)}   min ${f(conn[0])}   max ${f(conn.at(-1))}`,
    );
  }
});

/** Waits until the SFU counts only the publisher again (gauge tchap_visio_sfu_participants). */
async function waitParticipantsGone(server, identity) {
  const deadline = performance.now() + 10_000;
  for (;;) {
    const text = await (await fetch(server.metricsUrl())).text();
    const m = /^tchap_visio_sfu_participants(?:\{[^}]*\})?\s+(\S+)/m.exec(text);
    if (!m || Number(m[1]) <= 1) return;
    if (performance.now() > deadline) throw new Error(`participant ${identity} still counted by the SFU after 10 s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
