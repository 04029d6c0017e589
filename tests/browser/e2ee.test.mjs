// Media end-to-end encryption passes through the SFU untouched, as Element Call's
// MatrixRTC E2EE needs: the keys travel between clients (here: a passphrase the test
// gives them), the SFU only forwards what it cannot read.
//
// Three Chromium pages run livekit-client's own E2EE (ExternalE2EEKeyProvider, its
// `e2ee-worker` in a Worker, `room.setE2EEEnabled(true)`): not the meeting page (it has
// no E2EE), but a bare page served by this file (livekit-client's ESM bundle and worker
// from tests/browser/node_modules) that joins with a token minted with the server's API
// key, as interop.test.mjs does. Each publishes its fake camera (VP8, simulcast: 640x360
// and 320x180) and microphone.
//
//   1. A and B share the key: livekit-client reports the other's camera as encrypted
//      (TrackInfo.encryption, Participant.isEncrypted, ParticipantEncryptionStatusChanged)
//      and each decodes the other's camera: frames presented, a size, and the fake
//      camera's picture (see "Why" below).
//   2. B gets A's high layer, asks for the low one, then the high one again: the decoded
//      size follows (keyframe requests and the SFU's keyframe detection work on
//      encrypted frames) and the picture stays right.
//   3. C has a wrong key: livekit-client in C reports decryption errors for A, and C
//      presents none of A's frames although the SFU forwards A's packets to it; A and B
//      keep decoding each other, with no decryption error between them (and errors for C).
//
// The SFU's part: forward the frames as they are, and pass on in the TrackInfo what
// livekit-client sets decryption up from (the codec in mimeType, the publisher's
// AddTrackRequest.encryption); with either missing, a receiver does not decrypt.
//
// Why "frames advancing, videoWidth > 0" is not enough: livekit-client leaves a VP8
// frame's first bytes in the clear (10 for a keyframe: frame tag, start code, picture
// size), so a decoder fed ciphertext may still output frames of the right size, with
// garbage in them (livekit-client's own comment says so; Chromium 156's decoder was
// seen rejecting them instead). So the test also looks at the picture: Chromium's fake
// camera is a plain (0, 135, 0) green with a brighter disc in the middle.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import http from 'node:http';
import { createRequire } from 'node:module';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { useFixture, waitFor } from './lib/harness.mjs';

const fx = useFixture('e2ee');

const PASSPHRASE = 'tchap-visio e2ee test: the SFU never sees this';
const WRONG_PASSPHRASE = 'not the key the others use';

// ---------------------------------------------------------------------------------------
// In the page (these functions are written into the page's script as they are)
// ---------------------------------------------------------------------------------------

/**
 * An E2EE room (shared-key provider, livekit-client's worker) that connects and
 * publishes camera and microphone. `window.e2ee` records the encryption errors and
 * status changes livekit-client reports and, per remote camera, a <video> and the frames
 * it presented (requestVideoFrameCallback).
 */
async function join({ url, token, passphrase }) {
  const LK = window.LK;
  const t = (window.e2ee = { errors: [], status: {}, videos: {}, pageErrors: [] });
  // livekit-client throws from its own event handlers (e.g. a TrackInfo without the
  // codec): keep what reaches the page for the diagnostics.
  window.addEventListener('unhandledrejection', (e) => t.pageErrors.push(String(e.reason?.message ?? e.reason)));
  window.addEventListener('error', (e) => t.pageErrors.push(String(e.message)));
  const keyProvider = new LK.ExternalE2EEKeyProvider();
  await keyProvider.setKey(passphrase);
  const worker = new Worker('/lk/e2ee-worker.mjs', { type: 'module' });
  const room = new LK.Room({
    e2ee: { keyProvider, worker },
    // The layer is chosen by hand (setVideoQuality), not by the element's size.
    adaptiveStream: false,
    dynacast: false,
    videoCaptureDefaults: { resolution: LK.VideoPresets.h360.resolution },
    // Two layers, 640x360 and 320x180, at modest bit rates: Chromium's estimate of the
    // uplink starts at 300 kb/s and, on a busy machine, may stay there; both layers fit
    // in it. On a busy machine the encoder lowers the frame rate, not the resolution, so
    // the widths stay known.
    publishDefaults: {
      simulcast: true,
      videoCodec: 'vp8',
      videoEncoding: { maxBitrate: 250_000, maxFramerate: 15 },
      videoSimulcastLayers: [new LK.VideoPreset(320, 180, 60_000, 15)],
      degradationPreference: 'maintain-resolution',
    },
  });
  window.room = room;
  room.on(LK.RoomEvent.EncryptionError, (error, participant) => {
    t.errors.push({
      identity: participant?.identity ?? error?.participantIdentity ?? null,
      reason: error?.reason,
      message: String(error?.message ?? error),
    });
  });
  room.on(LK.RoomEvent.ParticipantEncryptionStatusChanged, (enabled, participant) => {
    t.status[participant?.identity ?? '?'] = enabled;
  });
  room.on(LK.RoomEvent.TrackSubscribed, (track, _publication, participant) => {
    if (track.kind !== 'video') {
      // Played, so that the receiver decodes it (and counts its energy).
      document.body.append(track.attach());
      return;
    }
    const video = document.createElement('video');
    video.muted = true;
    video.autoplay = true;
    video.playsInline = true;
    video.dataset.identity = participant.identity;
    document.body.append(video);
    track.attach(video);
    const rec = (t.videos[participant.identity] = { frames: 0 });
    const onFrame = () => {
      rec.frames += 1;
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
  });
  await room.setE2EEEnabled(true);
  try {
    await room.connect(url, token);
    await room.localParticipant.enableCameraAndMicrophone();
  } catch (error) {
    // Not connected: nothing more to see. Connected: an exception from one of
    // livekit-client's event handlers that ran meanwhile (a remote track it cannot set
    // decryption up for, say) lands here; the checks that follow say what is missing.
    if (room.state !== 'connected') throw error;
    t.pageErrors.push(String(error?.message ?? error));
  }
  return room.localParticipant.identity;
}

/**
 * What this page knows of `identity`'s camera: frames presented, decoded size, the
 * receiver's RTP counters, whether livekit-client calls it encrypted, the decryption
 * errors it reported for that participant, and the share of the picture that is the
 * fake camera's background green (on a 32x18 copy of the current frame).
 */
async function remoteCamera(identity) {
  const LK = window.LK;
  const t = window.e2ee;
  const participant = window.room.remoteParticipants.get(identity);
  const publication = participant?.getTrackPublication(LK.Track.Source.Camera);
  const video = document.querySelector(`video[data-identity=${JSON.stringify(identity)}]`);
  let inbound = null;
  const receiver = publication?.track?.receiver;
  if (receiver) {
    for (const s of (await receiver.getStats()).values()) {
      if (s.type === 'inbound-rtp' && s.kind === 'video') {
        inbound = { packets: s.packetsReceived ?? 0, framesReceived: s.framesReceived ?? 0, framesDecoded: s.framesDecoded ?? 0, keyFramesDecoded: s.keyFramesDecoded ?? 0 };
      }
    }
  }
  let background = null;
  if (video && video.videoWidth > 0) {
    const canvas = document.createElement('canvas');
    canvas.width = 32;
    canvas.height = 18;
    const g = canvas.getContext('2d', { willReadFrequently: true });
    g.drawImage(video, 0, 0, 32, 18);
    const d = g.getImageData(0, 0, 32, 18).data;
    let near = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i] < 40 && Math.abs(d[i + 1] - 135) < 40 && d[i + 2] < 40) near += 1;
    }
    background = Math.round((100 * near) / (d.length / 4)) / 100;
  }
  return {
    subscribed: !!publication?.track,
    trackInfoMimeType: publication?.trackInfo?.mimeType ?? null,
    trackInfoEncryption: publication?.trackInfo?.encryption ?? null,
    publicationEncrypted: publication?.isEncrypted ?? null,
    participantEncrypted: participant?.isEncrypted ?? null,
    statusEvent: t.status[identity] ?? null,
    frames: t.videos[identity]?.frames ?? 0,
    width: video?.videoWidth ?? 0,
    height: video?.videoHeight ?? 0,
    background,
    inbound,
    errors: t.errors.filter((e) => e.identity === identity).length,
  };
}

/** What this page receives of `identity`'s microphone: packets and audio energy. */
async function remoteMic(identity) {
  const publication = window.room.remoteParticipants.get(identity)?.getTrackPublication(window.LK.Track.Source.Microphone);
  const receiver = publication?.track?.receiver;
  if (!receiver) return { subscribed: false, packets: 0, energy: 0 };
  for (const s of (await receiver.getStats()).values()) {
    if (s.type === 'inbound-rtp' && s.kind === 'audio') {
      return { subscribed: true, encrypted: publication.isEncrypted, packets: s.packetsReceived ?? 0, energy: s.totalAudioEnergy ?? 0 };
    }
  }
  return { subscribed: true, encrypted: publication.isEncrypted, packets: 0, energy: 0 };
}

/**
 * The page's own E2EE state, the decryption errors it has seen (by participant) and
 * what its camera sends, by layer.
 */
async function localState() {
  const room = window.room;
  const errors = {};
  for (const e of window.e2ee.errors) errors[e.identity] = (errors[e.identity] ?? 0) + 1;
  const camera = room.localParticipant.getTrackPublication(window.LK.Track.Source.Camera);
  return {
    identity: room.localParticipant.identity,
    roomE2EE: room.isE2EEEnabled,
    statusEvent: window.e2ee.status[room.localParticipant.identity] ?? null,
    // The TrackInfo the server answered our AddTrackRequest (encryption: GCM) with.
    cameraTrackInfoEncryption: camera?.trackInfo?.encryption ?? null,
    cameraEncodings: camera?.track?.sender?.getParameters().encodings.map((e) => `${e.rid}:${e.active}`) ?? null,
    cameraSends: camera?.track?.sender
      ? [...(await camera.track.sender.getStats()).values()]
          .filter((s) => s.type === 'outbound-rtp')
          .map((s) => `${s.rid}:${s.frameWidth ?? 0}x${s.frameHeight ?? 0}@${Math.round(s.framesPerSecond ?? 0)} ${s.qualityLimitationReason ?? ''}`)
      : null,
    errors,
    lastErrors: window.e2ee.errors.slice(-2),
    pageErrors: window.e2ee.pageErrors.slice(-3),
  };
}

/** Asks the SFU for `identity`'s camera in `quality` ('LOW' or 'HIGH'). */
function setQuality(identity, quality) {
  const LK = window.LK;
  window.room.remoteParticipants.get(identity).getTrackPublication(LK.Track.Source.Camera).setVideoQuality(LK.VideoQuality[quality]);
  return true;
}

// ---------------------------------------------------------------------------------------
// The page's server: livekit-client's bundle and worker on 127.0.0.1 (a secure context,
// which WebCrypto needs). Both bundles are self-contained (no imports).
// ---------------------------------------------------------------------------------------

const LK_DIST = path.dirname(createRequire(import.meta.url).resolve('livekit-client'));
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>E2EE</title>
<script type="module">
import * as LK from '/lk/livekit-client.esm.mjs';
window.LK = LK;
${join}
${remoteCamera}
${remoteMic}
${localState}
${setQuality}
window.t = { join, remoteCamera, remoteMic, localState, setQuality };
</script>
<body></body>
`;
const FILES = {
  '/': { type: 'text/html; charset=utf-8', body: PAGE },
  '/lk/livekit-client.esm.mjs': { type: 'text/javascript', file: path.join(LK_DIST, 'livekit-client.esm.mjs') },
  '/lk/e2ee-worker.mjs': { type: 'text/javascript', file: path.join(LK_DIST, 'livekit-client.e2ee.worker.mjs') },
};

let pageServer;
let pageUrl;

before(async () => {
  pageServer = http.createServer((req, res) => {
    const entry = FILES[new URL(req.url, 'http://localhost').pathname];
    if (!entry) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': entry.type, 'cache-control': 'no-store' });
    res.end(entry.body ?? fs.readFileSync(entry.file));
  });
  await new Promise((resolve) => pageServer.listen(0, '127.0.0.1', resolve));
  pageUrl = `http://127.0.0.1:${pageServer.address().port}/`;
});

after(() => new Promise((resolve) => (pageServer ? pageServer.close(() => resolve()) : resolve())));

test('media E2EE through the SFU: the same key decodes, a wrong key does not', { timeout: 180_000 }, async () => {
  await fx.run(scenario);
});

// ---------------------------------------------------------------------------------------
// From the test
// ---------------------------------------------------------------------------------------

/** Calls `window.t[name](...args)` in `p`'s page. */
function call(p, name, ...args) {
  return p.page.evaluate(([name, args]) => window.t[name](...args), [name, args]);
}

/**
 * Polls `call(p, name, ...args)` until `check(value)` holds; at the deadline the error
 * carries the last value seen and the page's own state.
 */
async function waitInPage(p, [name, ...args], check, { timeout = 30_000, what }) {
  let last;
  try {
    return await waitFor(
      async () => {
        last = await call(p, name, ...args);
        return check(last) ? last : null;
      },
      { timeout, interval: 100, what: `${p.identity}: ${what}` },
    );
  } catch (error) {
    const local = await call(p, 'localState').catch((e) => `(${e.message})`);
    throw new Error(`${error.message}\n  last ${name}(${args.join(', ')}): ${JSON.stringify(last)}\n  ${p.identity}: ${JSON.stringify(local)}`);
  }
}

/** The pages that joined, by identity. */
const joined = new Map();

/** A page that joins `room` as `identity` with `passphrase`. */
async function joinE2EE(room, identity, passphrase) {
  const { server } = fx;
  const page = await fx.newPage({ label: identity, origin: new URL(pageUrl).origin });
  await page.goto(pageUrl);
  await page.waitForFunction(() => !!window.t, undefined, { timeout: 15_000 });
  assert.ok(await page.evaluate(() => window.LK.isE2EESupported()), 'livekit-client finds E2EE support (encoded transforms) in this Chromium');
  const p = { page, identity };
  const token = server.token(identity, room, { name: identity });
  try {
    assert.equal(await call(p, 'join', { url: server.livekitUrl, token, passphrase }), identity);
  } catch (error) {
    if (/MimeType missing from trackInfo/.test(error.message)) {
      throw new Error(`${identity}: the SFU sent a TrackInfo without mime_type, which livekit-client needs to set decryption up for a remote track (it threw, and left the room):\n${error.message}`);
    }
    throw error;
  }
  joined.set(identity, p);
  return p;
}

/**
 * Waits until `viewer` really decodes `identity`'s camera: `newFrames` more frames
 * presented than at the first look, a width in [minWidth, maxWidth], and the fake
 * camera's picture (more than half of it the background green). Returns the last look.
 */
async function expectDecrypted(viewer, identity, { newFrames = 15, minWidth = 1, maxWidth = Infinity, timeout = 30_000 } = {}) {
  const size = (r) => r.width >= minWidth && r.width <= maxWidth;
  try {
    const first = await waitInPage(viewer, ['remoteCamera', identity], (r) => r.frames > 0 && size(r), {
      timeout,
      what: `${identity}'s camera presenting frames ${minWidth}..${maxWidth} wide`,
    });
    return await waitInPage(viewer, ['remoteCamera', identity], (r) => r.frames >= first.frames + newFrames && size(r) && r.background > 0.5, {
      timeout,
      what: `${newFrames} more frames of ${identity}'s camera (${minWidth}..${maxWidth} wide) showing the fake camera's picture`,
    });
  } catch (error) {
    // What the publisher sends (its layers, and why the encoder limits them).
    const publisher = joined.get(identity);
    const sends = publisher ? await call(publisher, 'localState').catch((e) => `(${e.message})`) : '(unknown)';
    error.message += `\n  ${identity}: ${JSON.stringify(sends)}`;
    throw error;
  }
}

/** `viewer` sees `identity`'s camera as encrypted, in every way livekit-client says it. */
async function expectEncrypted(viewer, identity) {
  const r = await waitInPage(viewer, ['remoteCamera', identity], (r) => r.subscribed && r.publicationEncrypted !== null && r.statusEvent !== null, {
    timeout: 15_000,
    what: `${identity}'s camera subscribed and an encryption status for ${identity}`,
  });
  // livekit-client sets up a receiver's decryption from the TrackInfo the SFU sends:
  // the codec (mimeType: without it, E2EEManager.setupE2EEReceiver throws "MimeType
  // missing from trackInfo") and encryption, what the publisher put in its
  // AddTrackRequest (GCM = 1): a participant's frames are decrypted only when its tracks
  // say so.
  assert.match(String(r.trackInfoMimeType), /^video\/vp8$/i, `${viewer.identity}: ${identity}'s camera TrackInfo.mimeType is the codec: ${JSON.stringify(r)}`);
  assert.equal(r.trackInfoEncryption, 1, `${viewer.identity}: ${identity}'s camera TrackInfo.encryption is GCM (1): ${JSON.stringify(r)}`);
  assert.equal(r.publicationEncrypted, true, `${viewer.identity}: ${identity}'s camera publication isEncrypted`);
  assert.equal(r.participantEncrypted, true, `${viewer.identity}: ${identity} isEncrypted (all its tracks)`);
  assert.equal(r.statusEvent, true, `${viewer.identity}: ParticipantEncryptionStatusChanged(true) for ${identity}`);
}

async function scenario() {
  const meeting = await fx.server.createMeeting('Chiffrement de bout en bout');
  const room = meeting.id;
  const t0 = performance.now();
  const since = () => `${((performance.now() - t0) / 1000).toFixed(1)} s`;

  // 1. A and B share the key.
  const a = await joinE2EE(room, 'alice-e2ee', PASSPHRASE);
  const b = await joinE2EE(room, 'bruno-e2ee', PASSPHRASE);
  for (const p of [a, b]) {
    const local = await waitInPage(p, ['localState'], (s) => s.roomE2EE === true && s.cameraTrackInfoEncryption !== null, {
      timeout: 15_000,
      what: 'E2EE enabled for itself and its camera published',
    });
    console.log(`${p.identity}: e2ee ${local.roomE2EE}, own camera TrackInfo.encryption ${local.cameraTrackInfoEncryption}, encodings ${local.cameraEncodings}`);
    assert.equal(local.cameraTrackInfoEncryption, 1, `${p.identity}: the server's TrackInfo for its own camera keeps encryption GCM (1)`);
  }
  await expectEncrypted(a, b.identity);
  await expectEncrypted(b, a.identity);
  for (const [viewer, other] of [[a, b], [b, a]]) {
    const r = await expectDecrypted(viewer, other.identity);
    console.log(`${since()}: ${viewer.identity} decodes ${other.identity}: ${r.width}x${r.height}, ${r.frames} frames, ${Math.round(r.background * 100)}% background, ${JSON.stringify(r.inbound)}`);
  }
  // The microphones too: audio arrives and carries sound (the fake microphone's beeps)
  // while no frame fails to decrypt (the check at the end covers audio and video alike).
  for (const [viewer, other] of [[a, b], [b, a]]) {
    const first = await waitInPage(viewer, ['remoteMic', other.identity], (m) => m.packets > 0, { timeout: 15_000, what: `${other.identity}'s microphone arriving` });
    assert.equal(first.encrypted, true, `${viewer.identity}: ${other.identity}'s microphone publication isEncrypted`);
    const m = await waitInPage(viewer, ['remoteMic', other.identity], (m) => m.packets >= first.packets + 50 && m.energy > first.energy + 0.01, {
      timeout: 15_000,
      what: `sound from ${other.identity}'s microphone`,
    });
    console.log(`${since()}: ${viewer.identity} hears ${other.identity}: ${m.packets} packets, energy ${m.energy.toFixed(3)}`);
  }
  for (const p of [a, b]) {
    const { pageErrors } = await call(p, 'localState');
    assert.deepEqual(pageErrors, [], `${p.identity}: no exception in the page`);
  }

  // 2. Simulcast: B gets A's high layer (640 wide), asks for the low one (320 wide), then
  // the high one again. Each switch waits for a keyframe of the new layer, which the SFU
  // asks A for and finds in the encrypted stream (the VP8 frame tag stays in the clear).
  // Before C joins: C's decoder, fed nothing it can decode, asks for keyframes again and
  // again (A then sends one about every 0.5 s, the SFU's throttle), which costs A's
  // uplink the bit rate a higher layer needs.
  const layers = await call(a, 'localState');
  assert.ok(layers.cameraEncodings?.length >= 2, `${a.identity} publishes its camera in several layers: ${layers.cameraEncodings}`);
  await call(b, 'setQuality', a.identity, 'HIGH');
  const high = await expectDecrypted(b, a.identity, { minWidth: 321, newFrames: 10 });
  console.log(`${since()}: ${b.identity} on ${a.identity}'s high layer: ${high.width}x${high.height}`);
  await call(b, 'setQuality', a.identity, 'LOW');
  const low = await expectDecrypted(b, a.identity, { maxWidth: 320, newFrames: 10 });
  console.log(`${since()}: ${b.identity} asked for ${a.identity}'s low layer: ${low.width}x${low.height}, ${Math.round(low.background * 100)}% background`);
  await call(b, 'setQuality', a.identity, 'HIGH');
  const back = await expectDecrypted(b, a.identity, { minWidth: 321, newFrames: 10 });
  console.log(`${since()}: ${b.identity} asked for ${a.identity}'s high layer again: ${back.width}x${back.height}, ${Math.round(back.background * 100)}% background`);
  const afterSwitches = await call(b, 'localState');
  assert.equal(afterSwitches.errors[a.identity] ?? 0, 0, `${b.identity}: no decryption error for ${a.identity} across the layer switches`);

  // 3. C with a wrong key: the SFU forwards A's packets to C (they arrive), livekit-
  // client cannot decrypt them and says so, and C presents no frame of A. With the
  // shared-key provider a frame that fails to decrypt is dropped before the decoder
  // (failureTolerance -1, no ratcheting), so nothing can reach the screen: the strict
  // check (0 frames, 0 decoded, no size) holds, while B decodes A all along.
  const c = await joinE2EE(room, 'carole-wrong-key', WRONG_PASSPHRASE);
  await expectEncrypted(c, a.identity);
  const bBefore = await call(b, 'remoteCamera', a.identity);
  const cSeen = await waitInPage(c, ['remoteCamera', a.identity], (r) => r.errors >= 1 && (r.inbound?.packets ?? 0) >= 60, {
    timeout: 30_000,
    what: `decryption errors for ${a.identity} and 60 of its video packets received`,
  });
  const cState = await call(c, 'localState');
  console.log(`${since()}: ${c.identity} (wrong key) on ${a.identity}: ${cSeen.errors} decryption errors (last: ${JSON.stringify(cState.lastErrors.at(-1))}), ${JSON.stringify(cSeen.inbound)}, ${cSeen.frames} frames presented, ${cSeen.width} wide`);
  assert.equal(cSeen.frames, 0, `${c.identity} presents no frame of ${a.identity}'s camera`);
  assert.equal(cSeen.width, 0, `${c.identity} has no picture size for ${a.identity}'s camera`);
  assert.equal(cSeen.inbound.framesDecoded, 0, `${c.identity} decodes no frame of ${a.identity}'s camera`);
  // In the meantime A and B went on decoding each other, and each failed to decrypt C.
  const bDuring = await call(b, 'remoteCamera', a.identity);
  assert.ok(bDuring.frames > bBefore.frames, `${b.identity} kept presenting ${a.identity}'s frames while ${c.identity} could not (${bBefore.frames} → ${bDuring.frames})`);
  for (const [viewer, other] of [[a, b], [b, a]]) {
    const r = await expectDecrypted(viewer, other.identity, { newFrames: 10 });
    console.log(`${since()}: ${viewer.identity} still decodes ${other.identity} (${r.frames} frames, ${r.inbound.keyFramesDecoded} of them keyframes, ${Math.round(r.background * 100)}% background)`);
    await waitInPage(viewer, ['localState'], (s) => (s.errors[c.identity] ?? 0) >= 1, { timeout: 15_000, what: `a decryption error for ${c.identity}` });
  }
  for (const [viewer, other] of [[a, b], [b, a]]) {
    const s = await call(viewer, 'localState');
    assert.equal(s.errors[other.identity] ?? 0, 0, `${viewer.identity}: no decryption error for ${other.identity} (${JSON.stringify(s.errors)})`);
    assert.equal(s.errors.null ?? 0, 0, `${viewer.identity}: no decryption error without a participant (${JSON.stringify(s.lastErrors)})`);
  }
}
