// One participant on the meeting page in Chromium, for the bridge's integration test
// (tests/integration/test_bridge.py), which drives the Matrix side. Not a node:test file.
//
//   node tests/browser/bridge-page.mjs --link URL --name NAME --say TEXT --expect TEXT
//
// Joins from the pre-join screen, sends TEXT in the meeting chat, waits for a chat
// message whose text is --expect (from the Matrix thread), then for the "meeting ended"
// screen. Progress goes to stdout, one JSON object per line:
//   {"event":"joined","identity":...} {"event":"sent"} {"event":"received","author":...}
//   {"event":"ended"}
// Exits 0 after "ended", 1 on any failure (with the reason on stderr).

import { parseArgs } from 'node:util';

import { pageWait, runJoinedPage } from './lib/harness.mjs';

const { values: args } = parseArgs({
  options: {
    link: { type: 'string' },
    name: { type: 'string' },
    say: { type: 'string' },
    expect: { type: 'string' },
    timeout: { type: 'string', default: '120' },
  },
});
const timeout = Number(args.timeout) * 1000;
const say = (event, fields = {}) => process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);

await runJoinedPage({ link: args.link, name: args.name }, async ({ page, identity }) => {
  say('joined', { identity });

  await page.locator('[data-testid=toggle-chat]').click();
  await page.locator('[data-testid=chat-input]').fill(args.say);
  await page.locator('[data-testid=chat-send]').click();
  say('sent');

  const author = await pageWait(
    page,
    (text) => [...document.querySelectorAll('[data-testid=chat-message]')].find((m) => m.textContent.includes(text))?.dataset.author ?? null,
    args.expect,
    { timeout, what: `the chat message ${JSON.stringify(args.expect)}`, describe: () => [...document.querySelectorAll('[data-testid=chat-message]')].map((m) => [m.dataset.author, m.textContent]) },
  );
  say('received', { author });

  await pageWait(page, () => document.querySelector('[data-testid=error][data-error=ended]') !== null, undefined, {
    timeout,
    what: 'the "meeting ended" screen',
  });
  say('ended');
});
