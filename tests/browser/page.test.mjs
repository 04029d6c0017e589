// The page's screens under axe-core (0 serious or critical violations), at desktop and
// phone sizes: not found, pre-join, the meeting, the chat open, the ended meeting. And
// what the page does with them: a late joiner's chat history with Markdown rendered
// (bold, safe links, raw HTML as text), chat from the Matrix room marked « depuis
// Tchap », tiles that fill the height and keep two columns with the chat open, a small
// self-view and a whole remote frame on a phone, no chat focus on a touch screen, pin
// buttons shown on focus, and the ended meeting's link saying so (title, end time).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { expectAccessible } from './lib/axe.mjs';
import {
  joinFromPrejoin,
  openPrejoin,
  pageWait,
  screenshot,
  tileSelector,
  useFixture,
  waitFor,
} from './lib/harness.mjs';

const DESKTOP = { width: 1280, height: 720 };
const PHONE = { width: 390, height: 844 };
const TITLE = 'Revue accessible';

// A short grace period: the meeting ends 2 s after the last person left.
const fx = useFixture('page', { server: { config: { 'meetings.grace_period_secs': 2 } } });

function open(viewport, { mobile = false } = {}) {
  return fx.newPage({ viewport, mobile, origin: fx.server.url });
}

/** A token granting roomAdmin on `room`: what the SFU's server-chat endpoint wants. */
function adminToken(room) {
  return fx.server.token('test-admin', room, { ttlSeconds: 600, video: { room, roomAdmin: true } });
}

test('error and pre-join screens pass axe-core, desktop and phone', { timeout: 120_000 }, async () => {
  await fx.run(async ({ server }) => {
    const meeting = await server.createMeeting(TITLE);
    for (const [size, viewport] of [['desktop', DESKTOP], ['phone', PHONE]]) {
      const page = await open(viewport, { mobile: size === 'phone' });
      await page.goto(`${server.url}/m/aaaaaaaaaaaaaaaaaaaaaaaaaa?lang=fr`);
      await pageWait(page, () => document.querySelector('[data-testid=error][data-error=not-found]') !== null, undefined, { what: 'the not-found screen' });
      await expectAccessible(page, `the not-found screen (${size})`);
      await openPrejoin(page, meeting.link, { lang: 'fr', title: TITLE });
      await expectAccessible(page, `the pre-join screen (${size})`);
      await page.context().close();
    }
  });
});

test('a late joiner, Markdown chat, layout, axe in the meeting, then the ended screen', { timeout: 240_000 }, async () => {
  await fx.run(async ({ server }) => {
    const meeting = await server.createMeeting(TITLE);

    // Alice (desktop) is in first and writes; Bob (phone) joins later.
    const alice = await open(DESKTOP);
    await openPrejoin(alice, meeting.link, { lang: 'fr', title: TITLE });
    const a = await joinFromPrejoin(alice, 'Alice Martin');
    await alice.locator('[data-testid=toggle-chat]').click();
    const markdown = '**gras** et [la doc](https://example.org/doc) <b>brut</b> javascript:alert(1)';
    await alice.locator('[data-testid=chat-input]').fill(markdown);
    await alice.locator('[data-testid=chat-send]').click();
    await pageWait(alice, () => document.querySelectorAll('[data-testid=chat-message]').length === 1, undefined, { what: 'Alice’s own message' });
    await alice.locator('[data-testid=toggle-chat]').click();

    // Chat from the Matrix room (the server participant), live.
    const injected = await fetch(`${server.url}/api/v1/rooms/${meeting.id}/chat`, {
      method: 'POST',
      headers: { Authorization: `Bearer ${adminToken(meeting.id)}`, 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'Agathe', text: 'Depuis le *salon*' }),
    });
    assert.equal(injected.status, 200, await injected.text());
    await pageWait(alice, () => document.querySelector('[data-testid=chat-message][data-origin=matrix]') !== null, undefined, { what: 'the Matrix message on Alice’s page' });

    const bob = await open(PHONE, { mobile: true });
    await openPrejoin(bob, meeting.link, { lang: 'fr', title: TITLE });
    const b = await joinFromPrejoin(bob, 'Bruno Petit');
    await pageWait(alice, (sel) => document.querySelector(sel) !== null, tileSelector(b.identity), { what: 'Bob’s tile on Alice’s page' });
    await pageWait(bob, (sel) => document.querySelector(sel) !== null, tileSelector(a.identity), { what: 'Alice’s tile on Bob’s page' });

    // Bob's history: Alice's message, rendered, never as HTML.
    await bob.locator('[data-testid=toggle-chat]').click();
    const shown = await pageWait(bob, () => {
      const m = document.querySelector('[data-testid=chat-message]');
      if (!m) return null;
      const a = m.querySelector('.chat-text a');
      return {
        author: m.dataset.author,
        origin: m.dataset.origin,
        strong: [...m.querySelectorAll('.chat-text strong')].map((s) => s.textContent),
        link: a && { href: a.getAttribute('href'), rel: a.getAttribute('rel'), target: a.getAttribute('target'), text: a.textContent },
        links: m.querySelectorAll('.chat-text a').length,
        rawB: m.querySelectorAll('.chat-text b').length,
        text: m.querySelector('.chat-text').textContent,
        focusInInput: document.activeElement === document.querySelector('[data-testid=chat-input]'),
      };
    }, undefined, { what: 'Alice’s earlier message on Bob’s page (history)' });
    assert.equal(shown.author, 'Alice Martin');
    assert.equal(shown.origin, 'meeting');
    assert.deepEqual(shown.strong, ['gras']);
    assert.deepEqual(shown.link, { href: 'https://example.org/doc', rel: 'noopener noreferrer', target: '_blank', text: 'la doc' });
    assert.equal(shown.links, 1, 'javascript: is no link');
    assert.equal(shown.rawB, 0, 'raw HTML stays text');
    assert.ok(shown.text.includes('<b>brut</b>'), shown.text);
    assert.equal(shown.focusInInput, false, 'the chat input takes no focus on a touch screen');
    // Exactly once, although Bob may also have got it live.
    assert.equal(await bob.locator('[data-testid=chat-message]').count(), 1);
    await expectAccessible(bob, 'the meeting with the chat open (phone)');
    await screenshot(bob, 'fr-phone-chat-history');
    await bob.locator('[data-testid=toggle-chat]').click();

    // Alice sees the Matrix message marked, and its Markdown.
    const fromMatrix = await alice.evaluate(() => {
      const m = document.querySelector('[data-testid=chat-message][data-origin=matrix]');
      return { author: m.dataset.author, mark: m.querySelector('[data-testid=chat-origin]')?.textContent, em: m.querySelector('.chat-text em')?.textContent };
    });
    // The server-chat endpoint marks its authors as bots (a person is never impersonated).
    assert.deepEqual(fromMatrix, { author: 'Agathe (bot)', mark: 'depuis Tchap', em: 'salon' });

    // Desktop, two people: the tiles fill the height, side by side.
    const layout = async (page) => page.evaluate(() => {
      const stage = document.querySelector('.stage').getBoundingClientRect();
      const tiles = [...document.querySelectorAll('.grid > [data-testid=tile]')].map((t) => {
        const r = t.getBoundingClientRect();
        return { x: r.x, y: r.y, width: r.width, height: r.height, fit: getComputedStyle(t.querySelector('video')).objectFit };
      });
      return { stage: { width: stage.width, height: stage.height }, tiles };
    });
    let desk = await layout(alice);
    assert.equal(desk.tiles.length, 2, JSON.stringify(desk));
    for (const t of desk.tiles) assert.ok(t.height >= desk.stage.height * 0.85, `a tile fills the height: ${JSON.stringify(desk)}`);
    assert.equal(Math.round(desk.tiles[0].y), Math.round(desk.tiles[1].y), 'side by side');
    await expectAccessible(alice, 'the meeting (desktop)');
    await alice.locator('[data-testid=toggle-chat]').click();
    await pageWait(alice, () => !document.querySelector('#chat-panel').hidden, undefined, { what: 'the chat panel' });
    await pageWait(alice, (w) => document.querySelector('.stage').getBoundingClientRect().width < w - 200, desk.stage.width, { what: 'the grid narrowing' });
    desk = await layout(alice);
    assert.equal(Math.round(desk.tiles[0].y), Math.round(desk.tiles[1].y), `still two columns with the chat open: ${JSON.stringify(desk)}`);
    assert.ok(desk.tiles.every((t) => t.height >= desk.stage.height * 0.85), JSON.stringify(desk));
    const focused = await alice.evaluate(() => document.activeElement?.dataset.testid);
    assert.equal(focused, 'chat-input', 'with a mouse, opening the chat focuses its input');
    await expectAccessible(alice, 'the meeting with the chat open (desktop)');
    await screenshot(alice, 'fr-desktop-chat-open');

    // A pinned tile is shown large and whole; the speaker strip passes axe too.
    await alice.locator(`${tileSelector(b.identity)} .pin-btn`).focus();
    await alice.keyboard.press('Enter');
    const pinned = await pageWait(alice, (sel) => {
      const tile = document.querySelector(`.focus-area > ${sel}`);
      return tile ? getComputedStyle(tile.querySelector('video')).objectFit : null;
    }, tileSelector(b.identity), { what: 'Bob’s tile pinned' });
    assert.equal(pinned, 'contain');
    await expectAccessible(alice, 'the meeting with a pinned tile (desktop)');
    await alice.locator(`${tileSelector(b.identity)} .pin-btn`).click();
    await pageWait(alice, () => document.querySelectorAll('.grid > [data-testid=tile]').length === 2, undefined, { what: 'back to the grid' });

    // Participants button: its visible count is in its name.
    const people = await alice.evaluate(() => {
      const button = document.querySelector('[data-testid=toggle-participants]');
      return { label: button.getAttribute('aria-label'), badge: button.querySelector('.badge').textContent };
    });
    assert.ok(people.label.includes(people.badge), JSON.stringify(people));

    // Phone: the self-view is small, the remote video whole, the pin button shown on focus.
    const phone = await bob.evaluate(([self, other]) => {
      const selfTile = document.querySelector(self);
      const remote = document.querySelector(other);
      const pin = remote.querySelector('.pin-btn');
      pin.focus();
      return {
        selfInOverlay: selfTile.parentElement.classList.contains('self-view'),
        selfWidth: selfTile.getBoundingClientRect().width,
        remoteWidth: remote.getBoundingClientRect().width,
        remoteFit: getComputedStyle(remote.querySelector('video')).objectFit,
        pinOpacity: getComputedStyle(pin).opacity,
      };
    }, [tileSelector(b.identity), tileSelector(a.identity)]);
    assert.ok(phone.selfInOverlay, JSON.stringify(phone));
    assert.ok(phone.selfWidth <= 130 && phone.remoteWidth >= PHONE.width * 0.8, JSON.stringify(phone));
    assert.equal(phone.remoteFit, 'contain');
    assert.equal(phone.pinOpacity, '1');
    await expectAccessible(bob, 'the meeting (phone)');
    await screenshot(bob, 'fr-phone-meeting');

    // Both leave; after the grace period the link says the meeting is over.
    for (const page of [alice, bob]) await page.locator('[data-testid=leave]').click();
    for (const page of [alice, bob]) await page.context().close();
    await waitFor(async () => {
      const info = await (await fetch(`${server.url}/api/v1/meetings/${meeting.slug}`)).json();
      return info.state === 'ended';
    }, { timeout: 30_000, what: 'the meeting to end after the grace period' });
    for (const [size, viewport, lang, heading] of [
      ['desktop', DESKTOP, 'fr', 'Cette réunion est terminée'],
      ['phone', PHONE, 'en', 'This meeting has ended'],
    ]) {
      const page = await open(viewport, { mobile: size === 'phone' });
      await page.goto(`${meeting.link}?lang=${lang}`);
      const result = await pageWait(page, () => {
        const error = document.querySelector('[data-testid=error][data-error=ended]');
        if (!error) return null;
        return { heading: error.querySelector('h1').textContent, title: error.querySelector('[data-testid=ended-title]')?.textContent, at: error.querySelector('[data-testid=ended-at]')?.textContent ?? '', text: error.textContent };
      }, undefined, { what: 'the ended screen' });
      assert.equal(result.heading, heading);
      assert.equal(result.title, TITLE);
      assert.ok(/\d/.test(result.at), result.at);
      assert.ok(result.text.includes('!visio'), result.text);
      await expectAccessible(page, `the ended screen (${size})`);
      await screenshot(page, `${lang}-${size}-ended`);
      await page.context().close();
    }
    // The join endpoint keeps refusing it.
    const join = await fetch(`${server.url}/api/v1/meetings/${meeting.slug}/join`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'Tard' }),
    });
    assert.equal(join.status, 404);
  });
});
