// One person on the meeting page in Chromium, getting in by the meeting's access level,
// for tests/integration/test_page_access.py (which drives the Matrix side: the code sent
// from Tchap, the ✅, the moderators' decisions). Not a node:test file.
//
//   node tests/browser/access-page.mjs --scenario identify --link URL --name NAME [--start guest]
//     Chooses « Je suis membre du salon » (or, with --start guest, joins as a guest first,
//     is refused as a non-member and identifies from the refusal), shows the code, waits
//     for the confirmation step, then for the meeting with its « identifié·e » badge.
//     Progress: {"event":"refusal","text"} {"event":"code","code","command","copied"}
//     {"event":"confirming"} {"event":"joined","identity","verifiedAs"} {"event":"badge","matrixId"}
//     and, with --then removed, the screen saying why it was sent out: {"event":"removed","kind","title"}.
//
//   With --moderate GUEST (the identified person moderates the meeting): waits for the
//   moderator attribute {"event":"moderator"} (or {"event":"no-moderation"} when the
//   server has no moderation API for the page, and exits), then for GUEST in the waiting
//   room panel {"event":"guest-waiting","number"}, lets them in {"event":"guest-in",
//   "identity"}, mutes their microphone {"event":"guest-muted"}, removes them
//   {"event":"guest-removed"} and, once the line "end" comes on stdin, ends the meeting
//   for everyone {"event":"ended"}.
//
//   node tests/browser/access-page.mjs --scenario lobby --link URL --name NAME --expect admitted|refused [--then removed]
//     Joins as a guest, waits in the waiting room: {"event":"lobby","number"}; then either
//     {"event":"joined","identity"} (and with --then removed, the screen saying why:
//     {"event":"removed","kind","title"}) or {"event":"refused","title"}.
//
// Screenshots go to target/browser-screenshots/access-*.png (desktop and phone widths),
// each screen checked by axe-core first (no serious or critical violation).
// Every wait has a deadline (--timeout seconds each). Exits 0 after the last event, 1 on
// any failure (the reason and the page's console on stderr).

import { parseArgs } from 'node:util';

import { expectAccessible } from './lib/axe.mjs';
import { Fixture, openPrejoin, pageLogs, pageWait, screenshot } from './lib/harness.mjs';

const { values: args } = parseArgs({
  options: {
    scenario: { type: 'string' },
    link: { type: 'string' },
    name: { type: 'string' },
    start: { type: 'string', default: 'member' },
    expect: { type: 'string', default: 'admitted' },
    then: { type: 'string', default: '' },
    moderate: { type: 'string', default: '' },
    timeout: { type: 'string', default: '90' },
  },
});
const timeout = Number(args.timeout) * 1000;
const say = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
const PHONE = { width: 390, height: 844 };

/** Screenshots at the page's width, then at a phone's, then back; axe-core at both. */
async function shots(page, name) {
  await expectAccessible(page, `the ${name} screen`);
  await screenshot(page, `access-${name}`);
  const size = page.viewportSize();
  await page.setViewportSize(PHONE);
  await expectAccessible(page, `the ${name} screen on a phone`);
  await screenshot(page, `access-${name}-phone`);
  await page.setViewportSize(size);
}

/** In the page: what the access steps and error screens show (for failure messages). */
function describeAccess() {
  const step = document.querySelector('[data-testid=identify], [data-testid=lobby], [data-testid=refusal]');
  return {
    url: location.href,
    step: step ? { testid: step.dataset.testid, state: step.dataset.state, text: step.textContent.slice(0, 300) } : null,
    status: document.querySelector('[role=status]')?.textContent,
    errors: [...document.querySelectorAll('[data-testid=error]')].map((e) => [e.dataset.error, e.textContent.slice(0, 200)]),
    room: window.tchapVisio?.room?.state,
    seen: window.__accessSeen,
  };
}

/**
 * Before any of the page's scripts: records every access step state the page shows
 * (the « identifié·e » step can be on screen for a moment only before the meeting).
 */
function recordSteps() {
  window.__accessSeen = [];
  const note = () => {
    for (const el of document.querySelectorAll('[data-testid=identify], [data-testid=lobby]')) {
      const entry = `${el.dataset.testid}:${el.dataset.state}`;
      if (window.__accessSeen.at(-1) !== entry) window.__accessSeen.push(entry);
    }
    const who = document.querySelector('[data-testid=identified-as]');
    if (who && !window.__accessVerifiedAs) window.__accessVerifiedAs = who.dataset.userId;
  };
  new MutationObserver(note).observe(document, { subtree: true, childList: true, attributes: true, attributeFilter: ['data-state'] });
}

async function waitConnected(page) {
  return pageWait(
    page,
    () => {
      const room = window.tchapVisio?.room;
      if (room?.state !== 'connected' || !room.localParticipant.sid) return null;
      if (!document.querySelector('[data-testid=toggle-mic]')) return null;
      return { identity: room.localParticipant.identity };
    },
    undefined,
    { timeout, what: 'the room to be connected', describe: describeAccess },
  );
}

async function identify(page) {
  if (args.start === 'guest') {
    await page.locator('[data-testid=join-as-guest]').check();
    await page.locator('button[data-testid=join]').click();
    const text = await pageWait(page, () => document.querySelector('[data-testid=refusal][data-reason=members_only] [data-testid=refusal-text]')?.textContent ?? null, undefined,
      { timeout, what: 'the members-only refusal', describe: describeAccess });
    // The focus is on the refusal's heading.
    const focused = await page.evaluate(() => document.activeElement?.closest('[data-testid=refusal]') !== null && document.activeElement?.tagName === 'H2');
    say('refusal', { text, focused });
    await shots(page, 'members-only');
    await page.locator('[data-testid=refusal-identify]').click();
  } else {
    await page.locator('[data-testid=join-as-member]').check();
    await page.locator('button[data-testid=join]').click();
  }
  const shown = await pageWait(page, () => {
    const code = document.querySelector('[data-testid=identify][data-state=pending] [data-testid=identify-code]')?.textContent;
    const command = document.querySelector('[data-testid=identify-command]')?.textContent;
    return code && command ? { code, command, focused: document.activeElement?.tagName === 'H2' } : null;
  }, undefined, { timeout, what: 'the identity code', describe: describeAccess });
  await page.locator('[data-testid=identify-command-copy]').click();
  const copied = await pageWait(page, () => document.querySelector('[data-testid=identify-copied]')?.textContent || null, undefined,
    { timeout: 5000, what: 'the copy feedback', describe: describeAccess });
  await shots(page, 'code');
  say('code', { ...shown, copied });

  await pageWait(page, () => window.__accessSeen?.includes('identify:confirming') || null, undefined,
    { timeout, what: 'the confirmation step', describe: describeAccess });
  if (await page.locator('[data-testid=identify][data-state=confirming]').count()) await shots(page, 'confirming');
  say('confirming', { title: await page.evaluate(() => document.querySelector('[data-testid=identify] h2')?.textContent ?? null) });

  const { identity } = await waitConnected(page);
  const verifiedAs = await page.evaluate(() => window.__accessVerifiedAs ?? null);
  say('joined', { identity, verifiedAs, seen: await page.evaluate(() => window.__accessSeen) });
  const matrixId = await pageWait(page, () => document.querySelector('[data-testid=tile] [data-testid=identified-badge]')?.dataset.matrixId ?? null, undefined,
    { timeout, what: 'the « identifié·e » badge on the own tile', describe: describeAccess });
  await page.locator('[data-testid=toggle-participants]').click();
  const listed = await pageWait(page, () => document.querySelector('[data-testid=participant-item] [data-testid=identified-badge]')?.textContent ?? null, undefined,
    { timeout: 5000, what: 'the badge in the participant list', describe: describeAccess });
  await shots(page, 'identified-meeting');
  say('badge', { matrixId, listed });
  if (args.moderate) await moderate(page, args.moderate);
  else if (args.then === 'removed') await waitRemoved(page);
}

/** The moderator's tools on the page, used on the guest named `guest`. */
async function moderate(page, guest) {
  const slug = new URL(args.link).pathname.split('/').pop();
  const route = await page.evaluate(async (slug) => (await fetch(`/api/v1/meetings/${slug}/lobby`)).status, slug);
  if (route === 404 || route === 405) {
    say('no-moderation', { status: route });
    return;
  }
  await pageWait(page, () => window.tchapVisio?.room?.localParticipant?.attributes?.['tchap.moderator'] === 'true' || null, undefined,
    { timeout: 20_000, what: 'the moderator attribute', describe: describeAccess });
  await pageWait(page, () => document.querySelector('[data-testid=moderation]:not([hidden]) [data-testid=end-for-all]') !== null || null, undefined,
    { timeout: 10_000, what: 'the moderation tools in the participant list', describe: describeAccess });
  say('moderator');

  const number = await pageWait(page, (guest) => {
    const item = [...document.querySelectorAll('[data-testid=lobby-guest]')].find((el) => el.textContent.includes(guest));
    return item ? Number(item.dataset.number) : null;
  }, guest, { timeout, what: `${guest} in the waiting room panel`, describe: describeAccess });
  await shots(page, 'moderator-lobby');
  say('guest-waiting', { number });
  await page.locator('[data-testid=lobby-guest]', { hasText: guest }).locator('[data-testid=lobby-admit]').click();

  const identity = await pageWait(page, (guest) => {
    const room = window.tchapVisio.room;
    return [...room.remoteParticipants.values()].find((p) => p.name === guest && p.getTrackPublication('microphone'))?.identity ?? null;
  }, guest, { timeout, what: `${guest} in the meeting with a microphone`, describe: describeAccess });
  say('guest-in', { identity });

  const row = page.locator(`[data-testid=participant-item][data-identity=${JSON.stringify(identity)}]`);
  await row.locator('[data-testid=mod-mute-mic]').click();
  await pageWait(page, (identity) => window.tchapVisio.room.remoteParticipants.get(identity)?.getTrackPublication('microphone')?.isMuted || null, identity,
    { timeout, what: `${guest}'s microphone muted`, describe: describeAccess });
  say('guest-muted');

  await row.locator('[data-testid=mod-remove]').click();
  await page.locator('[data-testid=confirm-dialog][open] [data-testid=confirm-yes]').waitFor({ timeout: 5000 });
  await shots(page, 'moderator-confirm');
  await page.locator('[data-testid=confirm-yes]').click();
  await pageWait(page, (identity) => !window.tchapVisio.room.remoteParticipants.has(identity) || null, identity,
    { timeout, what: `${guest} gone from the meeting`, describe: describeAccess });
  say('guest-removed');

  // The test says when (once the guest's page showed why it was removed): one line on stdin.
  await nextLine('end');
  await page.locator('[data-testid=end-for-all]').click();
  await page.locator('[data-testid=confirm-yes]').click();
  await pageWait(page, () => document.querySelector('[data-testid=error][data-error=ended]') !== null || null, undefined,
    { timeout, what: 'the "meeting ended" screen', describe: describeAccess });
  say('ended');
}

async function lobby(page) {
  await page.locator('[data-testid=join-as-guest]').check();
  await page.locator('button[data-testid=join]').click();
  const number = await pageWait(page, () => document.querySelector('[data-testid=lobby][data-state=waiting] [data-testid=lobby-number]')?.textContent ?? null, undefined,
    { timeout, what: 'the waiting room', describe: describeAccess });
  const focused = await page.evaluate(() => document.activeElement?.closest('[data-testid=lobby]') !== null && document.activeElement?.tagName === 'H2');
  await shots(page, 'lobby');
  say('lobby', { number: Number(number), focused });

  if (args.expect === 'refused') {
    const title = await pageWait(page, () => document.querySelector('[data-testid=error][data-error=lobby-refused] h1')?.textContent ?? null, undefined,
      { timeout, what: 'the refusal screen', describe: describeAccess });
    await shots(page, 'lobby-refused');
    say('refused', { title });
    return;
  }
  const { identity } = await waitConnected(page);
  say('joined', { identity });
  if (args.then === 'removed') await waitRemoved(page);
}

/** The screen saying why the page was sent out of the meeting: {"event":"removed","kind","title"}. */
async function waitRemoved(page) {
  const removed = await pageWait(
    page,
    () => {
      const el = document.querySelector('[data-testid=error]');
      const kinds = ['removed', 'left-room', 'banned', 'access-changed'];
      return el && kinds.includes(el.dataset.error) ? { kind: el.dataset.error, title: el.querySelector('h1')?.textContent } : null;
    },
    undefined,
    { timeout, what: 'the removed screen', describe: describeAccess },
  );
  await shots(page, `removed-${removed.kind}`);
  say('removed', removed);
}

/** Waits for the line `word` on stdin (from the test driving this script), with the deadline. */
function nextLine(word) {
  return new Promise((resolve, reject) => {
    let buffered = '';
    const timer = setTimeout(() => reject(new Error(`no ${JSON.stringify(word)} on stdin within ${timeout} ms`)), timeout);
    const onData = (chunk) => {
      buffered += chunk;
      if (buffered.split('\n').some((line) => line.trim() === word)) {
        clearTimeout(timer);
        process.stdin.off('data', onData);
        process.stdin.pause();
        resolve();
      }
    };
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', onData);
    process.stdin.resume();
  });
}

const fixture = new Fixture('access-page');
let page;
try {
  await fixture.launchBrowser();
  page = await fixture.newPage({ label: args.name, origin: new URL(args.link).origin });
  await page.addInitScript(recordSteps);
  await openPrejoin(page, args.link);
  await page.locator('input#display-name').fill(args.name);
  if (args.scenario === 'identify') await identify(page);
  else if (args.scenario === 'lobby') await lobby(page);
  else throw new Error(`unknown --scenario ${args.scenario}`);
} catch (error) {
  process.stderr.write(`${error.stack ?? error}\n${page ? pageLogs(page, args.name) : ''}\n`);
  await fixture.close();
  process.exit(1);
}
await fixture.close();
process.exit(0);
