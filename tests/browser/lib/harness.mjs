// What the browser tests start and drive: the tchap-visio binary with a config of its
// own, Debian's Chromium through playwright-core, LiveKit's Python SDK as an extra
// participant (tests/integration/harness/lkpeer.py), and helpers that wait on conditions
// with deadlines (never a sleep as synchronisation). A test file gets all of it through
// one fixture (`useFixture`, `withFixture`, `runJoinedPage`, at the end of this file),
// which starts what it asks for and stops it, keeping the work directory on failure.
//
// Environment:
//   TCHAP_VISIO_BIN   the binary under test (default target/debug/tchap-visio); never built here
//   CHROMIUM          the browser (default /usr/bin/chromium)
//   KEEP_WORKDIR=1    keep each test's temporary directory (config, database, logs)

import { spawn, execFile } from 'node:child_process';
import crypto from 'node:crypto';
import dgram from 'node:dgram';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import { chromium } from 'playwright-core';

const execFileP = promisify(execFile);

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const BIN = path.resolve(ROOT, process.env.TCHAP_VISIO_BIN || 'target/debug/tchap-visio');
export const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
/** Screenshots the tests write for people to look at (not committed: target/ is ignored). */
export const SCREENSHOT_DIR = path.join(ROOT, 'target', 'browser-screenshots');
const EXAMPLE_CONFIG = path.join(ROOT, 'config', 'example-config.yaml');
const PYTHON = path.join(ROOT, '.venv', 'bin', 'python');

// ---------------------------------------------------------------------------------------
// Children: everything started here is stopped at the end, also when a test fails or
// the process is interrupted.
// ---------------------------------------------------------------------------------------

const children = new Set();

function track(child) {
  children.add(child);
  // scripts/test.sh kills what is listed there when it exits (this process killed, say).
  if (process.env.TCHAP_VISIO_TEST_PIDFILE && child.pid) {
    fs.appendFileSync(process.env.TCHAP_VISIO_TEST_PIDFILE, `${child.pid}\n`);
  }
  child.once('exit', () => children.delete(child));
  return child;
}

function killAll() {
  for (const child of children) {
    try {
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}

process.once('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, () => {
    killAll();
    process.exit(130);
  });
}

/** Waits for `child` to exit; SIGTERM, then SIGKILL after `timeoutMs`. Returns the exit code or signal. */
export async function stopChild(child, timeoutMs = 10_000) {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode;
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  try {
    return await exited;
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/**
 * Polls `condition` (sync or async) until it returns something truthy and returns that.
 * An exception from `condition` counts as "not yet" and is reported at the deadline.
 */
/**
 * Runs `shell` (bash) in a network namespace of its own (`unshare --net`), its output
 * passed on as it comes; the scenario it starts bounds its own waits, `timeoutMs` only
 * stops a hung namespace. Resolves to the exit code and the output, with the scenario's
 * `RESULT {...}` line parsed (`result`, or null).
 */
export async function runInNetNamespace(shell, timeoutMs) {
  const child = spawn('unshare', ['--net', '--', 'bash', '-c', shell], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: process.env,
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d) => {
    stdout += d;
  });
  child.stderr.on('data', (d) => {
    stderr += d;
    process.stderr.write(d);
  });
  const code = await new Promise((resolve) => {
    const timer = setTimeout(() => stopChild(child, 5_000), timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      resolve(code ?? signal);
    });
  });
  const line = stdout.split('\n').find((l) => l.startsWith('RESULT '));
  const result = line ? JSON.parse(line.slice('RESULT '.length)) : null;
  return { code, stdout, stderr, result };
}

export async function waitFor(condition, { timeout = 15_000, interval = 50, what = 'a condition' } = {}) {
  const deadline = performance.now() + timeout;
  let lastError;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value;
    } catch (error) {
      lastError = error;
    }
    if (performance.now() >= deadline) {
      const detail = lastError ? ` (last error: ${lastError.message ?? lastError})` : '';
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${detail}`);
    }
    await new Promise((resolve) => setTimeout(resolve, interval));
  }
}

// ---------------------------------------------------------------------------------------
// Ports, work directories
// ---------------------------------------------------------------------------------------

/** The SFU's shards in the servers the tests start: more than one, so that rooms on
 * different engines and ICE-TCP handed to the right one are always exercised. */
export const SHARDS = 2;

export function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

/** Binds a UDP port on 127.0.0.1; resolves with the socket, or null if it is taken. */
function bindUdp(port) {
  return new Promise((resolve) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', () => resolve(null));
    sock.bind(port, '127.0.0.1', () => resolve(sock));
  });
}

/** The first of `count` consecutive free UDP ports (the SFU's shards listen on one each). */
export async function freeUdpPorts(count) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const first = await freeUdpPort();
    if (first + count - 1 > 65535) continue;
    const held = [];
    for (let i = 0; i < count; i++) {
      const sock = await bindUdp(first + i);
      if (!sock) break;
      held.push(sock);
    }
    await Promise.all(held.map((sock) => new Promise((resolve) => sock.close(resolve))));
    if (held.length === count) return first;
  }
  throw new Error(`no ${count} consecutive free UDP ports`);
}

export function makeWorkdir(name) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `tchap-visio-browser-${name}-`));
}

export function removeWorkdir(dir) {
  if (process.env.KEEP_WORKDIR) return;
  fs.rmSync(dir, { recursive: true, force: true });
}

export function tail(file, lines = 60) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-lines).join('\n');
  } catch {
    return `(${file} does not exist)`;
  }
}

// ---------------------------------------------------------------------------------------
// The config: config/example-config.yaml with a few keys replaced in place
// ---------------------------------------------------------------------------------------

/**
 * Sets `section.key` (or a top-level `key`) in the example config's text. The example is
 * a flat two-level YAML file; values are written as JSON, which YAML reads as flow
 * scalars, sequences and mappings. A key missing from its section is added to it.
 */
export function setYaml(text, dotted, value) {
  const lines = text.split('\n');
  const rendered = JSON.stringify(value);
  const parts = dotted.split('.');
  if (parts.length === 1) {
    const i = lines.findIndex((l) => l.startsWith(`${parts[0]}:`));
    if (i < 0) lines.push(`${parts[0]}: ${rendered}`);
    else lines[i] = `${parts[0]}: ${rendered}`;
    return lines.join('\n');
  }
  if (parts.length !== 2) throw new Error(`setYaml: only section.key paths (${dotted})`);
  const [section, key] = parts;
  const start = lines.findIndex((l) => l.startsWith(`${section}:`));
  if (start < 0) {
    lines.push(`${section}:`, `  ${key}: ${rendered}`);
    return lines.join('\n');
  }
  let end = lines.length;
  for (let i = start + 1; i < lines.length; i++) {
    if (/^[A-Za-z"]/.test(lines[i])) {
      end = i;
      break;
    }
  }
  const at = lines.slice(start + 1, end).findIndex((l) => l.startsWith(`  ${key}:`));
  if (at < 0) lines.splice(start + 1, 0, `  ${key}: ${rendered}`);
  else lines[start + 1 + at] = `  ${key}: ${rendered}`;
  return lines.join('\n');
}

// ---------------------------------------------------------------------------------------
// The tchap-visio binary
// ---------------------------------------------------------------------------------------

export class Server {
  /**
   * Writes a config in `dir`, registers it (tokens), starts `run -c config.yaml` and waits
   * for `/health`. `config` holds extra `section.key` values (e.g. `sfu.ice_servers`).
   * No Synapse: the homeserver address is a closed port, and the service retries quietly.
   */
  static async start(dir, { config = {}, language = 'fr' } = {}) {
    if (!fs.existsSync(BIN)) {
      throw new Error(`tchap-visio binary not found at ${BIN}: build it (cargo build) or set TCHAP_VISIO_BIN`);
    }
    fs.mkdirSync(dir, { recursive: true });
    const server = new Server(dir);
    await server.writeConfig(config, language);
    await server.run();
    return server;
  }

  constructor(dir) {
    this.dir = dir;
    this.configPath = path.join(dir, 'config.yaml');
    this.registrationPath = path.join(dir, 'registration.yaml');
    this.logPath = path.join(dir, 'tchap-visio.log');
    this.proc = null;
  }

  async writeConfig(extra, language) {
    this.port = await freeTcpPort();
    // Two shards (two engines, two UDP ports) whatever this machine's cores.
    this.udpPort = await freeUdpPorts(SHARDS);
    const closedPort = await freeTcpPort();
    this.url = `http://127.0.0.1:${this.port}`;
    this.host = `127.0.0.1:${this.port}`;
    this.livekitUrl = `ws://127.0.0.1:${this.port}`;
    this.metricsUrl = () => `http://127.0.0.1:${this.metricsPort}/metrics`;
    this.apiKey = 'devkey';
    // 48 characters (the SFU wants secrets of at least 32).
    this.apiSecret = crypto.randomBytes(36).toString('base64url');
    const values = {
      'homeserver.address': `http://127.0.0.1:${closedPort}`,
      'appservice.address': this.url,
      'appservice.hostname': '127.0.0.1',
      'appservice.port': this.port,
      'appservice.public_address': this.url,
      'database.uri': `sqlite://${path.join(this.dir, 'tchap-visio.db')}`,
      'sfu.udp_port': this.udpPort,
      'sfu.shards': SHARDS,
      'sfu.tcp_port': await freeTcpPort(),
      // Empty: this host's primary address and 127.0.0.1 (Chromium uses loopback with
      // --allow-loopback-in-peer-connection; the Python SDK ignores loopback candidates).
      'sfu.advertised_ip': '',
      'sfu.keys': { [this.apiKey]: this.apiSecret },
      'logging.level': 'info',
      'metrics.port': (this.metricsPort = await freeTcpPort()),
      language,
      ...extra,
    };
    let text = fs.readFileSync(EXAMPLE_CONFIG, 'utf8');
    for (const [key, value] of Object.entries(values)) text = setYaml(text, key, value);
    fs.writeFileSync(this.configPath, text);
    await this.cli(['generate-registration', '-c', this.configPath, '-r', this.registrationPath]);
  }

  /** Runs the binary to completion; returns its stdout (throws with its output on failure). */
  async cli(args) {
    try {
      const { stdout } = await execFileP(BIN, args, { cwd: this.dir, timeout: 60_000 });
      return stdout;
    } catch (error) {
      throw new Error(`tchap-visio ${args.join(' ')} failed (${error.code ?? error.signal}):\n${error.stdout ?? ''}${error.stderr ?? ''}`);
    }
  }

  async run() {
    const log = fs.openSync(this.logPath, 'a');
    this.proc = track(
      spawn(BIN, ['run', '-c', this.configPath], {
        cwd: this.dir,
        stdio: ['ignore', log, log],
        env: { ...process.env, RUST_BACKTRACE: '1', NO_COLOR: '1' },
      }),
    );
    fs.closeSync(log);
    await waitFor(
      async () => {
        if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
          throw Object.assign(new Error(`tchap-visio exited (${this.proc.exitCode ?? this.proc.signalCode}):\n${this.logs()}`), { fatal: true });
        }
        const r = await fetch(`${this.url}/health`).catch(() => null);
        return r?.status === 200;
      },
      { timeout: 30_000, interval: 50, what: `tchap-visio /health on ${this.url}` },
    ).catch((error) => {
      throw new Error(`${error.message}\n${this.logs()}`);
    });
  }

  /** `meeting create --title …`: {title, link, slug, id}. */
  async createMeeting(title) {
    const out = await this.cli(['meeting', 'create', '--title', title, '-c', this.configPath]);
    const link = /^link:\s*(\S+)/m.exec(out)?.[1];
    const id = /^id:\s*(\S+)/m.exec(out)?.[1];
    if (!link || !id || !out.includes('Meeting created:')) throw new Error(`unexpected output of meeting create:\n${out}`);
    return { title, link, slug: link.slice(link.lastIndexOf('/m/') + 3), id };
  }

  /** The sum of a Prometheus series over the series carrying `labels` (0 when absent). */
  async metric(name, labels = {}) {
    const r = await fetch(this.metricsUrl());
    if (!r.ok) throw new Error(`/metrics answered ${r.status}`);
    let total = 0;
    for (const line of (await r.text()).split('\n')) {
      const m = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (!m || m[1] !== name) continue;
      const series = m[2] ?? '';
      if (Object.entries(labels).every(([k, v]) => series.includes(`${k}=${JSON.stringify(String(v))}`))) total += Number(m[3]);
    }
    return total;
  }

  /** A LiveKit access token signed with the config's API key (HS256 JWT; mintToken's options). */
  token(identity, room, { name, ttlSeconds = 3600, video } = {}) {
    return mintToken(this.apiKey, this.apiSecret, { identity, room, name, ttlSeconds, video });
  }

  logs(lines = 60) {
    return `--- tchap-visio log (${this.logPath}):\n${tail(this.logPath, lines)}`;
  }

  async stop() {
    if (!this.proc) return null;
    const code = await stopChild(this.proc, 10_000);
    this.proc = null;
    return code;
  }
}

/**
 * A LiveKit access token: HS256 JWT, `iss` = API key, `sub` = identity, a roomJoin grant
 * on `room` (or the `video` grant given instead).
 */
export function mintToken(key, secret, { identity, room, name, ttlSeconds = 3600, video }) {
  const now = Math.floor(Date.now() / 1000);
  const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
  const header = b64({ alg: 'HS256', typ: 'JWT' });
  const claims = {
    iss: key,
    sub: identity,
    nbf: now - 10,
    exp: now + ttlSeconds,
    video: video ?? { roomJoin: true, room, canPublish: true, canSubscribe: true, canPublishData: true },
  };
  if (name) claims.name = name;
  const payload = b64(claims);
  const signature = crypto.createHmac('sha256', secret).update(`${header}.${payload}`).digest('base64url');
  return `${header}.${payload}.${signature}`;
}

// ---------------------------------------------------------------------------------------
// LiveKit's Python SDK as a participant (tests/integration/harness/lkpeer.py)
// ---------------------------------------------------------------------------------------

export class PythonPeer {
  /**
   * Starts `python -m harness.lkpeer … --publish` and waits until it has joined;
   * `extraArgs` go to lkpeer as they are (e.g. `--simulcast --size 1280x720`).
   */
  static async start(dir, { url, token, name, publish = true, timeout = 30_000, extraArgs = [] }) {
    if (!fs.existsSync(PYTHON)) throw new Error(`${PYTHON} not found: run scripts/setup-venv.sh (scripts/test.sh does)`);
    const peer = new PythonPeer(dir, name);
    const args = ['-m', 'harness.lkpeer', '--url', url, '--token', token, '--state', peer.statePath, '--connect-timeout', String(timeout / 1000)];
    if (publish) args.push('--publish');
    args.push(...extraArgs);
    const log = fs.openSync(peer.logPath, 'a');
    peer.proc = track(
      spawn(PYTHON, args, {
        cwd: path.join(ROOT, 'tests', 'integration'),
        // stdin stays open: its end tells the peer to leave.
        stdio: ['pipe', log, log],
        env: { ...process.env, PYTHONUNBUFFERED: '1' },
      }),
    );
    fs.closeSync(log);
    await peer.wait((st) => {
      if (st.phase === 'failed') throw Object.assign(new Error(`lkpeer ${name} could not connect: ${st.error}`), { fatal: true });
      return st.phase === 'connected' && st.sid ? st : null;
    }, { timeout: timeout + 10_000, what: 'the Python peer to join' });
    return peer;
  }

  constructor(dir, name) {
    this.name = name;
    this.dir = path.join(dir, `lkpeer-${name}`);
    fs.mkdirSync(this.dir, { recursive: true });
    this.statePath = path.join(this.dir, 'state.json');
    this.logPath = path.join(this.dir, 'peer.log');
  }

  state() {
    try {
      return JSON.parse(fs.readFileSync(this.statePath, 'utf8'));
    } catch {
      return {};
    }
  }

  async wait(cond, { timeout = 20_000, what = 'a condition' } = {}) {
    const deadline = performance.now() + timeout;
    for (;;) {
      const st = this.state();
      let value;
      try {
        value = Object.keys(st).length ? cond(st) : null;
      } catch (error) {
        if (error.fatal) throw new Error(`${error.message}\n${this.logs()}`);
        throw error;
      }
      if (value) return value;
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) {
        throw new Error(`lkpeer ${this.name} exited (${this.proc.exitCode ?? this.proc.signalCode}) while waiting for ${what}\n${this.logs()}`);
      }
      if (performance.now() >= deadline) {
        throw new Error(`lkpeer ${this.name}: timed out after ${timeout} ms waiting for ${what}\n${this.logs()}`);
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }

  logs() {
    return `--- lkpeer ${this.name} log:\n${tail(this.logPath, 40)}\n--- state: ${JSON.stringify(this.state()).slice(0, 3000)}`;
  }

  /** Leaves (end of stdin), then SIGTERM/SIGKILL if it lingers. */
  async close() {
    if (!this.proc) return null;
    try {
      this.proc.stdin.end();
    } catch {
      // already closed
    }
    const proc = this.proc;
    this.proc = null;
    if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode ?? proc.signalCode;
    const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve(code ?? signal)));
    const timer = setTimeout(() => proc.kill('SIGTERM'), 10_000);
    const killer = setTimeout(() => proc.kill('SIGKILL'), 15_000);
    try {
      return await exited;
    } finally {
      clearTimeout(timer);
      clearTimeout(killer);
    }
  }
}

// ---------------------------------------------------------------------------------------
// Chromium
// ---------------------------------------------------------------------------------------

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  // libwebrtc ignores loopback interfaces without it; the SFU is on 127.0.0.1.
  '--allow-loopback-in-peer-connection',
  // No request to the internet from the browser itself.
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
  // Several pages play media at once: none of them may be throttled as "in the background".
  '--disable-background-timer-throttling',
  '--disable-renderer-backgrounding',
  '--disable-backgrounding-occluded-windows',
  '--autoplay-policy=no-user-gesture-required',
];

/** Launches Chromium with `args` (default CHROMIUM_ARGS). */
export async function launchBrowser({ args = CHROMIUM_ARGS } = {}) {
  if (!fs.existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: scripts/test-browser.sh installs Debian's chromium`);
  // playwright-core gives every launch a fresh temporary profile (user data dir).
  return chromium.launch({ executablePath: CHROMIUM, args, timeout: 60_000 });
}

/**
 * A context (a separate "browser profile": own storage, own fake camera) and its page.
 * `mobile`: a phone (mobile viewport meta, touch screen, coarse pointer).
 */
export async function newPage(browser, { locale = 'fr-FR', viewport = { width: 1280, height: 720 }, origin, mobile = false } = {}) {
  const context = await browser.newContext({ locale, viewport, isMobile: mobile, hasTouch: mobile });
  if (origin) await context.grantPermissions(['camera', 'microphone'], { origin });
  const page = await context.newPage();
  page.consoleLines = [];
  page.on('console', (msg) => {
    page.consoleLines.push(`[${msg.type()}] ${msg.text()}`);
    if (page.consoleLines.length > 200) page.consoleLines.shift();
  });
  page.on('pageerror', (error) => page.consoleLines.push(`[pageerror] ${error.message}`));
  return page;
}

export function pageLogs(page, label = 'page') {
  return `--- console of ${label}:\n${(page.consoleLines ?? []).slice(-40).join('\n')}`;
}

/**
 * page.waitForFunction with a deadline and, when it passes, an error that says what the
 * page looked like (`describe` runs in the page and returns something JSON-able).
 */
export async function pageWait(page, fn, arg, { timeout = 15_000, what = 'a condition', describe = describeTiles, polling = 50 } = {}) {
  try {
    const handle = await page.waitForFunction(fn, arg, { timeout, polling });
    return await handle.jsonValue();
  } catch (error) {
    let state = '';
    try {
      state = JSON.stringify(await page.evaluate(describe));
    } catch (e) {
      state = `(could not describe the page: ${e.message})`;
    }
    throw new Error(`${page.label ?? 'page'}: ${what}: ${error.message.split('\n')[0]}\n  page state: ${state}`);
  }
}

/** In the page: the tiles with their identity, source, video size and decoded frames. */
export function describeTiles() {
  const room = window.tchapVisio?.room;
  return {
    url: location.href,
    roomState: room?.state,
    identity: room?.localParticipant?.identity,
    remotes: room ? [...room.remoteParticipants.values()].map((p) => p.identity) : null,
    tiles: [...document.querySelectorAll('[data-testid=tile]')].map((tile) => {
      const v = tile.querySelector('video');
      return {
        identity: tile.dataset.identity,
        source: tile.dataset.source,
        muted: !!tile.querySelector('[data-testid=muted-icon]'),
        width: v?.videoWidth,
        frames: v?.getVideoPlaybackQuality?.().totalVideoFrames,
        paused: v?.paused,
      };
    }),
    errors: [...document.querySelectorAll('[data-testid=error]')].map((e) => e.dataset.error),
  };
}

/** CSS selector of a tile. */
export function tileSelector(identity, source = 'camera') {
  return `[data-testid=tile][data-identity=${JSON.stringify(identity)}][data-source=${JSON.stringify(source)}]`;
}

/**
 * Waits until each of `tiles` ([{identity, source}]) shows a video that decodes: a size,
 * then at least `newFrames` more decoded frames than when first seen. Returns the
 * frames counted at the end.
 */
export async function expectDecoding(page, tiles, { newFrames = 5, timeout = 20_000 } = {}) {
  const what = tiles.map((t) => `${t.identity}/${t.source}`).join(', ');
  // The baseline lives in the page (under a key of its own), so that one polling function
  // does both steps without a round trip. (No eval in the page: its CSP forbids it.)
  const key = `decode-${crypto.randomUUID()}`;
  return pageWait(
    page,
    ([tiles, newFrames, key]) => {
      const bases = ((window.__tchapVisioTests ??= {})[key] ??= {});
      const out = {};
      let ready = true;
      for (const { identity, source } of tiles) {
        const sel = `[data-testid=tile][data-identity=${JSON.stringify(identity)}][data-source=${JSON.stringify(source)}] video`;
        const v = document.querySelector(sel);
        const name = `${identity}/${source}`;
        if (!v || v.videoWidth === 0) return null;
        const frames = v.getVideoPlaybackQuality().totalVideoFrames;
        if (frames === 0) return null;
        bases[name] ??= frames;
        out[name] = { frames, since: frames - bases[name], width: v.videoWidth, height: v.videoHeight };
        if (frames < bases[name] + newFrames) ready = false;
      }
      return ready ? out : null;
    },
    [tiles, newFrames, key],
    { timeout, what: `video from ${what} decoding (size > 0, ${newFrames} more decoded frames)` },
  );
}

/** Opens the meeting link: pre-join screen with the title and a camera preview that plays. */
export async function openPrejoin(page, link, { lang, title } = {}) {
  const url = lang ? `${link}?lang=${lang}` : link;
  await page.goto(url);
  await pageWait(
    page,
    (title) => {
      const el = document.querySelector('[data-testid=meeting-title]');
      const video = document.querySelector('video[data-testid=preview]');
      return el && (title === undefined || el.textContent.trim() === title) && video && video.videoWidth > 0;
    },
    title,
    { timeout: 20_000, what: 'the pre-join screen (title and camera preview)' },
  );
}

/** Types the name and clicks Join; returns once the room is connected: {identity, sid, tJoin}. */
export async function joinFromPrejoin(page, name) {
  await page.locator('input#display-name').fill(name);
  const tJoin = performance.now();
  await page.locator('button[data-testid=join]').click();
  const joined = await pageWait(
    page,
    () => {
      const room = window.tchapVisio?.room;
      if (room?.state !== 'connected' || !room.localParticipant.sid) return null;
      if (!document.querySelector('[data-testid=toggle-mic]')) return null;
      return { identity: room.localParticipant.identity, sid: room.localParticipant.sid };
    },
    undefined,
    { timeout: 20_000, what: 'the room to be connected after Join' },
  );
  page.label = `${name} (${joined.identity})`;
  return { ...joined, tJoin };
}

/**
 * In the page: the selected ICE candidate pair of the connection carrying `identity`'s
 * camera to this page (receiver) and of this page's own camera (sender): {receive, send},
 * each null when there is none yet.
 */
export async function selectedPairs(page, identity) {
  return page.evaluate(async (identity) => {
    const pair = async (report) => {
      const stats = [...report.values()];
      const transport = stats.find((s) => s.type === 'transport' && s.selectedCandidatePairId);
      const selected = transport
        ? stats.find((s) => s.id === transport.selectedCandidatePairId)
        : stats.find((s) => s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded');
      if (!selected) return null;
      const local = stats.find((s) => s.id === selected.localCandidateId);
      const remote = stats.find((s) => s.id === selected.remoteCandidateId);
      return {
        local: { protocol: local?.protocol, tcpType: local?.tcpType, address: local?.address },
        remote: { protocol: remote?.protocol, tcpType: remote?.tcpType, address: remote?.address, port: remote?.port },
        bytesReceived: selected.bytesReceived,
        bytesSent: selected.bytesSent,
      };
    };
    const room = window.tchapVisio.room;
    const remoteTrack = room.remoteParticipants.get(identity)?.getTrackPublication('camera')?.track;
    const localTrack = room.localParticipant.getTrackPublication('camera')?.track;
    return {
      receive: remoteTrack?.receiver ? await pair(await remoteTrack.receiver.getStats()) : null,
      send: localTrack?.sender ? await pair(await localTrack.sender.getStats()) : null,
    };
  }, identity);
}

export async function screenshot(page, name) {
  fs.mkdirSync(SCREENSHOT_DIR, { recursive: true });
  await page.screenshot({ path: path.join(SCREENSHOT_DIR, `${name}.png`) });
}

/** Runs `body`; when it throws, prints the server log and the pages' consoles first. */
export async function withDiagnostics(getSources, body) {
  try {
    return await body();
  } catch (error) {
    try {
      const { server, pages = [], peers = [] } = getSources();
      const parts = [];
      if (server) parts.push(server.logs(80));
      for (const page of pages) if (page) parts.push(pageLogs(page, page.label));
      for (const peer of peers) if (peer) parts.push(peer.logs());
      process.stderr.write(`\n${parts.join('\n')}\n`);
    } catch {
      // the diagnostics themselves failed: the error below is what matters
    }
    throw error;
  }
}

// ---------------------------------------------------------------------------------------
// The fixture: what one test (or test file, or page script) starts, and its tear-down
// ---------------------------------------------------------------------------------------

/**
 * A work directory (made when first needed), the servers, the Chromium, the pages and
 * the Python peers a test started. `run` runs a test body (on failure it prints the
 * logs and keeps the work directory); `close` stops everything, peers first.
 */
export class Fixture {
  constructor(name) {
    this.name = name;
    this.servers = [];
    this.pages = [];
    this.peers = [];
    this.browser = null;
    this.failed = false;
    this.workdir = null;
  }

  /** The work directory (tchap-visio-browser-NAME-… under the temporary directory). */
  get dir() {
    this.workdir ??= makeWorkdir(this.name);
    return this.workdir;
  }

  /** The first server started. */
  get server() {
    return this.servers[0];
  }

  /** Starts a server (Server.start's options) in the work directory, or in `subdir` of it. */
  async startServer({ subdir, ...options } = {}) {
    const server = await Server.start(subdir ? path.join(this.dir, subdir) : this.dir, options);
    this.servers.push(server);
    return server;
  }

  /** Launches the Chromium the pages open in (launchBrowser's options). */
  async launchBrowser(options) {
    this.browser = await launchBrowser(options);
    return this.browser;
  }

  /** A new context and page (newPage's options); `label` names it in the diagnostics. */
  async newPage({ label, ...options } = {}) {
    const page = await newPage(this.browser, options);
    if (label !== undefined) page.label = label;
    this.pages.push(page);
    return page;
  }

  /**
   * A new page that opens `link` (openPrejoin's `lang` and `title`) and joins as `name`:
   * {page, name, identity, sid, tJoin}. The other options are newPage's.
   */
  async join(link, name, { lang, title, ...pageOptions } = {}) {
    const page = await this.newPage({ label: name, ...pageOptions });
    await openPrejoin(page, link, { lang, title });
    return { page, name, ...(await joinFromPrejoin(page, name)) };
  }

  /** A LiveKit Python SDK participant (PythonPeer.start's options). */
  async startPeer(options) {
    const peer = await PythonPeer.start(this.dir, options);
    this.peers.push(peer);
    return peer;
  }

  /**
   * Runs `body(this)`; when it throws, prints the logs (the latest server's, the pages'
   * consoles, the peers'), marks the fixture failed and rethrows.
   */
  async run(body) {
    return withDiagnostics(
      () => ({ server: this.servers.at(-1), pages: this.pages, peers: this.peers }),
      async () => {
        try {
          return await body(this);
        } catch (error) {
          this.failed = true;
          throw error;
        }
      },
    );
  }

  /** Stops the peers, Chromium and the servers; removes the work directory unless a run failed. */
  async close() {
    for (const peer of this.peers) await peer.close();
    await this.browser?.close().catch(() => {});
    for (const server of this.servers) await server.stop();
    if (!this.workdir) return;
    if (!this.failed) removeWorkdir(this.workdir);
    else process.stderr.write(`work directory kept: ${this.workdir}\n`);
  }
}

/**
 * The fixture shared by a node:test file's tests: before them, a server (`server`:
 * Server.start's options, or false for none) and Chromium; after them, `close`.
 * Each test runs its body with `fixture.run(...)`.
 */
export function useFixture(name, { server = {}, browser = true } = {}) {
  const fixture = new Fixture(name);
  before(async () => {
    if (server) await fixture.startServer(server);
    if (browser) await fixture.launchBrowser();
  });
  after(() => fixture.close());
  return fixture;
}

/** A fixture for one body: `body(fixture)` in `run`, then `close`, whatever happened. */
export async function withFixture(name, body) {
  const fixture = new Fixture(name);
  try {
    return await fixture.run(body);
  } finally {
    await fixture.close();
  }
}

/**
 * For the page scripts that the Python tests run (not node:test files): one Chromium
 * page joins `link` as `name` from the pre-join screen (`lang` as in openPrejoin), then
 * `body(joined)` ({page, name, identity, …}) does the rest. Exits 0 when it returns, 1
 * when anything fails, with the error and the page's console on stderr.
 */
export async function runJoinedPage({ link, name, lang }, body) {
  const fixture = new Fixture('page-script');
  try {
    await fixture.launchBrowser();
    await body(await fixture.join(link, name, { lang, origin: new URL(link).origin }));
  } catch (error) {
    const page = fixture.pages[0];
    process.stderr.write(`${error.stack ?? error}\n${page ? pageLogs(page, name) : ''}\n`);
    await fixture.close();
    process.exit(1);
  }
  await fixture.close();
  process.exit(0);
}
