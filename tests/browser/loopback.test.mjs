// The demo's media listen on 127.0.0.1 only (scripts/demo.sh sets `sfu.bind_ip`). An
// ordinary browser runs without --allow-loopback-in-peer-connection, so it offers no
// loopback candidate: this checks that it still connects, sending from this machine's
// other address to 127.0.0.1 (on Linux that traffic stays inside the machine), and that
// video flows both ways. Needs a network interface besides loopback, as any desktop has.

import assert from 'node:assert/strict';
import os from 'node:os';
import { test } from 'node:test';

import { CHROMIUM_ARGS, expectDecoding, selectedPairs, withFixture } from './lib/harness.mjs';

const hasOtherInterface = Object.values(os.networkInterfaces())
  .flat()
  .some((a) => a && !a.internal && a.family === 'IPv4');

test('media on 127.0.0.1 only: Chromium without the loopback flag connects and video flows', { timeout: 180_000, skip: !hasOtherInterface && 'no network interface besides loopback' }, async () => {
  await withFixture('loopback', async (fx) => {
    const server = await fx.startServer({ config: { 'sfu.bind_ip': '127.0.0.1' } });
    const args = CHROMIUM_ARGS.filter((a) => a !== '--allow-loopback-in-peer-connection');
    assert.equal(args.length, CHROMIUM_ARGS.length - 1, 'the flag this test leaves out is gone');
    await fx.launchBrowser({ args });
    const meeting = await server.createMeeting('Boucle locale');
    const people = [];
    for (const name of ['Alice', 'Bruno']) people.push(await fx.join(meeting.link, name, { lang: 'fr', locale: 'fr-FR' }));
    const [alice, bruno] = people;
    await expectDecoding(alice.page, [{ identity: bruno.identity, source: 'camera' }], { newFrames: 10, timeout: 45_000 });
    await expectDecoding(bruno.page, [{ identity: alice.identity, source: 'camera' }], { newFrames: 10, timeout: 45_000 });
    const { receive } = await selectedPairs(alice.page, bruno.identity);
    const pair = receive && { local: receive.local.address, remote: receive.remote.address };
    assert.ok(pair, 'no selected candidate pair');
    assert.equal(pair.remote, '127.0.0.1', `the server's only address: ${JSON.stringify(pair)}`);
    // Without the flag Chromium has no loopback candidate of its own.
    assert.ok(pair.local && !pair.local.startsWith('127.'), `local candidate ${JSON.stringify(pair)}`);
    console.log(`selected pair: ${JSON.stringify(pair)}`);
  });
});
