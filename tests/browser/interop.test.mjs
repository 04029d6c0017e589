// The page interoperates with other LiveKit clients: a participant on LiveKit's Python
// SDK (tests/integration/harness/lkpeer.py, publishing a synthetic camera and microphone)
// and two in Chromium see each other's video decode.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  expectDecoding,
  useFixture,
  waitFor,
} from './lib/harness.mjs';

const fx = useFixture('interop');

test('LiveKit Python SDK participant and two Chromium pages see each other', { timeout: 180_000 }, async () => {
  await fx.run(scenario);
});

async function scenario() {
  const { server } = fx;
  const meeting = await server.createMeeting('Interopérabilité');
  // The Python peer gets a token minted with the config's API key, as any LiveKit
  // backend would; the pages get theirs from the join endpoint.
  const pyIdentity = 'python-sdk';
  const peer = await fx.startPeer({
    name: 'py',
    url: server.livekitUrl,
    token: server.token(pyIdentity, meeting.id, { name: 'Python SDK' }),
  });

  const people = [];
  for (const name of ['Alice', 'Bruno']) people.push(await fx.join(meeting.link, name, { lang: 'fr', locale: 'fr-FR' }));
  const [alice, bruno] = people;

  // Chromium → Chromium and Python → Chromium.
  await expectDecoding(alice.page, [{ identity: bruno.identity, source: 'camera' }, { identity: pyIdentity, source: 'camera' }], { newFrames: 10, timeout: 30_000 });
  await expectDecoding(bruno.page, [{ identity: alice.identity, source: 'camera' }, { identity: pyIdentity, source: 'camera' }], { newFrames: 10, timeout: 30_000 });
  const pySize = await alice.page.evaluate(
    (id) => {
      const v = document.querySelector(`[data-testid=tile][data-identity="${id}"][data-source=camera] video`);
      return [v.videoWidth, v.videoHeight];
    },
    pyIdentity,
  );
  assert.deepEqual(pySize, [320, 180], 'the Python peer publishes 320x180');

  // Chromium → Python: decoded frames with a size, still growing.
  const decoded = async (min) =>
    peer.wait(
      (st) => [alice, bruno].every((p) => (st.remotes?.[p.identity]?.video_frames ?? 0) >= min && st.remotes[p.identity].width > 0) && st,
      { timeout: 30_000, what: `${min} decoded video frames from both browsers` },
    );
  const first = await decoded(10);
  const counts = Object.fromEntries([alice, bruno].map((p) => [p.identity, first.remotes[p.identity].video_frames]));
  await peer.wait(
    (st) => [alice, bruno].every((p) => st.remotes[p.identity].video_frames >= counts[p.identity] + 15),
    { timeout: 15_000, what: 'the browsers\' video to keep decoding in the Python peer' },
  );
  const st = peer.state();
  for (const p of [alice, bruno]) {
    const r = st.remotes[p.identity];
    console.log(`Python peer decodes ${p.name}: ${r.width}x${r.height}, ${r.video_frames} video frames, ${r.audio_loud} loud audio frames`);
    assert.equal(r.name, p.name, 'the Python SDK sees the name typed in the page');
  }
  // Audio too: the browsers' fake microphones (beeps) reach the Python SDK, and the
  // Python peer's sine reaches the pages (audio energy received on its microphone track
  // keeps growing: silence or concealment would not add any).
  await peer.wait((st) => [alice, bruno].every((p) => st.remotes[p.identity].audio_loud > 0), {
    timeout: 15_000,
    what: 'non-silent audio from both browsers',
  });
  for (const me of [alice, bruno]) {
    const energy = () =>
      me.page.evaluate(async (id) => {
        const track = window.tchapVisio.room.remoteParticipants.get(id)?.getTrackPublication('microphone')?.track;
        return (await track?.getReceiverStats())?.totalAudioEnergy ?? 0;
      }, pyIdentity);
    const before = await energy();
    await waitFor(async () => (await energy()) > before + 0.05, { timeout: 10_000, what: `${me.name}: audio energy from the Python peer` });
  }
}
