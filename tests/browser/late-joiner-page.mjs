// A late joiner on the meeting page in Chromium, for the bridge's integration test
// (tests/integration/test_bridge.py), which writes the earlier chat on the Matrix side
// and in the meeting first. Not a node:test file.
//
//   node tests/browser/late-joiner-page.mjs --link URL --name NAME --expect TEXT [--expect TEXT…]
//
// Joins from the pre-join screen, opens the chat and waits until every --expect text is
// in a chat message, without anything being sent. Prints one JSON line, the chat as
// shown (in order): {"event":"chat","messages":[{id, author, origin, text, strong, links}]}
// Exits 0 then, 1 on any failure (with the reason on stderr).

import { parseArgs } from 'node:util';

import { pageWait, runJoinedPage } from './lib/harness.mjs';

const { values: args } = parseArgs({
  options: {
    link: { type: 'string' },
    name: { type: 'string' },
    expect: { type: 'string', multiple: true, default: [] },
    timeout: { type: 'string', default: '60' },
  },
});
const timeout = Number(args.timeout) * 1000;

await runJoinedPage({ link: args.link, name: args.name, lang: 'fr' }, async ({ page }) => {
  await page.locator('[data-testid=toggle-chat]').click();
  const messages = await pageWait(
    page,
    (expected) => {
      const shown = [...document.querySelectorAll('[data-testid=chat-message]')].map((m) => ({
        id: m.dataset.id,
        author: m.dataset.author,
        origin: m.dataset.origin,
        mark: m.querySelector('[data-testid=chat-origin]')?.textContent ?? null,
        text: m.querySelector('.chat-text')?.textContent ?? '',
        strong: [...m.querySelectorAll('.chat-text strong')].map((s) => s.textContent),
      }));
      return expected.every((text) => shown.some((m) => m.text.includes(text))) ? shown : null;
    },
    args.expect,
    {
      timeout,
      what: `the earlier chat (${args.expect.join(' / ')})`,
      describe: () => [...document.querySelectorAll('[data-testid=chat-message]')].map((m) => [m.dataset.author, m.textContent]),
    },
  );
  process.stdout.write(`${JSON.stringify({ event: 'chat', messages })}\n`);
});
