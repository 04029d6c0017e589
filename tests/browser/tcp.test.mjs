// ICE over TCP: with UDP blocked, Chromium still connects, over the
// SFU's passive TCP candidate, and media flows. The block is real: lib/udp-blocked.mjs
// runs the server, Chromium and the scenario inside a network namespace of their own
// (`unshare --net`, loopback only) where an nftables rule drops every UDP packet. Nothing
// changes outside that namespace, and it disappears with its last process.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';

import { ROOT, runInNetNamespace } from './lib/harness.mjs';

// Everything UDP leaving any socket in the namespace is dropped (loopback is the only
// interface, so this covers server and browser alike); TCP is untouched.
const RULES = `
table inet tchap_visio_udp_blocked {
  chain output {
    type filter hook output priority 0; policy accept;
    meta l4proto udp counter drop
  }
}
`;

test('with UDP blocked, Chromium connects over ICE-TCP and video flows both ways', { timeout: 240_000 }, async () => {
  const script = path.join(ROOT, 'tests', 'browser', 'lib', 'udp-blocked.mjs');
  // `set -e`: a namespace without loopback or without the rule must fail, not run on UDP.
  const shell = `set -e
ip link set lo up
nft -f - <<'EOF'
${RULES}
EOF
exec "${process.execPath}" "${script}"`;
  const { code, stdout, stderr, result } = await runInNetNamespace(shell, 220_000);
  assert.equal(code, 0, `the UDP-blocked scenario failed (exit ${code}):\n${stdout}\n${stderr.slice(-4000)}`);
  assert.ok(result, `no RESULT line:\n${stdout}`);
  console.log(`over TCP: ${JSON.stringify(result.pairs)}; server counted ${result.tcpBytes} TCP bytes on ${result.connections} connections`);
  for (const who of ['alice', 'bruno']) {
    assert.equal(result.pairs[who].receive.local.protocol, 'tcp');
    assert.equal(result.pairs[who].send.local.protocol, 'tcp');
  }
});
