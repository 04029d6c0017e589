// Run by throttle.test.mjs inside a network namespace of its own (`unshare --net`, loopback
// only) whose loopback carries an HTB qdisc: everything goes through an unlimited default
// class, and this script adds a slow class and a filter that sends into it only the UDP
// datagrams addressed to one page's receiving port, i.e. what the SFU sends that page.
// That page's downstream is then a RATE_KBIT link with a bounded queue (a tail-drop FIFO,
// as at a home router); its upstream and every other page are untouched.
//
// LiveKit's Python SDK publishes a camera in simulcast (320x180, 640x360, 1280x720); two
// Chromium viewers with large windows watch it over `--pc dual` (`/rtc`, two peer
// connections) or `single` (`/rtc/v1`). Once both decode the top layer, the second
// viewer's link is throttled: it must be sent a lower layer than the unthrottled viewer
// and keep decoding
// (no frozen picture); when the throttle is lifted its layer climbs back. Prints one JSON
// line (`RESULT {...}`); exits non-zero on any failure.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

import { expectDecoding, waitFor, withFixture } from './harness.mjs';

const execFileP = promisify(execFile);

/** The throttled downstream, kbit/s: room for the lowest layer and audio, not the middle one. */
const RATE_KBIT = Number(process.env.THROTTLE_KBIT || 500);
/** The bottleneck's queue, bytes: about 250 ms at RATE_KBIT, then tail drop. */
const QUEUE_BYTES = Math.round((RATE_KBIT * 1000) / 8 / 4);
/** How long the picture must keep moving on the lower layer, and the frames it must show. */
const WINDOW_MS = 10_000;
const MIN_FPS = 5;

const pcMode = process.argv.includes('--pc') ? process.argv[process.argv.indexOf('--pc') + 1] : 'dual';
assert.ok(['dual', 'single'].includes(pcMode), `--pc dual|single, not ${pcMode}`);

async function tc(...args) {
  await execFileP('tc', args);
}

async function throttle(port) {
  await tc('class', 'add', 'dev', 'lo', 'parent', '1:', 'classid', '1:20', 'htb', 'rate', `${RATE_KBIT}kbit`, 'ceil', `${RATE_KBIT}kbit`);
  await tc('qdisc', 'add', 'dev', 'lo', 'parent', '1:20', 'handle', '20:', 'bfifo', 'limit', String(QUEUE_BYTES));
  await tc('filter', 'add', 'dev', 'lo', 'parent', '1:', 'protocol', 'ip', 'prio', '1', 'u32',
    'match', 'ip', 'protocol', '17', '0xff', 'match', 'ip', 'dport', String(port), '0xffff', 'flowid', '1:20');
}

async function lift() {
  await tc('filter', 'del', 'dev', 'lo', 'parent', '1:', 'protocol', 'ip', 'prio', '1');
}

/** What the slow class sent and dropped so far. */
async function shaped() {
  const { stdout } = await execFileP('tc', ['-s', 'class', 'show', 'dev', 'lo', 'classid', '1:20']);
  const m = /Sent (\d+) bytes (\d+) pkt \(dropped (\d+)/.exec(stdout);
  return m ? { bytes: Number(m[1]), packets: Number(m[2]), dropped: Number(m[3]) } : null;
}

/**
 * In the page: the receiving side of `identity`'s camera: the local UDP port of its
 * selected candidate pair, the decoded frame size, frames decoded, freezes (Chromium's
 * `freezeCount` / `totalFreezesDuration`) and bytes received.
 */
function receiveStats(page, identity) {
  return page.evaluate(async (identity) => {
    const track = window.tchapVisio.room.remoteParticipants.get(identity)?.getTrackPublication('camera')?.track;
    if (!track?.receiver) return null;
    const stats = [...(await track.receiver.getStats()).values()];
    const inbound = stats.find((s) => s.type === 'inbound-rtp' && s.kind === 'video');
    const transport = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
    const pair = transport && stats.find((s) => s.id === transport.selectedCandidatePairId);
    const local = pair && stats.find((s) => s.id === pair.localCandidateId);
    return {
      port: local?.port,
      protocol: local?.protocol,
      width: inbound?.frameWidth ?? 0,
      framesDecoded: inbound?.framesDecoded ?? 0,
      freezeCount: inbound?.freezeCount ?? 0,
      freezeSeconds: inbound?.totalFreezesDuration ?? 0,
      bytes: inbound?.bytesReceived ?? 0,
    };
  }, identity);
}

/** Waits until `page` decodes `identity`'s camera at a width `accept` takes; returns the stats. */
function waitWidth(page, identity, accept, { timeout, what }) {
  let last = null;
  return waitFor(
    async () => {
      last = await receiveStats(page, identity);
      return last && last.width > 0 && accept(last.width) ? last : null;
    },
    { timeout, interval: 250, what: `${what} (last: ${JSON.stringify(last)})` },
  );
}

await withFixture(`throttled-${pcMode}`, async (fx) => {
  const server = await fx.startServer();
  await fx.launchBrowser();
  const meeting = await server.createMeeting('Lien lent');
  const link = pcMode === 'dual' ? `${meeting.link}?pc=dual` : meeting.link;
  // The publisher is LiveKit's Python SDK: three layers of a synthetic 1280x720 camera at
  // 15 fps, obeying dynacast. (A third Chromium encoding three VP8 layers would leave too
  // little of two cores to the viewers.)
  const alice = await fx.startPeer({
    name: 'alice',
    url: server.livekitUrl,
    token: server.token('alice', meeting.id, { name: 'Alice' }),
    extraArgs: ['--simulcast', '--size', '1280x720', '--dynacast', '--pc', pcMode],
  });
  // Large windows: both viewers' tiles ask for the top layer.
  const bruno = await fx.join(link, 'Bruno', { viewport: { width: 1600, height: 900 } });
  const chloe = await fx.join(link, 'Chloé', { viewport: { width: 1600, height: 900 } });
  const camera = [{ identity: alice.identity, source: 'camera' }];
  await expectDecoding(bruno.page, camera, { newFrames: 10, timeout: 45_000 });
  await expectDecoding(chloe.page, camera, { newFrames: 10, timeout: 45_000 });

  // Both start on the top layer (the estimate starts at 1.5 Mbit/s and probes up).
  const open = (w) => w >= 1280;
  const before = {
    bruno: await waitWidth(bruno.page, alice.identity, open, { timeout: 45_000, what: 'Bruno above the lowest layer' }),
    chloe: await waitWidth(chloe.page, alice.identity, open, { timeout: 45_000, what: 'Chloé above the lowest layer' }),
  };
  assert.equal(before.chloe.protocol, 'udp', 'the throttle shapes UDP: the pair must be UDP');
  console.error(`before the throttle: ${JSON.stringify(before)}`);

  await throttle(before.chloe.port);
  const t0 = performance.now();
  // The layer drops below what the unthrottled viewer gets.
  const lowered = await waitWidth(chloe.page, alice.identity, (w) => w < before.chloe.width, {
    timeout: 45_000,
    what: `Chloé's layer to drop below ${before.chloe.width} wide over ${RATE_KBIT} kbit/s`,
  });
  const switchedMs = Math.round(performance.now() - t0);

  // No frozen picture: frames keep being decoded, and at the lower layer, for a whole
  // window (waited on per second, each with a deadline).
  const start = await receiveStats(chloe.page, alice.identity);
  const seconds = [];
  let previous = start;
  for (let i = 0; i < WINDOW_MS / 1000; i++) {
    const deadline = performance.now() + 1000;
    await waitFor(() => performance.now() >= deadline, { timeout: 2_000, interval: 100, what: 'a second to pass' });
    const now = await receiveStats(chloe.page, alice.identity);
    seconds.push(now.framesDecoded - previous.framesDecoded);
    previous = now;
  }
  const end = previous;
  const brunoNow = await receiveStats(bruno.page, alice.identity);
  const link_ = await shaped();
  const held = {
    fps: ((end.framesDecoded - start.framesDecoded) * 1000) / WINDOW_MS,
    perSecond: seconds,
    kbps: Math.round(((end.bytes - start.bytes) * 8) / WINDOW_MS),
    width: end.width,
    freezes: end.freezeCount - start.freezeCount,
    freezeSeconds: Number((end.freezeSeconds - start.freezeSeconds).toFixed(2)),
    unthrottledWidth: brunoNow.width,
    shaped: link_,
  };
  console.error(`throttled: lowered to ${lowered.width} in ${switchedMs} ms; then ${JSON.stringify(held)}`);
  assert.ok(held.width < brunoNow.width, `throttled ${held.width} wide, unthrottled ${brunoNow.width}: no lower layer`);
  assert.ok(held.fps >= MIN_FPS, `${held.fps} frames/s decoded over ${WINDOW_MS} ms on the throttled link`);
  assert.ok(Math.min(...seconds) > 0, `a second without a decoded frame: ${seconds}`);
  assert.ok(held.freezeSeconds < 1, `${held.freezeSeconds} s frozen in ${WINDOW_MS} ms`);

  // Lifted: the estimate grows back and so does the layer.
  await lift();
  const t1 = performance.now();
  const climbed = await waitWidth(chloe.page, alice.identity, (w) => w > held.width, {
    timeout: 60_000,
    what: `Chloé's layer to climb above ${held.width} once the throttle is lifted`,
  });
  const climbedMs = Math.round(performance.now() - t1);
  console.log(`RESULT ${JSON.stringify({ pc: pcMode, rateKbit: RATE_KBIT, before, lowered: lowered.width, switchedMs, held, climbed: climbed.width, climbedMs })}`);
});
