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
import {
  byId, Env, holds, ids, killAll, newPage, Node, openChat, ready, row, screenshot, socketSwitch, typeAndSend, UNLIMITED_RATE, WAIT,
  waitFor,
} from './harness.mjs';

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
  /** A third user, made by the contact-link test. */
  let carol;

  before(async () => {
    env = await Env.start(['Alice', 'Bob'], { relayConfig: `[push]\nallowed_prefixes = ["${PUSH_PREFIX}"]\n${UNLIMITED_RATE}` });
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

test('an image that cannot be decoded is refused in words, and goes as a file when asked', T, async () => {
    await openChat(alicePage, bob.user);
    // A PNG signature and then nothing a decoder can read.
    const broken = Buffer.concat([Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]), randomBytes(512)]);
    await alicePage.setInputFiles('[data-testid="file-input"]', { name: 'broken.png', mimeType: 'image/png', buffer: broken });
    const failed = alicePage.locator('[data-testid^="upload-"][data-state="failed"]');
    await failed.first().waitFor();
    const said = await failed.first().innerText();
    assert.match(said, /could not be read as (a picture|one)/, said);
    assert.doesNotMatch(said, /bad_image/, said);
    // Sent again as it is: Bob gets the file under its name, byte for byte.
    await failed.first().locator('[data-testid^="upload-as-file-"]').click();
    await failed.first().waitFor({ state: 'detached' });
    const got = await waitFor('Bob to get broken.png', async () =>
      (await bob.json(['history', 'Alice', '--no-mark-read', '--limit', '20'])).find((m) => m.media && m.media.name === 'broken.png'));
    assert.equal(got.media.mime, 'application/octet-stream');
    assert.equal(got.media.size, broken.length);
  });

  test('a chat with more unread messages than a page opens at the first of them, its divider in view', T, async () => {
    // Another chat is open while they come, so all of them are unread.
    await openChat(alicePage, groupId);
    const bobApi = await bob.client();
    env.defer(() => bobApi.close());
    const texts = Array.from({ length: 60 }, (_, i) => unique(`unread ${i}`));
    const sent = await Promise.all(texts.map((text) => bobApi.request('send', { contact: alice.user, text })));
    await waitFor('Alice’s badge to count all 60', async () =>
      (await byId(alicePage, ids.unread(bob.user)).innerText({ timeout: 1000 })) === '60');
    await byId(alicePage, ids.conversation(bob.user)).click();
    const divider = byId(alicePage, ids.unreadDivider);
    await divider.waitFor();
    const next = await divider.evaluate((el) => el.nextElementSibling && el.nextElementSibling.getAttribute('data-testid'));
    assert.equal(next, `msg-${sent[0].id}`, 'the divider comes right before the first unread message');
    const [d, tl] = await Promise.all([divider.boundingBox(), byId(alicePage, ids.timeline).boundingBox()]);
    assert.ok(d.y >= tl.y && d.y + d.height <= tl.y + tl.height, `the divider is inside the timeline's view: ${JSON.stringify({ d, tl })}`);
  });

  test('a message that comes while the reader is scrolled up stays unread until they go down', T, async () => {
    // Alice has Bob's long chat open (the test above).
    await openChat(alicePage, bob.user);
    const timeline = byId(alicePage, ids.timeline);
    await timeline.evaluate((el) => { el.scrollTop = 0; });
    const bobApi = await bob.client();
    const aliceApi = await alice.client();
    env.defer(() => bobApi.close());
    env.defer(() => aliceApi.close());
    const m = await bobApi.call('send', { contact: alice.user, text: unique('while you read back') });
    const status = async () => (await bobApi.call('history', { contact: alice.user, limit: 5 })).find((x) => x.id === m.id)?.status;
    const unreadAtAlice = async () => (await aliceApi.call('conversations')).find((c) => c.id === bob.user)?.unread ?? 0;
    const pill = byId(alicePage, ids.newMessages);
    await pill.waitFor();
    assert.match(await pill.innerText(), /1 new message/);
    assert.equal(await byId(alicePage, ids.unread(bob.user)).innerText(), '1', 'the badge counts it');
    await waitFor('Bob’s message to be delivered', async () => (await status()) === 'delivered');
    // The page marks what it shows read within 400 ms; twice that and a round trip pass.
    await holds('the message stays unread while Alice reads back', async () =>
      (await unreadAtAlice()) === 1 && (await status()) === 'delivered', 1500);
    await pill.click();
    await waitFor('Bob to see it read', async () => (await status()) === 'read');
    await byId(alicePage, ids.unread(bob.user)).waitFor({ state: 'detached' });
    await pill.waitFor({ state: 'detached' });
  });

  test('a conversation read elsewhere (the CLI) loses its unread badge in the page', T, async () => {
    await openChat(alicePage, groupId);
    await bob.cli(['send', 'Alice', unique('read me elsewhere')]);
    const badge = byId(alicePage, ids.unread(bob.user));
    await badge.waitFor();
    await alice.cli(['history', 'Bob', '--limit', '1']);
    await badge.waitFor({ state: 'detached' });
  });

  test('membership notes say “you” for this user: who removed them, and what they did', T, async () => {
    const title = unique('Removal');
    const gid = (await alice.cli(['group', 'create', title, 'Bob'])).trim().split(/\s+/).pop();
    await waitFor('Bob’s page to list the group', async () => (await byId(bobPage, ids.conversation(gid)).count()) > 0);
    await alice.cli(['group', 'remove', gid, 'Bob']);
    await openChat(bobPage, gid);
    const notes = (page) => page.locator('[data-testid^="msg-"][data-kind="membership"] .note-text').allInnerTexts();
    await waitFor('Bob’s page to show his removal', async () => (await notes(bobPage)).includes('Alice removed you'));
    await waitFor('the header to say he was removed', async () =>
      /you were removed/.test(await byId(bobPage, 'chat-subtitle').innerText()));
    await openChat(alicePage, gid);
    await waitFor('Alice’s page to show her own acts', async () => {
      const n = await notes(alicePage);
      return n.includes(`You created the group ${title}`) && n.includes('You removed Bob');
    });
  });

  test('a contact added from a wrapped short link without a name is said to need one, and renamed', T, async () => {
    carol = await Node.create(env.dir, 'Carol', env.relay.addr);
    env.nodes.Carol = carol;
    const { short } = await carol.json(['contact', 'link']);
    assert.ok(short, 'Carol has a short link');
    // As copied from wrapped text: a line break and spaces inside.
    const third = Math.floor(short.length / 3);
    const wrapped = `  ${short.slice(0, third)}\n${short.slice(third, 2 * third)} ${short.slice(2 * third)}\n`;
    await byId(alicePage, ids.contacts).click();
    try {
      await addAndRename(wrapped);
    } finally {
      await alicePage.keyboard.press('Escape');
    }
  });

  /** In Alice's open contacts dialog: adds Carol by `link` without a name, then renames her. */
  async function addAndRename(link) {
    await byId(alicePage, ids.contactAddLink).fill(link);
    await byId(alicePage, ids.contactAddSubmit).click();
    await byId(alicePage, ids.contactAddUnnamed).or(byId(alicePage, ids.contactAddError)).first().waitFor();
    assert.ok(await byId(alicePage, ids.contactAddUnnamed).isVisible(),
      `added, and told to name them: ${await byId(alicePage, ids.contactAddError).innerText({ timeout: 1000 }).catch(() => '')}`);
    await byId(alicePage, ids.contact(carol.user)).waitFor();
    // A bad name: the node's refusal is shown, nothing changes.
    await byId(alicePage, ids.contactRename(carol.user)).click();
    await byId(alicePage, ids.contactRenameInput(carol.user)).fill('bob');
    await byId(alicePage, ids.contactRenameSave(carol.user)).click();
    await byId(alicePage, ids.contactRenameError(carol.user)).waitFor();
    assert.match(await byId(alicePage, ids.contactRenameError(carol.user)).innerText(), /\S/);
    await byId(alicePage, ids.contactRenameInput(carol.user)).fill('  Carol  ');
    await byId(alicePage, ids.contactRenameSave(carol.user)).click();
    await waitFor('the list to show the new name', async () =>
      (await byId(alicePage, ids.contact(carol.user)).locator('.contact-name').innerText()).trim() === 'Carol');
    assert.equal((await alice.json(['contact', 'list'])).find((c) => c.user_id === carol.user).name, 'Carol');
  }

  test('a new user’s empty list offers to add a contact; the menu’s icons say what they do', T, async () => {
    const page = await env.openUi(carol);
    await byId(page, ids.noConversations).waitFor();
    await byId(page, ids.emptyAddContact).click();
    await byId(page, 'contacts').waitFor();
    await page.keyboard.press('Escape');
    const menu = async (id) => byId(page, id).evaluate((b) => ({
      label: b.getAttribute('aria-label'), title: b.getAttribute('title'), icon: b.querySelector('img').getAttribute('src'),
    }));
    const group = await menu(ids.newGroup);
    const contacts = await menu(ids.contacts);
    assert.equal(group.label, 'New group');
    assert.equal(group.title, 'New group');
    assert.match(contacts.label, /^Contacts/);
    assert.match(contacts.label, /add a contact/);
    // The person with a plus (read as "add a contact") is on Contacts; New group shows a group.
    assert.match(contacts.icon, /contact-add\.svg$/);
    assert.match(group.icon, /\/group\.svg$/);
    await page.context().close();
  });

  test('signing out in the settings ends this page’s session only', T, async () => {
    const page = await env.openUi(alice);
    await ready(page);
    await byId(page, ids.settings).click();
    await byId(page, ids.signOut).click();
    const ended = byId(page, ids.expired);
    await ended.waitFor();
    assert.equal(await ended.getAttribute('data-ended'), 'signed-out');
    assert.match(await ended.innerText(), /tern ui/);
    // Gone for good: a reload has no session to use.
    await page.reload();
    await byId(page, ids.noSession).waitFor();
    await page.context().close();
    // Alice's other page still works.
    const text = unique('still signed in');
    await openChat(alicePage, bob.user);
    await typeAndSend(alicePage, text);
    await waitFor('the text to be sent', async () => (await row(alicePage, text).getAttribute('data-status')) !== 'pending');
    assert.equal(await byId(alicePage, ids.expired).count(), 0);
  });

  test('unsent texts and the draft survive a reload; each is sent once, by itself', T, async () => {
    const page = await newPage(env.browser);
    const sw = await socketSwitch(page);
    await page.goto(await alice.uiUrl());
    await ready(page);
    await openChat(page, bob.user);
    const [lost, unanswered, later] = [unique('request lost'), unique('answer lost'), unique('typed offline')];
    const draft = unique('a draft');
    // One request never reaches the node; one does, but neither its answer nor its event
    // comes back.
    sw.dropRequests('send');
    await typeAndSend(page, lost);
    await row(page, lost).waitFor();
    sw.mend();
    sw.dropAnswers('send');
    await typeAndSend(page, unanswered);
    await waitFor('Alice’s node to store it', async () =>
      (await alice.json(['history', 'Bob', '--no-mark-read', '--limit', '5'])).some((m) => m.text === unanswered));
    await sw.cut();
    await byId(page, ids.offlineBanner).waitFor();
    await typeAndSend(page, later);
    await row(page, later).waitFor();
    await byId(page, ids.composer).fill(draft);
    await page.reload();
    // Still cut off from the node: what the page kept shows, and the draft is back.
    for (const t of [lost, unanswered, later]) await row(page, t).waitFor();
    await waitFor('the draft to be back', async () => (await byId(page, ids.composer).inputValue()) === draft);
    sw.mend();
    await ready(page);
    // All three go again by themselves, each under its key: the one whose answer was lost
    // the node has already, so it answers with that message and sends no second one.
    const bobHas = async (t) => (await bob.json(['history', 'Alice', '--no-mark-read', '--limit', '20'])).filter((m) => m.text === t).length;
    for (const t of [lost, unanswered, later]) await waitFor(`Bob to get ${t}`, async () => (await bobHas(t)) >= 1);
    await byId(page, ids.unsentBar).waitFor({ state: 'detached' });
    for (const t of [lost, unanswered, later]) assert.equal(await row(page, t).count(), 1, `${t} shown once`);
    const got = (await bob.json(['history', 'Alice', '--no-mark-read', '--limit', '20'])).map((m) => m.text);
    for (const t of [lost, unanswered, later]) assert.equal(got.filter((x) => x === t).length, 1, `${t} once: ${JSON.stringify(got)}`);
    assert.ok(got.indexOf(lost) < got.indexOf(later), 'sent again in the order typed');
    assert.ok(got.indexOf(unanswered) < got.indexOf(later), 'in the order typed');
    const own = (await alice.json(['history', 'Bob', '--no-mark-read', '--limit', '20'])).map((m) => m.text);
    assert.equal(own.filter((x) => x === unanswered).length, 1, 'stored once at Alice too');
    assert.equal(await page.locator('[data-unsent]').count(), 0, 'nothing left unsent in the page');
    await page.context().close();
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
    const dot = byId(alicePage, ids.presence(bob.user));
    await waitFor('Bob to show online', async () => (await dot.getAttribute('data-state')) === 'online');
    await alice.kill9();
    await byId(alicePage, ids.offlineBanner).waitFor({ state: 'visible' });
    // Without its node the page knows nobody's presence.
    assert.equal(await dot.getAttribute('data-state'), 'unknown');
    // A node started again may listen on another port (the default is a random one): after a
    // while the banner says how to find it.
    await byId(alicePage, ids.offlineHint).waitFor({ timeout: 20_000 });
    assert.match(await byId(alicePage, ids.offlineBanner).innerText(), /tern ui/);
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
