// A throttled link: one viewer's downstream is shaped to a few hundred kbit/s by the
// kernel (an HTB class with a bounded FIFO on the loopback of a network namespace of the
// test's own, `unshare --net`; lib/throttled-link.mjs runs the server, Chromium and the
// scenario there). The SFU must send that viewer a lower simulcast layer than an
// unthrottled one, its video must keep moving, and the layer climbs back once the
// throttle is lifted. Both signalling paths: `/rtc` (two peer connections) and `/rtc/v1`.

import assert from 'node:assert/strict';
import path from 'node:path';
import { test } from 'node:test';

import { ROOT, runInNetNamespace } from './lib/harness.mjs';

async function runThrottled(pc) {
  const script = path.join(ROOT, 'tests', 'browser', 'lib', 'throttled-link.mjs');
  // Every packet on loopback goes through HTB's default class (no limit); the script adds
  // the slow class and the filter for one page's port. `set -e`: without the qdisc the
  // scenario would run unshaped and prove nothing.
  // A veth pair gives the namespace an address besides loopback and a default route: the
  // server advertises it, and the Python SDK (which ignores loopback candidates) uses it;
  // packets to a local address still travel over loopback, through the qdisc.
  const shell = `set -e
ip link set lo up
ip link add tv0 type veth peer name tv1
ip addr add 10.77.0.1/24 dev tv0
ip link set tv0 up
ip link set tv1 up
ip route add default via 10.77.0.2 dev tv0
tc qdisc add dev lo root handle 1: htb default 10 r2q 10000
tc class add dev lo parent 1: classid 1:10 htb rate 10gbit
exec "${process.execPath}" "${script}" --pc ${pc}`;
  const { code, stdout, stderr, result } = await runInNetNamespace(shell, 280_000);
  assert.equal(code, 0, `the throttled-link scenario failed (exit ${code}):\n${stdout}\n${stderr.slice(-4000)}`);
  assert.ok(result, `no RESULT line:\n${stdout}`);
  console.log(`throttled link (${pc}): ${JSON.stringify(result)}`);
  assert.ok(result.held.lowerSeconds >= 8, `${result.held.lowerSeconds} s of 10 on a lower layer`);
  assert.ok(result.held.fps > 0);
}

test('over a throttled link (/rtc, two peer connections) a lower layer is sent and video keeps moving', { timeout: 300_000 }, () => runThrottled('dual'));

test('over a throttled link (/rtc/v1, one peer connection) a lower layer is sent and video keeps moving', { timeout: 300_000 }, () => runThrottled('single'));
