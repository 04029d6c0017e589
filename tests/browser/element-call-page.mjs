// Two call members in Chromium, each on a page of its own, connected to tchap-visio's SFU
// with the LiveKit URL and JWT that the Element Call focus (`/get_token`) gave them, for
// tests/integration/test_element_call_browser.py (which plays the Matrix side: the room,
// the OpenID tokens, the /get_token requests). Not a node:test file.
//
//   node tests/browser/element-call-page.mjs --spec SPEC.json [--timeout 45]
//
// SPEC.json: {"members": [{"name", "url", "jwt"}, ...]} (two or more). Each page loads
// livekit-client's ESM bundle from a small server of this script (127.0.0.1, a secure
// context), connects with its member's url and jwt, publishes the fake camera and
// microphone (--use-fake-device-for-media-stream), and counts the frames each remote
// camera presents (requestVideoFrameCallback).
//
// Progress, one JSON line each on stdout:
//   {"event":"connected","name","identity","room","url"}                 per page
//   {"event":"decoding","name","from","width","height","frames","since"} per page and remote
//     once the remote camera has a size and presented `--frames` more frames than when
//     first seen (frames advancing, not a frozen picture)
//
//   --mode element-call: SPEC.json {"members": [{"name", "homeserver", "user_id",
//   "device_id", "access_token", "room_id"}, ...]}. Each page is the widget host of
//   element-call-host/ (matrix-widget-api's ClientWidgetApi and a WidgetDriver on the
//   homeserver with the member's token) with Element Call's embedded build
//   (@element-hq/element-call-embedded, or $ELEMENT_CALL_DIST) in its iframe, joining the
//   room's call at once (skipLobby). Progress: {"event":"decoding","name","from",...}
//   once the tile named after each other member (its localpart) shows a video that decodes.
//
// Exits 0 after every page decodes every other member's camera, 1 on any failure (the
// reason and the pages' consoles on stderr). Every wait has the deadline --timeout.

import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { parseArgs } from 'node:util';

import { Fixture, pageLogs, pageWait, waitFor } from './lib/harness.mjs';

const { values: args } = parseArgs({
  options: {
    spec: { type: 'string' },
    timeout: { type: 'string', default: '45' },
    frames: { type: 'string', default: '10' },
    mode: { type: 'string', default: 'livekit' },
  },
});
const timeout = Number(args.timeout) * 1000;
const newFrames = Number(args.frames);
const spec = JSON.parse(fs.readFileSync(args.spec, 'utf8'));
const say = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);

// ---------------------------------------------------------------------------------------
// In the page (written into the page's script as they are)
// ---------------------------------------------------------------------------------------

/** Connects with `url` and `jwt`, publishes camera and microphone, records remote cameras. */
async function join({ url, jwt }) {
  const LK = window.LK;
  const t = (window.call = { videos: {}, pageErrors: [] });
  window.addEventListener('unhandledrejection', (e) => t.pageErrors.push(String(e.reason?.message ?? e.reason)));
  window.addEventListener('error', (e) => t.pageErrors.push(String(e.message)));
  const room = new LK.Room({ adaptiveStream: false, dynacast: false });
  window.room = room;
  room.on(LK.RoomEvent.TrackSubscribed, (track, publication, participant) => {
    if (track.kind !== 'video' || publication.source !== LK.Track.Source.Camera) return;
    const video = document.createElement('video');
    video.muted = true;
    video.autoplay = true;
    video.playsInline = true;
    video.dataset.identity = participant.identity;
    document.body.append(video);
    track.attach(video);
    const rec = (t.videos[participant.identity] = { frames: 0, video });
    const onFrame = () => {
      rec.frames += 1;
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  });
  await room.connect(url, jwt);
  await room.localParticipant.enableCameraAndMicrophone();
  return { identity: room.localParticipant.identity, room: room.name, url: room.engine?.url ?? url };
}

/** The page's state, for the waits and their failure messages. */
function describeCall() {
  const room = window.room;
  const videos = {};
  for (const [identity, rec] of Object.entries(window.call?.videos ?? {})) {
    videos[identity] = { frames: rec.frames, width: rec.video.videoWidth, height: rec.video.videoHeight };
  }
  return {
    state: room?.state,
    identity: room?.localParticipant?.identity,
    published: room ? [...room.localParticipant.trackPublications.values()].map((p) => p.source) : null,
    remotes: room ? [...room.remoteParticipants.values()].map((p) => ({ identity: p.identity, tracks: [...p.trackPublications.values()].map((t) => `${t.source}:${t.isSubscribed}`) })) : null,
    videos,
    pageErrors: window.call?.pageErrors,
  };
}

// ---------------------------------------------------------------------------------------
// The pages' server: livekit-client's self-contained ESM bundle on 127.0.0.1
// ---------------------------------------------------------------------------------------

const LK_DIST = path.dirname(createRequire(import.meta.url).resolve('livekit-client'));
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>Element Call member (livekit-client)</title>
<script type="module">
import * as LK from '/lk/livekit-client.esm.mjs';
window.LK = LK;
${join}
${describeCall}
window.t = { join, describeCall };
</script>
<body></body>
`;
const FILES = {
  '/': { type: 'text/html; charset=utf-8', body: PAGE },
  '/lk/livekit-client.esm.mjs': { type: 'text/javascript', file: path.join(LK_DIST, 'livekit-client.esm.mjs') },
};

const TYPES = { '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.css': 'text/css', '.json': 'application/json', '.wasm': 'application/wasm', '.svg': 'image/svg+xml', '.woff': 'font/woff', '.woff2': 'font/woff2', '.mp3': 'audio/mpeg', '.ogg': 'audio/ogg' };
const packageDir = (name) => path.dirname(createRequire(import.meta.url).resolve(`${name}/package.json`));
const EC_DIST = args.mode === 'element-call' ? process.env.ELEMENT_CALL_DIST || path.join(packageDir('@element-hq/element-call-embedded'), 'dist') : null;
const MXW = args.mode === 'element-call' ? process.env.MATRIX_WIDGET_API_DIR || packageDir('matrix-widget-api') : null;
const HOST_DIR = path.join(path.dirname(new URL(import.meta.url).pathname), 'element-call-host');

/** /ec/… from Element Call's embedded build, /mxw/api.js, /host/… (the widget host page). */
function staticFile(pathname) {
  const from = (dir, rest) => {
    const file = path.join(dir, path.normalize(rest).replace(/^(\.\.[/\\])+/, ''));
    return file.startsWith(dir) && fs.existsSync(file) && fs.statSync(file).isFile() ? { type: TYPES[path.extname(file)] ?? 'application/octet-stream', file } : null;
  };
  if (pathname.startsWith('/ec/')) return from(EC_DIST, pathname.slice(4) || 'index.html');
  if (pathname === '/mxw/api.js') return from(path.join(MXW, 'dist'), 'api.js');
  if (pathname.startsWith('/host/')) return from(HOST_DIR, pathname.slice(6));
  return null;
}

function serve() {
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, 'http://localhost').pathname;
    const entry = args.mode === 'element-call' ? staticFile(pathname) : FILES[pathname];
    if (!entry) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': entry.type, 'cache-control': 'no-store' });
    res.end(entry.body ?? fs.readFileSync(entry.file));
  });
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}

// ---------------------------------------------------------------------------------------

/** Element Call's embedded build in a widget host page per member; its videos decoding. */
async function mainElementCall(fixture, origin) {
  await fixture.launchBrowser();
  const members = [];
  for (const m of spec.members) {
    const page = await fixture.newPage({ label: m.name, origin });
    await page.goto(`${origin}/host/host.html`);
    await pageWait(page, () => !!window.startHost, undefined, { timeout, what: 'the host page script', describe: () => location.href });
    await page.evaluate((spec) => window.startHost(spec), { ...m, ec_url: `${origin}/ec/index.html` });
    members.push({ ...m, page });
  }
  await Promise.all(
    members.map(async (m) => {
      const frame = await waitFor(() => m.page.frames().find((f) => f.url().includes('/ec/')), { timeout, what: `${m.name}'s Element Call frame` });
      // Each other member's tile (named by Element Call from the member's display name,
      // the localpart here) shows a video that decodes.
      const others = members.filter((o) => o !== m).map((o) => o.user_id.slice(1).split(':')[0]);
      const seen = await pageWait(
        frame,
        ([others, newFrames]) => {
          const out = {};
          for (const name of others) {
            const tile = [...document.querySelectorAll('[data-testid=videoTile]')].find((t) => t.querySelector('[data-testid=name_tag]')?.textContent?.trim() === name);
            const v = tile?.querySelector('video');
            if (!v || v.videoWidth === 0) return null;
            const frames = v.getVideoPlaybackQuality().totalVideoFrames;
            if (frames === 0) return null;
            v.dataset.base ??= String(frames);
            if (frames < Number(v.dataset.base) + newFrames) return null;
            out[name] = { width: v.videoWidth, height: v.videoHeight, frames, since: frames - Number(v.dataset.base) };
          }
          return out;
        },
        [others, newFrames],
        {
          timeout,
          what: `${m.name}: ${others.join(', ')}'s camera decoding in Element Call`,
          describe: () => ({
            text: document.body.innerText.slice(0, 80),
            videos: [...document.querySelectorAll('video')].map((v) => ({ w: v.videoWidth, dev: v.srcObject?.getVideoTracks?.()[0]?.getSettings().deviceId ?? null, frames: v.getVideoPlaybackQuality().totalVideoFrames, tracks: v.srcObject?.getTracks?.().map((t) => `${t.kind}:${t.readyState}:${t.muted}`) ?? null, tile: v.closest('[data-testid=videoTile]')?.querySelector('[data-testid=name_tag]')?.textContent ?? null })),
          }),
        },
      );
      for (const [from, v] of Object.entries(seen)) say('decoding', { name: m.name, from, ...v });
    }),
  );
}

async function main(fixture) {
  const server = await serve();
  const origin = `http://127.0.0.1:${server.address().port}`;
  if (args.mode === 'element-call') {
    try {
      return await mainElementCall(fixture, origin);
    } finally {
      server.close();
    }
  }
  try {
    await fixture.launchBrowser();
    const members = [];
    for (const m of spec.members) {
      const page = await fixture.newPage({ label: m.name, origin });
      await page.goto(`${origin}/`);
      await pageWait(page, () => !!window.t, undefined, { timeout, what: 'the page script', describe: () => location.href });
      members.push({ ...m, page });
    }
    // All join at once (each join's deadline is the page's).
    const joined = await Promise.all(members.map((m) => withDeadline(m.page.evaluate((m) => window.t.join(m), { url: m.url, jwt: m.jwt }), `${m.name} joining`)));
    members.forEach((m, i) => {
      m.identity = joined[i].identity;
      say('connected', { name: m.name, ...joined[i] });
    });
    await Promise.all(
      members.flatMap((m) =>
        members
          .filter((o) => o !== m)
          .map(async (o) => {
            const seen = await decoding(m.page, o.identity);
            say('decoding', { name: m.name, from: o.identity, ...seen });
          }),
      ),
    );
  } finally {
    server.close();
  }
}

/** Waits until `identity`'s camera has a size and `newFrames` more presented frames than when first seen. */
function decoding(page, identity) {
  return pageWait(
    page,
    ([identity, newFrames]) => {
      const rec = window.call?.videos?.[identity];
      if (!rec || rec.video.videoWidth === 0 || rec.frames === 0) return null;
      rec.base ??= rec.frames;
      if (rec.frames < rec.base + newFrames) return null;
      return { width: rec.video.videoWidth, height: rec.video.videoHeight, frames: rec.frames, since: rec.frames - rec.base };
    },
    [identity, newFrames],
    { timeout, what: `${identity}'s camera decoding (size > 0, ${newFrames} more frames)`, describe: describeCall },
  );
}

function withDeadline(promise, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${timeout} ms`)), timeout);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

const fixture = new Fixture('element-call-page');
try {
  await main(fixture);
} catch (error) {
  let logs = '';
  for (const page of fixture.pages) {
    const state = await page.evaluate(() => JSON.stringify(window.t?.describeCall?.() ?? window.host?.requests ?? null)).catch((e) => `(${e.message})`);
    logs += `\n--- state of ${page.label}: ${state}\n${pageLogs(page, page.label)}`;
  }
  process.stderr.write(`${error.stack ?? error}${logs}\n`);
  await fixture.close();
  process.exit(1);
}
await fixture.close();
process.exit(0);
