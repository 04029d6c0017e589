// One person on the meeting page in Chromium while the node hosting the meeting dies,
// for tests/integration/test_cluster_effects.py (which runs the nodes, kills one and
// brings the other participant back). Not a node:test file.
//
//   node tests/browser/rejoin-page.mjs --link URL --name NAME --source IDENTITY [--timeout S]
//     Joins from the pre-join screen (camera and microphone off: two cores), waits for
//     IDENTITY's camera to decode: {"event":"joined","identity"} {"event":"decoding"}.
//     Then waits for the line "killed" on stdin (the test has just killed the node) and
//     measures, from that line, without any click: the « reconnexion » banner shown
//     {"event":"banner","ms","text"}, and the line "source IDENTITY" (the other
//     participant back, on whichever node) then that camera decoding again on a
//     connected room, the banner gone {"event":"rejoined","ms","identity"}.
//
// Every wait has a deadline (--timeout seconds each). Exits 0 after the last event, 1 on
// any failure (the reason and the page's console on stderr).

import { parseArgs } from 'node:util';

import { Fixture, expectDecoding, joinFromPrejoin, openPrejoin, pageLogs, pageWait, screenshot } from './lib/harness.mjs';

const { values: args } = parseArgs({
  options: {
    link: { type: 'string' },
    name: { type: 'string' },
    source: { type: 'string' },
    timeout: { type: 'string', default: '60' },
  },
});
const timeout = Number(args.timeout) * 1000;
const say = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);

/** The lines that came on stdin, and a wait for the first one `accept` takes. */
const lines = [];
let wake = () => {};
process.stdin.setEncoding('utf8');
let buffered = '';
process.stdin.on('data', (chunk) => {
  buffered += chunk;
  const parts = buffered.split('\n');
  buffered = parts.pop();
  lines.push(...parts.map((l) => l.trim()).filter(Boolean));
  wake();
});

function nextLine(accept, what) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${what} on stdin within ${timeout} ms`)), timeout);
    const look = () => {
      const i = lines.findIndex(accept);
      if (i < 0) return;
      clearTimeout(timer);
      wake = () => {};
      resolve(lines.splice(i, 1)[0]);
    };
    wake = look;
    look();
  });
}

/** In the page: the room's state and the banner, for failure messages. */
function describeRejoin() {
  const banner = document.querySelector('[data-testid=reconnecting-banner]');
  return {
    room: window.tchapVisio?.room?.state,
    banner: banner ? { hidden: banner.hidden, text: banner.textContent } : null,
    tiles: [...document.querySelectorAll('[data-testid=tile]')].map((t) => `${t.dataset.identity}/${t.dataset.source}`),
  };
}

const fixture = new Fixture('rejoin-page');
let page;
try {
  await fixture.launchBrowser();
  page = await fixture.newPage({ label: args.name, origin: new URL(args.link).origin });
  await openPrejoin(page, args.link);
  await page.locator('[data-testid=prejoin-camera-toggle]').click();
  await page.locator('[data-testid=prejoin-mic-toggle]').click();
  const { identity } = await joinFromPrejoin(page, args.name);
  say('joined', { identity });
  await expectDecoding(page, [{ identity: args.source, source: 'camera' }], { newFrames: 10, timeout });
  say('decoding');

  await nextLine((l) => l === 'killed', '"killed"');
  const killed = performance.now();
  const text = await pageWait(
    page,
    () => {
      const banner = document.querySelector('[data-testid=reconnecting-banner]');
      return banner && !banner.hidden ? banner.textContent : null;
    },
    undefined,
    { timeout, what: 'the reconnection banner', describe: describeRejoin, polling: 50 },
  );
  say('banner', { ms: Math.round(performance.now() - killed), text });
  await screenshot(page, 'cluster-rejoin-banner');

  const source = (await nextLine((l) => l.startsWith('source '), '"source IDENTITY"')).slice('source '.length);
  await expectDecoding(page, [{ identity: source, source: 'camera' }], { newFrames: 10, timeout });
  await pageWait(
    page,
    () => window.tchapVisio?.room?.state === 'connected' && document.querySelector('[data-testid=reconnecting-banner]')?.hidden === true,
    undefined,
    { timeout, what: 'a connected room without the banner', describe: describeRejoin },
  );
  say('rejoined', { ms: Math.round(performance.now() - killed), identity: await page.evaluate(() => window.tchapVisio.room.localParticipant.identity) });
} catch (error) {
  process.stderr.write(`${error.stack ?? error}\n${page ? pageLogs(page, args.name) : ''}\n`);
  await fixture.close();
  process.exit(1);
}
await fixture.close();
process.exit(0);
