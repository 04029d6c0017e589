// The page's rejoin after losing its node (web/src/rejoin.ts), driven step by step with
// a virtual clock: no browser and no server, so each case runs in milliseconds. The
// whole path (a Chromium page, a node SIGKILLed) is left to the cluster tests; see
// tests/integration/test_cluster_effects.py for the same steps with LiveKit's SDK.

import assert from 'node:assert/strict';
import { readFileSync, writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';

const root = fileURLToPath(new URL('../../', import.meta.url));
const require = createRequire(join(root, 'web', 'package.json'));
const ts = require('typescript');
const source = readFileSync(join(root, 'web', 'src', 'rejoin.ts'), 'utf8');
const { outputText } = ts.transpileModule(source, {
  compilerOptions: { module: ts.ModuleKind.ESNext, target: ts.ScriptTarget.ES2022 },
});
const dir = mkdtempSync(join(tmpdir(), 'rejoin-'));
writeFileSync(join(dir, 'rejoin.mjs'), outputText);
const { rejoinLoop } = await import(pathToFileURL(join(dir, 'rejoin.mjs')).href);

const DEAD = 'ws://node-a';
const LIVE = 'ws://node-b';
const TIMING = { firstMs: 1000, everyMs: 1500, giveUpMs: 60_000 };

/** A page on node A; `answers(t)` is what the shared address says at virtual time t. */
function page(answers, { recoversAt = Infinity, gaveUpAt = Infinity, failMoves = 0 } = {}) {
  const log = { joins: [], moves: [] };
  let now = 0;
  let moveFailures = failMoves;
  const steps = {
    join: async () => {
      log.joins.push(now);
      return answers(now);
    },
    currentUrl: () => DEAD,
    recovered: () => now >= recoversAt,
    gaveUp: () => now >= gaveUpAt,
    move: async (url, token) => {
      if (moveFailures-- > 0) throw new Error('connect failed');
      log.moves.push({ at: now, url, token });
    },
    wait: async (ms) => { now += ms; },
    now: () => now,
  };
  return { steps, log, time: () => now };
}

test('a dead node: the page moves once the shared address names a live node', async () => {
  // The room moves after three missed heartbeats (6 s).
  const p = page((t) => ({ url: t < 6000 ? DEAD : LIVE, token: `tok-${t}` }));
  assert.equal(await rejoinLoop(p.steps, TIMING), 'moved');
  assert.equal(p.log.moves.length, 1);
  assert.equal(p.log.moves[0].url, LIVE);
  assert.ok(p.time() < 8000, `moved at ${p.time()} ms, within 2 s of the room moving`);
  assert.ok(p.log.joins.length <= 6, `asked ${p.log.joins.length} times`);
});

test('a blip livekit-client resumes on its own costs no join', async () => {
  const p = page(() => ({ url: LIVE, token: 't' }), { recoversAt: 500 });
  assert.equal(await rejoinLoop(p.steps, TIMING), 'recovered');
  assert.deepEqual(p.log.joins, []);
  assert.deepEqual(p.log.moves, []);
});

test('livekit-client gave up on a node that lives: joined again there', async () => {
  const p = page(() => ({ url: DEAD, token: 'fresh' }), { gaveUpAt: 2500 });
  assert.equal(await rejoinLoop(p.steps, TIMING), 'moved');
  assert.deepEqual(p.log.moves.map((m) => [m.url, m.token]), [[DEAD, 'fresh']]);
});

test('the shared address unreachable for a while, then a live node', async () => {
  const p = page((t) => {
    if (t < 5000) throw new TypeError('fetch failed');
    return { url: LIVE, token: 't' };
  });
  assert.equal(await rejoinLoop(p.steps, TIMING), 'moved');
  assert.equal(p.log.moves[0].url, LIVE);
});

test('a connect that fails is tried again with the next answer', async () => {
  const p = page(() => ({ url: LIVE, token: 't' }), { failMoves: 1 });
  assert.equal(await rejoinLoop(p.steps, TIMING), 'moved');
  assert.equal(p.log.joins.length, 2);
});

test('refused (removed, ended, sent to the lobby): no more tries', async () => {
  const p = page(() => null);
  assert.equal(await rejoinLoop(p.steps, TIMING), 'refused');
  assert.equal(p.log.joins.length, 1);
});

test('no live node for a minute: the page gives up', async () => {
  const p = page(() => ({ url: DEAD, token: 't' }));
  assert.equal(await rejoinLoop(p.steps, TIMING), 'timed-out');
  assert.ok(p.time() >= 60_000 && p.time() < 62_000, `${p.time()}`);
  assert.deepEqual(p.log.moves, []);
});
