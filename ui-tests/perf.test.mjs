// Measurements, reported and never asserted on: how long a message typed in Alice's page
// takes to be painted in Bob's, next to how long the same message takes to reach a plain API
// client subscribed to Bob's node; and how long a chat of 10,000 messages takes to open.
// Lines starting `ui-measure |` are collected by tests/tests/ui_browser.rs into its report.

import fs from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { byId, Env, ids, killAll, newPage, openChat, percentile, ready, sleep, UNLIMITED_RATE, waitFor, within } from './harness.mjs';

/** Messages timed one after the other (after one warm-up). */
const ROUNDS = 30;
/** The long chat's length, and how many sends are in flight at once while seeding it. */
const SEED = 10_000;
const SEED_WINDOW = 256;
/** Longest wait for the seeded messages to be handed to the relay. */
const DRAIN_WAIT = 300_000;

const f = (x) => (Number.isFinite(x) ? x.toFixed(1) : '-');
/** Latency rows (p50/p99 over n) and single timings, printed as two tables at the end. */
const rows = [];
const singles = [];
function report(what, xs) {
  rows.push(`${what.padEnd(56)} | ${String(xs.length).padStart(3)} | ${f(percentile(xs, 50)).padStart(7)} | ${f(percentile(xs, 99)).padStart(7)}`);
}
function single(what, ms) {
  singles.push(`${what.padEnd(56)} | ${f(ms).padStart(9)}`);
}

/** Marks every message row that appears in the page: DOM insertion time and next frame. */
function installObserver() {
  window.__seen = {};
  const now = () => performance.timeOrigin + performance.now();
  const scan = () => {
    const t = now();
    for (const el of document.querySelectorAll('[data-testid^="msg-"] .text')) {
      const text = el.textContent;
      if (!window.__seen[text]) {
        const rec = { dom: t, paint: null };
        window.__seen[text] = rec;
        // The frame that shows it: rAF runs before paint, the task after it runs after.
        requestAnimationFrame(() => setTimeout(() => (rec.paint = now()), 0));
      }
    }
  };
  new MutationObserver(scan).observe(document.body, { childList: true, subtree: true, characterData: true });
  scan();
}

/** Records the time of every Enter pressed in the page (the send). */
function installSendClock() {
  window.__sent = [];
  document.addEventListener('keydown', (e) => e.key === 'Enter' && !e.shiftKey && window.__sent.push(performance.timeOrigin + performance.now()), true);
}

describe('measurements (report only)', () => {
  let env;
  let alice;
  let bob;
  let carol;

  before(async () => {
    env = await Env.start(['Alice', 'Bob', 'Carol'], { relayConfig: UNLIMITED_RATE });
    ({ Alice: alice, Bob: bob, Carol: carol } = env.nodes);
  }, { timeout: 180_000 });

  after(async () => {
    if (rows.length || singles.length) {
      const table = [
        `${'latency, one message at a time (ms)'.padEnd(56)} | ${'n'.padStart(3)} | ${'p50'.padStart(7)} | ${'p99'.padStart(7)}`,
        `${'-'.repeat(56)} | ${'-'.repeat(3)} | ${'-'.repeat(7)} | ${'-'.repeat(7)}`,
        ...rows,
        '',
        `${'single timings (ms)'.padEnd(56)} | ${'ms'.padStart(9)}`,
        `${'-'.repeat(56)} | ${'-'.repeat(9)}`,
        ...singles,
      ];
      for (const l of table) console.log(`ui-measure | ${l}`);
      if (process.env.TERN_UI_REPORT) fs.writeFileSync(process.env.TERN_UI_REPORT, table.join('\n') + '\n');
    }
    await env?.close();
    killAll();
  }, { timeout: 120_000 });

  test('send in Alice’s page → painted in Bob’s, against the API event', { timeout: 180_000 }, async () => {
    const alicePage = await env.openUi(alice);
    const bobPage = await env.openUi(bob);
    await ready(alicePage);
    await ready(bobPage);
    // Bob's chat with Alice must exist to be opened: a warm-up message makes it (and the
    // pairwise session, so the rounds below measure steady state).
    await openChat(alicePage, bob.user);
    await byId(alicePage, ids.composer).fill('warm-up');
    await byId(alicePage, ids.composer).press('Enter');
    await byId(bobPage, ids.conversation(alice.user)).waitFor();
    await openChat(bobPage, alice.user);
    await bobPage.locator('[data-testid^="msg-"] .text', { hasText: 'warm-up' }).waitFor();

    const api = await bob.client();
    env.defer(() => api.close());
    await api.call('subscribe', {});
    const apiSeen = {};
    api.onEvent((ev, t) => {
      if (ev.type === 'message' && !ev.message.own) apiSeen[ev.message.text] ??= t;
    });
    await alicePage.evaluate(installSendClock);
    await bobPage.evaluate(installObserver);

    const toApi = [];
    const toDom = [];
    const toPaint = [];
    const apiToPaint = [];
    for (let i = 0; i < ROUNDS; i++) {
      const text = `lat-${i}-${Date.now()}`;
      await byId(alicePage, ids.composer).fill(text);
      await byId(alicePage, ids.composer).press('Enter');
      const sent = await alicePage.evaluate(() => window.__sent.at(-1));
      const seen = await waitFor(`round ${i} to be painted in Bob’s page`, () =>
        bobPage.evaluate((t) => (window.__seen[t]?.paint ? window.__seen[t] : undefined), text),
      );
      const apiAt = await waitFor(`round ${i} at the API client`, () => apiSeen[text]);
      toApi.push(apiAt - sent);
      toDom.push(seen.dom - sent);
      toPaint.push(seen.paint - sent);
      apiToPaint.push(seen.paint - apiAt);
      await sleep(50);
    }
    report('Enter in Alice’s page → API event at Bob’s node', toApi);
    report('Enter in Alice’s page → row in Bob’s DOM', toDom);
    report('Enter in Alice’s page → painted in Bob’s (next frame)', toPaint);
    report('Bob’s API event → painted (the page’s share)', apiToPaint);
    await alicePage.context().close();
    await bobPage.context().close();
  });

  test(`a chat of ${SEED.toLocaleString('en')} messages opens`, { timeout: 600_000 }, async () => {
    // Alice writes to Carol while Carol is away: every send is stored at once on Alice's
    // side and waits in the relay for Carol, so Alice's node is quiet once its outbox drains.
    await carol.kill9();
    const api = await alice.client();
    env.defer(() => api.close());
    const t0 = Date.now();
    let next = 0;
    const worker = async () => {
      while (next < SEED) {
        const i = next++;
        await api.call('send', { contact: 'Carol', text: `seed ${i + 1} of ${SEED}` }, 60_000);
      }
    };
    await within('seeding', Promise.all(Array.from({ length: SEED_WINDOW }, worker)), 300_000);
    const seeded = Date.now() - t0;
    single(`seed: ${SEED} sends pipelined on one socket`, seeded);
    const drained = await waitFor(
      'Alice’s outbox to drain',
      async () => ((await api.call('status', {})).outbox === 0 ? Date.now() - t0 : undefined),
      DRAIN_WAIT,
    ).catch(() => NaN);
    // The relay's per-sender rate limit is lifted here (UNLIMITED_RATE).
    single('seed: … until the outbox drained', drained);

    const url = await alice.uiUrl();
    const page = await newPage(env.browser);
    const loading = Date.now();
    await page.goto(url);
    await byId(page, ids.conversation(carol.user)).waitFor();
    single('load the UI (goto → conversation list shown)', Date.now() - loading);
    const last = `seed ${SEED} of ${SEED}`;
    await page.evaluate(installObserver);
    // The baseline in the same page: opening a short chat (Bob's, a few dozen messages).
    const [shortLast] = await api.call('history', { contact: 'Bob', limit: 1 });
    const shortLen = (await api.call('history', { contact: 'Bob', limit: 500 })).length;
    const shortClicked = await page.evaluate(() => performance.timeOrigin + performance.now());
    await byId(page, ids.conversation(bob.user)).click();
    const shortSeen = await waitFor('the newest message of the short chat to be painted', () =>
      page.evaluate((t) => (window.__seen[t]?.paint ? window.__seen[t] : undefined), shortLast.text),
    );
    single(`open a ${shortLen}-message chat → newest row painted`, shortSeen.paint - shortClicked);
    const clicked = await page.evaluate(() => performance.timeOrigin + performance.now());
    await byId(page, ids.conversation(carol.user)).click();
    const seen = await waitFor('the newest seeded message to be painted', () =>
      page.evaluate((t) => (window.__seen[t]?.paint ? window.__seen[t] : undefined), last),
    );
    single(`open the ${SEED}-message chat → newest row painted`, seen.paint - clicked);
    const rendered = await page.locator('[data-testid^="msg-"]').count();
    console.log(`# the opened chat rendered ${rendered} message rows`);
    await page.context().close();
  });
});
