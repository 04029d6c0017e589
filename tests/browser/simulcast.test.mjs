// Simulcast and dynacast in Chromium: the page publishes its camera in three layers
// (320x180, 640x360, 1280x720) with adaptive stream and dynacast on. A viewer whose tile
// is made small receives a lower layer (the decoded videoWidth drops); the publisher is
// then told to pause the layers nobody watches, and its sender's encodings show it.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  expectDecoding,
  pageWait,
  tileSelector,
  useFixture,
} from './lib/harness.mjs';

const fx = useFixture('simulcast');

test('a tile made small receives a lower layer, and the publisher pauses the unwatched ones', { timeout: 180_000 }, async () => {
  await fx.run(scenario);
});

/** The decoded size of `identity`'s camera tile, once it decodes. */
function decodedWidth(page, identity) {
  return page.evaluate((sel) => document.querySelector(`${sel} video`)?.videoWidth ?? 0, tileSelector(identity));
}

/** Which of the publisher's camera encodings are active, by RID (dynacast acts on these). */
function activeEncodings(page) {
  return page.evaluate(() => {
    const track = window.tchapVisio.room.localParticipant.getTrackPublication('camera')?.track;
    const encodings = track?.sender?.getParameters().encodings ?? [];
    return Object.fromEntries(encodings.map((e) => [e.rid, e.active]));
  });
}

async function scenario() {
  const meeting = await fx.server.createMeeting('Simulcast');
  const people = [];
  // The viewer's window is large, so its tile of the other camera starts large.
  for (const [name, viewport] of [
    ['Alice', { width: 1280, height: 720 }],
    ['Bruno', { width: 1600, height: 900 }],
  ]) {
    people.push(await fx.join(meeting.link, name, { lang: 'fr', locale: 'fr-FR', viewport }));
  }
  const [alice, bruno] = people;
  await expectDecoding(bruno.page, [{ identity: alice.identity, source: 'camera' }], { newFrames: 10, timeout: 30_000 });

  // Large tile: wait for the layer it asks for to settle (above the lowest one).
  const large = await pageWait(
    bruno.page,
    (sel) => {
      const v = document.querySelector(`${sel} video`);
      return v && v.videoWidth > 320 ? v.videoWidth : null;
    },
    tileSelector(alice.identity),
    { timeout: 30_000, what: 'a layer above 320 wide in the large tile' },
  );
  const tile = await bruno.page.evaluate((sel) => {
    const r = document.querySelector(sel).getBoundingClientRect();
    return [Math.round(r.width), Math.round(r.height)];
  }, tileSelector(alice.identity));
  console.log(`large tile ${tile[0]}x${tile[1]}: decoded ${large} wide`);

  // Make the tile small: a small window. adaptiveStream reports the new size and the
  // server forwards a lower layer.
  const t0 = performance.now();
  await bruno.page.setViewportSize({ width: 400, height: 300 });
  const small = await pageWait(
    bruno.page,
    ([sel, large]) => {
      const v = document.querySelector(`${sel} video`);
      return v && v.videoWidth > 0 && v.videoWidth < large ? v.videoWidth : null;
    },
    [tileSelector(alice.identity), large],
    { timeout: 30_000, what: `the decoded width to drop below ${large}` },
  );
  const switched = performance.now() - t0;
  const smallTile = await bruno.page.evaluate((sel) => {
    const r = document.querySelector(sel).getBoundingClientRect();
    return [Math.round(r.width), Math.round(r.height)];
  }, tileSelector(alice.identity));
  console.log(`small tile ${smallTile[0]}x${smallTile[1]}: decoded ${small} wide, ${Math.round(switched)} ms after the resize`);
  // It keeps decoding on the lower layer.
  await expectDecoding(bruno.page, [{ identity: alice.identity, source: 'camera' }], { newFrames: 10, timeout: 20_000 });
  assert.ok((await decodedWidth(bruno.page, alice.identity)) < large);

  // Dynacast: nobody watches Alice's full layer any more, so she is told to pause it.
  await pageWait(alice.page, () => {
    const track = window.tchapVisio.room.localParticipant.getTrackPublication('camera')?.track;
    const f = track?.sender?.getParameters().encodings.find((e) => e.rid === 'f');
    return f && f.active === false;
  }, undefined, { timeout: 20_000, what: 'the publisher to pause its full layer (dynacast)' });
  console.log(`publisher encodings with a small viewer: ${JSON.stringify(await activeEncodings(alice.page))}`);

  // A large tile again: the full layer is wanted, resumed, and the decoded size grows back.
  await bruno.page.setViewportSize({ width: 1600, height: 900 });
  await pageWait(
    bruno.page,
    ([sel, small]) => {
      const v = document.querySelector(`${sel} video`);
      return v && v.videoWidth > small ? v.videoWidth : null;
    },
    [tileSelector(alice.identity), small],
    { timeout: 30_000, what: `the decoded width to grow above ${small} again` },
  );
  const encodings = await activeEncodings(alice.page);
  console.log(`publisher encodings with a large viewer again: ${JSON.stringify(encodings)}`);
  assert.equal(encodings.q, true, 'the low layer stays on');
}
