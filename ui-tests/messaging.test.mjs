// Two people in their browsers against their own nodes and one relay: a message typed in one
// page appears in the other without a reload and goes to `read`; a group made in the UI
// receives a message sent from the CLI; search; escaping of hostile text; screenshots of the
// main views in light and dark; and a node killed and restarted under an open page.

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { byId, Env, ids, killAll, openChat, ready, row, screenshot, typeAndSend, WAIT, waitFor } from './harness.mjs';

/** A word no other test sends. */
const unique = (prefix) => `${prefix}-${randomBytes(4).toString('hex')}`;

/** A `w` × `h` opaque RGB PNG (a gradient), made here so the test needs no fixture file. */
function png(w, h) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc = (buf) => {
    let c = 0xffffffff;
    for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const len = Buffer.alloc(4);
    len.writeUInt32BE(data.length);
    const body = Buffer.concat([Buffer.from(type, 'ascii'), data]);
    const sum = Buffer.alloc(4);
    sum.writeUInt32BE(crc(body));
    return Buffer.concat([len, body, sum]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr.set([8, 2, 0, 0, 0], 8);
  const raw = Buffer.alloc((w * 3 + 1) * h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) raw.set([x % 256, y % 256, (x * y) % 256], y * (w * 3 + 1) + 1 + x * 3);
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', ihdr),
    chunk('IDAT', zlib.deflateSync(raw)),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

/** Every test's own bound (each wait inside is bounded too). */
const T = { timeout: 120_000 };

/** What Alice's relay lets a push endpoint start with: a closed loopback port, since no
 * wake-up is due while her node runs. */
const PUSH_PREFIX = 'http://127.0.0.1:9/wake/';

describe('messaging in the browser', () => {
  let env;
  let alice;
  let bob;
  let alicePage;
  let bobPage;
  /** Set by the group test, for the screenshots. */
  let groupId;

  before(async () => {
    env = await Env.start(['Alice', 'Bob'], { relayConfig: `[push]\nallowed_prefixes = ["${PUSH_PREFIX}"]\n` });
    ({ Alice: alice, Bob: bob } = env.nodes);
    alicePage = await env.openUi(alice);
    bobPage = await env.openUi(bob);
    await ready(alicePage);
    await ready(bobPage);
  }, T);

  after(async () => {
    for (const [who, page] of [['Alice', alicePage], ['Bob', bobPage]]) {
      if (page?.consoleLines?.length) console.log(`# ${who}'s page console:\n# ${page.consoleLines.slice(-30).join('\n# ')}`);
    }
    await env?.close();
    killAll();
  }, T);

  test('a message typed in Alice’s page appears in Bob’s without a reload, then shows read', T, async () => {
    const text = unique('hello Bob');
    await openChat(alicePage, bob.user);
    await typeAndSend(alicePage, text);
    const mine = row(alicePage, text);
    await mine.waitFor();
    // Bob's node has it, but nobody has looked: delivered, not read.
    await waitFor('Alice’s message to show delivered', async () => (await mine.getAttribute('data-status')) === 'delivered');
    // Bob's list learns of the conversation by an event; then he opens the chat.
    await byId(bobPage, ids.conversation(alice.user)).waitFor();
    assert.equal(await mine.getAttribute('data-status'), 'delivered', 'not read before Bob opens the chat');
    await openChat(bobPage, alice.user);
    await row(bobPage, text).waitFor();
    await waitFor('Alice’s message to show read', async () => (await mine.getAttribute('data-status')) === 'read', WAIT);
  });

  test('a group created in Alice’s page receives a message Bob sends with the CLI', T, async () => {
    const title = unique('Book club');
    await byId(alicePage, ids.newGroup).click();
    await byId(alicePage, ids.groupTitle).fill(title);
    await byId(alicePage, ids.groupMember(bob.user)).check();
    await byId(alicePage, ids.groupCreate).click();
    // Bob's node learns of the group before he can send to it.
    const group = await waitFor('Bob’s node to know the group', async () =>
      (await bob.json(['group', 'list'])).find((g) => g.title === title),
    );
    groupId = group.id;
    const text = unique('hi all from the CLI');
    await bob.cli(['group', 'send', group.id, text]);
    if ((await byId(alicePage, ids.chat).getAttribute('data-conversation')) !== group.id) {
      await openChat(alicePage, group.id);
    }
    await row(alicePage, text).waitFor();
  });

  test('a picture Alice attaches in her page shows in Bob’s, thumbnail first, then whole', T, async () => {
    await openChat(alicePage, bob.user);
    await openChat(bobPage, alice.user);
    const before = await bobPage.locator('[data-testid^="msg-"][data-kind="file"]').count();
    await alicePage.setInputFiles('[data-testid="file-input"]', {
      name: 'garden.png',
      mimeType: 'image/png',
      buffer: png(320, 240),
    });
    // The upload goes through POST /upload and file.send; the message follows once the relay
    // holds the file, and Bob's node fetches it (small: at once).
    const file = bobPage.locator('[data-testid^="msg-"][data-kind="file"]');
    await waitFor('the file message in Bob’s page', async () => (await file.count()) > before);
    const id = (await file.last().getAttribute('data-testid')).slice('msg-'.length);
    await byId(bobPage, `thumb-${id}`).or(byId(bobPage, `image-${id}`)).first().waitFor();
    const image = byId(bobPage, `image-${id}`);
    await image.waitFor({ timeout: WAIT });
    await waitFor('the whole picture to be decoded', async () =>
      image.evaluate((img) => img.complete && img.naturalWidth === 320 && img.src.startsWith('blob:')),
    );
    // The copy the page uploaded is gone once staged; only ciphertext stays under media/.
    const uploads = path.join(alice.home, 'uploads');
    await waitFor('the uploaded copy to be removed', async () =>
      !fs.existsSync(uploads) || fs.readdirSync(uploads).length === 0,
    );
  });

  test('wake-ups are set and turned off in the settings; a relay’s refusal is shown', T, async () => {
    const current = () => byId(alicePage, 'push-current');
    await byId(alicePage, 'open-settings').click();
    await byId(alicePage, 'push-setting').waitFor();
    await waitFor('the push status to load', async () => (await current().innerText()) === 'None set.');
    const url = `${PUSH_PREFIX}${randomBytes(8).toString('hex')}`;
    await byId(alicePage, 'push-url').fill(url);
    await byId(alicePage, 'push-set').click();
    await waitFor('the relay to hold the endpoint', async () =>
      (await byId(alicePage, 'push-relay').getAttribute('data-state')) === 'registered');
    // The page shows where wake-ups go, never the path (often the secret part).
    assert.equal(await current().innerText(), `Set: ${new URL(url).origin}`);
    assert.equal((await alice.json(['push', 'status'])).url, url, 'the node holds what the page set');
    // Outside the relay's allowed prefixes: refused, said so, and nothing changes.
    await byId(alicePage, 'push-url').fill('http://127.0.0.1:9/elsewhere/abc');
    await byId(alicePage, 'push-set').click();
    await waitFor('the refusal to show', async () => /not_allowed/.test(await byId(alicePage, 'push-error').innerText()));
    assert.equal((await alice.json(['push', 'status'])).url, url);
    await byId(alicePage, 'push-clear').click();
    await waitFor('wake-ups to be off', async () => (await current().innerText()) === 'None set.');
    assert.equal((await alice.json(['push', 'status'])).url, null);
    await byId(alicePage, ids.dialogClose).click();
    await byId(alicePage, 'settings').waitFor({ state: 'detached' });
  });

  test('search finds a message and the result opens it', T, async () => {
    const word = unique('pineapple');
    await bob.cli(['send', 'Alice', `a ${word} upside-down cake`]);
    await waitFor('Alice’s node to hold the message', async () => (await alice.json(['search', word])).length > 0);
    // Search from another chat, so opening the hit must switch chats.
    if (groupId) await openChat(alicePage, groupId);
    await byId(alicePage, ids.search).fill(word);
    const [hit] = await alice.json(['search', word]);
    const result = byId(alicePage, ids.searchResult(hit.id));
    await result.waitFor().catch(async (e) => {
      // Say what the page showed instead: still searching, an error, or other hits.
      const text = (id) => byId(alicePage, id).innerText({ timeout: 1000 }).catch(() => '(absent)');
      const box = await byId(alicePage, ids.search).inputValue({ timeout: 1000 }).catch(() => '(absent)');
      throw new Error(`${e.message}\nsearch box: ${JSON.stringify(box)}\nresults: ${JSON.stringify(await text(ids.searchResults))}`);
    });
    assert.match(await result.innerText(), new RegExp(word));
    await result.click();
    await waitFor('the hit’s chat to open', async () => (await byId(alicePage, ids.chat).getAttribute('data-conversation')) === bob.user);
    await byId(alicePage, `msg-${hit.id}`).waitFor();
    assert.ok(await byId(alicePage, `msg-${hit.id}`).isVisible(), 'the found message is on screen');
  });

  test('a chat opened while typing in the search box leaves the typing there', T, async () => {
    // Alice has Bob's chat and the group's: Alt+↑/↓ opens the neighbour of the open one
    // while the keyboard stays in the search box.
    await openChat(alicePage, bob.user);
    const order = await alicePage.locator('[data-testid^="conv-"]').evaluateAll((els) =>
      els.map((e) => e.getAttribute('data-testid')).filter((t) => t !== 'conv-list' && t !== 'conv-empty'));
    const at = order.indexOf(`conv-${bob.user}`);
    assert.ok(order.length > 1 && at >= 0, `two chats in the list: ${JSON.stringify(order)}`);
    const box = byId(alicePage, ids.search);
    await box.fill('pine');
    try {
      await box.press(at + 1 < order.length ? 'Alt+ArrowDown' : 'Alt+ArrowUp');
      await waitFor('the other chat to open', async () =>
        (await byId(alicePage, ids.chat).getAttribute('data-conversation')) !== bob.user);
      await byId(alicePage, ids.composer).waitFor();
      // The new chat's effects (its composer would take the focus) have run after two frames.
      await alicePage.evaluate(() => new Promise((done) =>
        requestAnimationFrame(() => setTimeout(() => requestAnimationFrame(() => setTimeout(done, 0)), 0))));
      const focused = await alicePage.evaluate(() => {
        const e = document.activeElement;
        return e ? `${e.tagName} ${e.getAttribute('data-testid')}` : 'none';
      });
      await alicePage.keyboard.type('apple');
      assert.equal(await box.inputValue(), 'pineapple', `the typing stays in the search box (focus on ${focused})`);
      assert.equal(await byId(alicePage, ids.composer).inputValue(), '', 'nothing went to the composer');
    } finally {
      await box.fill('');
      await byId(alicePage, ids.composer).fill('');
    }
  });

  test('hostile text from the CLI is shown as text, never run', T, async () => {
    const payload = '<img src=x onerror=window.__pwned=1>';
    await bob.cli(['send', 'Alice', payload]);
    // A group title is shown in lists and headers: the same goes for it.
    const title = '<img src=x onerror=window.__pwned=2>';
    await bob.cli(['group', 'create', title, 'Alice']);
    await openChat(alicePage, bob.user);
    const shown = row(alicePage, payload);
    await shown.waitFor();
    assert.equal(await shown.locator('.text').innerText(), payload);
    const listed = alicePage.locator('[data-testid^="conv-"]', { hasText: 'onerror=window.__pwned=2' });
    await listed.first().waitFor();
    await listed.first().click();
    await byId(alicePage, ids.timeline).waitFor();
    // The snippet of a search hit is rendered from marked text too.
    await byId(alicePage, ids.search).fill('onerror');
    await alicePage.locator('[data-testid^="search-hit-"]').first().waitFor();
    const probe = () => ({ pwned: typeof window.__pwned, imgs: document.querySelectorAll('img[src="x"]').length });
    const state = await alicePage.evaluate(probe);
    await byId(alicePage, ids.search).fill('');
    assert.deepEqual(state, { pwned: 'undefined', imgs: 0 }, 'Alice’s page');
    // The sender's own page shows the same text.
    await openChat(bobPage, alice.user);
    await row(bobPage, payload).waitFor();
    assert.deepEqual(await bobPage.evaluate(probe), { pwned: 'undefined', imgs: 0 }, 'Bob’s page');
  });

  test('screenshots of the main views, light and dark', T, async () => {
    const shoot = async (page, name, colorScheme) => {
      // Let transitions and the QR images settle.
      await page.waitForTimeout(300);
      await screenshot(page, `${name}-${colorScheme}`);
    };
    for (const colorScheme of ['light', 'dark']) {
      await alicePage.emulateMedia({ colorScheme });
      await bobPage.emulateMedia({ colorScheme });
      await openChat(alicePage, bob.user);
      await shoot(alicePage, 'chat', colorScheme);
      await shoot(bobPage, 'chat-bob', colorScheme);
      if (groupId) {
        await openChat(alicePage, groupId);
        await shoot(alicePage, 'group', colorScheme);
        await byId(alicePage, ids.groupInfo).click();
        await byId(alicePage, ids.groupInfoDialog).waitFor();
        await shoot(alicePage, 'group-info', colorScheme);
        await alicePage.keyboard.press('Escape');
      }
      await byId(alicePage, ids.search).fill('pineapple');
      await alicePage.locator('[data-testid^="search-hit-"]').first().waitFor();
      await shoot(alicePage, 'search', colorScheme);
      await byId(alicePage, ids.search).fill('');
      await byId(alicePage, ids.contacts).click();
      await byId(alicePage, ids.contactQr).waitFor();
      await shoot(alicePage, 'contacts-qr', colorScheme);
      await alicePage.keyboard.press('Escape');
      await openChat(alicePage, bob.user);
      await byId(alicePage, ids.safety).click();
      await byId(alicePage, ids.safetyQr).waitFor();
      await shoot(alicePage, 'safety', colorScheme);
      await alicePage.keyboard.press('Escape');
    }
    await alicePage.emulateMedia({ colorScheme: 'light' });
    await bobPage.emulateMedia({ colorScheme: 'light' });
  });

  // Last: it kills Alice's node.
  test('the page rides out its node’s kill -9 and restart on the same port', T, async () => {
    await openChat(alicePage, bob.user);
    await alice.kill9();
    await byId(alicePage, ids.offlineBanner).waitFor({ state: 'visible' });
    const text = unique('sent while you were away');
    await bob.cli(['send', 'Alice', text]);
    await alice.restartSamePort();
    // The session survives the restart (the node keeps its hash): the banner clears by
    // itself, the page fetches again, and the message sent meanwhile shows.
    await waitFor(
      'the banner to clear and the message sent meanwhile to show',
      async () => {
        if (await byId(alicePage, ids.expired).isVisible()) {
          throw new Error('the session did not survive the node restart');
        }
        if (!(await byId(alicePage, ids.offlineBanner).isVisible()) && (await row(alicePage, text).isVisible())) return true;
        return undefined;
      },
      40_000,
    );
  });
});
