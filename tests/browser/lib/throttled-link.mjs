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
import fs from 'node:fs';
import { promisify } from 'node:util';

import { expectDecoding, joinFromPrejoin, openPrejoin, waitFor, withFixture } from './harness.mjs';

const execFileP = promisify(execFile);

/** The throttled downstream, kbit/s: room for the lowest layer and audio, not the middle one. */
const RATE_KBIT = Number(process.env.THROTTLE_KBIT || 400);
/** The bottleneck's queue, bytes: about 250 ms at RATE_KBIT, then tail drop. */
const QUEUE_BYTES = Math.round((RATE_KBIT * 1000) / 8 / 4);
/** How long the picture must keep moving on the lower layer, and the frames it must show. */
const WINDOW_MS = 10_000;
const MIN_FPS = 5;
/** The lowest layer's width (the publisher sends 320x180, 640x360, 1280x720). */
const LOWEST_WIDTH = 320;

/** The publisher's identity (its token's `sub`). */
const ALICE = 'alice';

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
    const participant = window.tchapVisio.room.remoteParticipants.get(identity);
    const track = participant?.getTrackPublication('camera')?.track;
    if (!track?.receiver) return { missing: participant ? [...participant.trackPublications.values()].map((p) => [p.source, !!p.track, !!p.track?.receiver]) : [...window.tchapVisio.room.remoteParticipants.keys()] };
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
      return last && !last.missing && last.width > 0 && accept(last.width) ? last : null;
    },
    { timeout, interval: 250, what },
  ).catch((error) => {
    throw new Error(`${error.message}; last seen: ${JSON.stringify(last)}`);
  });
}

/**
 * A viewer: a large window (its tile of the publisher asks for more than the lowest
 * layer), camera and microphone off before joining (two cores cannot also encode two
 * more cameras).
 */
async function joinViewer(fx, link, name) {
  const page = await fx.newPage({ label: name, viewport: { width: 1920, height: 1080 } });
  await openPrejoin(page, link);
  await page.locator('[data-testid=prejoin-camera-toggle]').click();
  await page.locator('[data-testid=prejoin-mic-toggle]').click();
  return { page, name, ...(await joinFromPrejoin(page, name)) };
}

/** The server's latest layer switches and bandwidth estimates (debug log), for the record. */
function switches(server) {
  return fs
    .readFileSync(server.logPath, 'utf8')
    .split('\n')
    .filter((l) => l.includes('simulcast layer switch') || l.includes('bandwidth estimate'))
    .slice(-40);
}

await withFixture(`throttled-${pcMode}`, async (fx) => {
  // Layer switches and estimates are logged at debug level: the result reports them.
  const server = await fx.startServer({ config: { 'logging.level': 'info,tchap_visio::sfu::forward=debug' } });
  await fx.launchBrowser();
  const meeting = await server.createMeeting('Lien lent');
  const link = pcMode === 'dual' ? `${meeting.link}?pc=dual` : meeting.link;
  // The publisher is LiveKit's Python SDK: three layers of a synthetic 1280x720 camera at
  // 15 fps, obeying dynacast. (A third Chromium encoding three VP8 layers would leave too
  // little of two cores to the viewers.)
  const alice = await fx.startPeer({
    name: 'alice',
    url: server.livekitUrl,
    token: server.token(ALICE, meeting.id, { name: 'Alice' }),
    extraArgs: ['--simulcast', '--size', '1280x720', '--dynacast', '--pc', pcMode],
  });
  const bruno = await joinViewer(fx, link, 'Bruno');
  const chloe = await joinViewer(fx, link, 'Chloé');
  const camera = [{ identity: ALICE, source: 'camera' }];
  await expectDecoding(bruno.page, camera, { newFrames: 10, timeout: 45_000 });
  await expectDecoding(chloe.page, camera, { newFrames: 10, timeout: 45_000 });

  // Both start above the lowest layer (the estimate starts at 1.5 Mbit/s and probes up).
  // Generous deadlines: on two busy cores, delays in the processes themselves make the
  // estimates dip now and then, unthrottled or not.
  const open = (w) => w > 320;
  const before = {
    bruno: await waitWidth(bruno.page, ALICE, open, { timeout: 90_000, what: 'Bruno above the lowest layer' }),
    chloe: await waitWidth(chloe.page, ALICE, open, { timeout: 90_000, what: 'Chloé above the lowest layer' }),
  };
  assert.equal(before.chloe.protocol, 'udp', 'the throttle shapes UDP: the pair must be UDP');
  console.error(`before the throttle: ${JSON.stringify(before)}`);

  await throttle(before.chloe.port);
  const t0 = performance.now();
  // The layer drops below what the unthrottled viewer gets.
  const lowered = await waitWidth(chloe.page, ALICE, (w) => w < before.chloe.width, {
    timeout: 45_000,
    what: `Chloé's layer to drop below ${before.chloe.width} wide over ${RATE_KBIT} kbit/s`,
  });
  const switchedMs = Math.round(performance.now() - t0);

  // No frozen picture: frames keep being decoded, and at the lower layer, for a whole
  // window (waited on per second, each with a deadline).
  async function measureWindow() {
    const start = await receiveStats(chloe.page, ALICE);
    const brunoStart = await receiveStats(bruno.page, ALICE);
    const seconds = [];
    // Each second's decoded width, the throttled viewer's and the unthrottled one's.
    const widths = [];
    const brunoWidths = [];
    // The best layer each viewer decoded in the window: on two loaded cores the
    // unthrottled viewer's own estimate dips at times, so one instant proves little.
    let widest = start.width;
    let brunoWidest = brunoStart.width;
    let previous = start;
    for (let i = 0; i < WINDOW_MS / 1000; i++) {
      const deadline = performance.now() + 1000;
      await waitFor(() => performance.now() >= deadline, { timeout: 2_000, interval: 100, what: 'a second to pass' });
      const now = await receiveStats(chloe.page, ALICE);
      seconds.push(now.framesDecoded - previous.framesDecoded);
      widths.push(now.width);
      widest = Math.max(widest, now.width);
      const brunoWidth = (await receiveStats(bruno.page, ALICE)).width;
      brunoWidths.push(brunoWidth);
      brunoWidest = Math.max(brunoWidest, brunoWidth);
      previous = now;
    }
    const end = previous;
    const brunoNow = await receiveStats(bruno.page, ALICE);
    const link_ = await shaped();
    const held = {
      fps: ((end.framesDecoded - start.framesDecoded) * 1000) / WINDOW_MS,
      perSecond: seconds,
      widths,
      unthrottledWidths: brunoWidths,
      // Seconds on a layer below the best the unthrottled viewer decoded in the window.
      lowerSeconds: widths.filter((w) => w < brunoWidest).length,
      kbps: Math.round(((end.bytes - start.bytes) * 8) / WINDOW_MS),
      width: end.width,
      widest,
      unthrottledWidest: brunoWidest,
      freezes: end.freezeCount - start.freezeCount,
      freezeSeconds: Number((end.freezeSeconds - start.freezeSeconds).toFixed(2)),
      unthrottledWidth: brunoNow.width,
      // Two loaded cores freeze an unthrottled picture too: the baseline for the above.
      unthrottledFreezeSeconds: Number((brunoNow.freezeSeconds - brunoStart.freezeSeconds).toFixed(2)),
      shaped: link_,
    };
    return held;
  }
  // The unthrottled viewer is the reference: on two loaded cores its own estimate can
  // keep it on the lowest layer for a whole window, which shows nothing about the
  // throttle. Such a window is measured again (three at most).
  let held;
  for (let window = 1; window <= 3; window++) {
    held = await measureWindow();
    if (held.unthrottledWidest > LOWEST_WIDTH) break;
    console.error(`window ${window}: the unthrottled viewer stayed on the lowest layer: ${JSON.stringify(held)}`);
  }
  const { widths, perSecond: seconds } = held;
  console.error(`server log:\n${switches(server).join('\n')}`);
  console.error(`throttled: lowered to ${lowered.width} in ${switchedMs} ms; then ${JSON.stringify(held)}`);
  // Most of the window on a lower layer: an up-switch trial (simulcast.rs `UpSwitch`,
  // rolled back within a second or so) may show the higher one for a second or two; on
  // two loaded cores the unthrottled viewer's own estimate dips at times, so its best
  // layer in the window is the reference.
  assert.ok(held.unthrottledWidest > LOWEST_WIDTH, 'the unthrottled viewer stayed on the lowest layer in three windows');
  assert.ok(
    held.lowerSeconds >= (WINDOW_MS / 1000) * 0.8,
    `throttled widths ${widths} vs unthrottled ${held.unthrottledWidths}: only ${held.lowerSeconds} s below ${held.unthrottledWidest}`,
  );
  assert.ok(held.fps >= MIN_FPS, `${held.fps} frames/s decoded over ${WINDOW_MS} ms on the throttled link`);
  assert.ok(Math.min(...seconds) > 0, `a second without a decoded frame: ${seconds}`);
  // Chromium counts a freeze from ~200 ms without a frame at 15 fps: a probe filling
  // the bottleneck's queue makes a few. Frozen video is more: a second without a frame
  // (above), or a fifth of the window more than the unthrottled viewer.
  assert.ok(
    held.freezeSeconds <= held.unthrottledFreezeSeconds + WINDOW_MS / 1000 / 5,
    `${held.freezeSeconds} s frozen in ${WINDOW_MS} ms (unthrottled: ${held.unthrottledFreezeSeconds} s)`,
  );

  // Lifted: the estimate grows back and so does the layer, one step above the one
  // Chloé receives now. An up-switch rolled back under the throttle makes the next
  // wait (simulcast.rs: 10, 20, then 40 s at most), so a climb may start up to 40 s
  // after the lift, then needs the estimate to carry it (a run in CI took over 60 s to
  // reach two steps up).
  const atLift = await waitWidth(chloe.page, ALICE, () => true, {
    timeout: 10_000,
    what: "Chloé's layer when the throttle is lifted",
  });
  await lift();
  const t1 = performance.now();
  const climbed = await waitWidth(chloe.page, ALICE, (w) => w > atLift.width, {
    timeout: 90_000,
    what: `Chloé's layer to climb above ${atLift.width} once the throttle is lifted`,
  });
  const climbedMs = Math.round(performance.now() - t1);
  console.log(`RESULT ${JSON.stringify({ pc: pcMode, rateKbit: RATE_KBIT, before, lowered: lowered.width, switchedMs, held, climbed: climbed.width, climbedMs })}`);
});
