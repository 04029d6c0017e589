// Run by tcp.test.mjs inside a network namespace of its own (`unshare --net`) where an
// nftables rule drops every UDP packet: the server, Chromium and this script share that
// namespace's loopback and nothing else. Two pages join a meeting and must see each
// other's video, which can then only have travelled over ICE-TCP. The server runs two
// shards sharing the one TCP port; a first meeting with one person takes the first
// shard, so the tested meeting lands on the second: its connections must be handed to
// that shard by the ufrag of their first STUN request. Prints one JSON line
// (`RESULT {...}`) with what it measured; exits non-zero on any failure.

import assert from 'node:assert/strict';
import dgram from 'node:dgram';

import { expectDecoding, selectedPairs, waitFor, withFixture } from './harness.mjs';

/** Sends one datagram; resolves with the error the kernel gave, or null if it went out. */
function udpSend(port) {
  return new Promise((resolve) => {
    const sock = dgram.createSocket('udp4');
    sock.send(Buffer.from('probe'), port, '127.0.0.1', (error) => {
      sock.close();
      resolve(error ?? null);
    });
  });
}

/** Bytes that only media explains: a STUN and DTLS exchange is a few kB. */
const MEDIA_BYTES = 20_000;

await withFixture('udp-blocked', async (fx) => {
  const server = await fx.startServer();
  // The namespace really blocks UDP: the kernel refuses the datagram.
  const refused = await udpSend(server.udpPort);
  assert.ok(refused, 'a UDP datagram left this namespace: the UDP block is not in place');

  await fx.launchBrowser();
  // Someone in another meeting first: the tested meeting goes to the least-loaded shard.
  const elsewhere = await server.createMeeting('Autre réunion');
  await fx.join(elsewhere.link, 'Chloé', { lang: 'fr', locale: 'fr-FR' });
  await waitFor(async () => (await server.metric('tchap_visio_sfu_shard_participants', { shard: 0 })) === 1, {
    what: 'Chloé on shard 0',
  });
  const meeting = await server.createMeeting('UDP bloqué');
  const people = [];
  for (const name of ['Alice', 'Bruno']) people.push(await fx.join(meeting.link, name, { lang: 'fr', locale: 'fr-FR' }));
  const [alice, bruno] = people;
  assert.equal(await server.metric('tchap_visio_sfu_shard_participants', { shard: 1 }), 2, 'the tested meeting is on shard 1');
  const bytesBefore = await server.metric('tchap_visio_sfu_tcp_bytes_total');
  const decoded = {
    alice: await expectDecoding(alice.page, [{ identity: bruno.identity, source: 'camera' }], { newFrames: 15, timeout: 45_000 }),
    bruno: await expectDecoding(bruno.page, [{ identity: alice.identity, source: 'camera' }], { newFrames: 15, timeout: 45_000 }),
  };
  const pairs = {
    alice: await selectedPairs(alice.page, bruno.identity),
    bruno: await selectedPairs(bruno.page, alice.identity),
  };
  for (const [who, { receive, send }] of Object.entries(pairs)) {
    for (const [direction, pair] of Object.entries({ receive, send })) {
      assert.ok(pair, `${who}: no selected candidate pair for ${direction}`);
      assert.equal(pair.local.protocol, 'tcp', `${who} ${direction}: local candidate ${JSON.stringify(pair)}`);
      assert.equal(pair.remote.protocol, 'tcp', `${who} ${direction}: remote candidate ${JSON.stringify(pair)}`);
      assert.equal(pair.remote.tcpType, 'passive', `${who} ${direction}: the server's candidate is passive`);
    }
    // More than ICE and DTLS alone (a few kB): the decoded video came this way.
    assert.ok(receive.bytesReceived > MEDIA_BYTES, `${who}: ${receive.bytesReceived} bytes received on the TCP pair`);
    assert.ok(send.bytesSent > MEDIA_BYTES, `${who}: ${send.bytesSent} bytes sent on the TCP pair`);
  }
  const bytesAfter = await server.metric('tchap_visio_sfu_tcp_bytes_total');
  const connections = await server.metric('tchap_visio_sfu_tcp_connections');
  assert.ok(bytesAfter > bytesBefore + MEDIA_BYTES, `the server counted ${bytesAfter - bytesBefore} TCP bytes while video decoded`);
  // Each page holds one peer connection (/rtc/v1), over TCP; two with ?pc=dual.
  assert.ok(connections >= 3, `${connections} ICE-TCP connections open on the server (Chloé's and the two tested)`);
  console.log(`RESULT ${JSON.stringify({ decoded, pairs, tcpBytes: bytesAfter, connections })}`);
});
