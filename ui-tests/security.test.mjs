// The web UI's security boundary, checked from outside: one-time codes, the Origin and Host
// checks on every route, and the headers every response carries. Positive controls (the same
// request from the right origin succeeds) keep each refusal from passing by accident.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ApiClient, byId, Env, ids, killAll, newPage, otherOrigin, rawRequest, ready, upgradeHeaders, waitFor, within } from './harness.mjs';

/** `http://127.0.0.1:PORT/#c=CODE` → CODE. */
const codeOf = (url) => new URL(url).hash.replace(/^#c=/, '');

/**
 * Run inside a page: opens the API socket with a session token, then POSTs /session (a
 * "simple" no-cors request, and a CORS one) and /upload; says what each did.
 */
async function tries({ api, token, code }) {
  const socket = await new Promise((resolve) => {
    const ws = new WebSocket(`ws://${api}/api`, ['tern.v1', `tern.session.${token}`]);
    const t = setTimeout(() => resolve('no answer'), 5000);
    ws.onopen = () => {
      clearTimeout(t);
      ws.close();
      resolve('open');
    };
    ws.onerror = () => {
      clearTimeout(t);
      resolve('refused');
    };
  });
  if (!code) return { socket };
  const post = async (path, init) => {
    try {
      const r = await fetch(`http://${api}${path}`, { method: 'POST', ...init });
      return `HTTP ${r.status} ${await r.text()}`;
    } catch {
      return 'refused';
    }
  };
  // A "simple" request (no preflight): the server must refuse it on its Origin.
  const simple = await post('/session', { mode: 'no-cors', headers: { 'Content-Type': 'text/plain' }, body: JSON.stringify({ code }) });
  const session = await post('/session', { headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ code }) });
  const upload = await post('/upload?name=x.txt', { headers: { Authorization: `Bearer ${token}` }, body: 'x' });
  return { socket, simple, session, upload };
}

/** Every test's own bound (each wait inside is bounded too). */
const T = { timeout: 120_000 };

describe('security', () => {
  let env;
  let alice;
  /** A page on another origin (127.0.0.1, another port). */
  let evil;

  before(async () => {
    env = await Env.start(['Alice']);
    alice = env.nodes.Alice;
    evil = await otherOrigin('<!doctype html><title>elsewhere</title><p>another origin</p>');
    env.defer(() => new Promise((r) => evil.server.close(r)));
  }, T);

  after(async () => {
    await env?.close();
    killAll();
  }, T);

  /** POST /session with a code, from `origin`. */
  const exchange = (code, origin = alice.origin) =>
    rawRequest(alice.port, {
      method: 'POST',
      path: '/session',
      headers: { Origin: origin, 'Content-Type': 'application/json' },
      body: JSON.stringify({ code }),
    });

  /** A session token, got the way the page gets it. */
  async function session() {
    const res = await exchange(codeOf(await alice.uiUrl()));
    assert.equal(res.status, 200, `POST /session from the UI's own origin: ${res.body}`);
    const { token } = JSON.parse(res.body);
    assert.ok(typeof token === 'string' && token.length >= 32, `session token ${token}`);
    return token;
  }

  /** The API socket opened as the page opens it, with session `token`. */
  const asPage = (token) =>
    ApiClient.connect(`ws://127.0.0.1:${alice.port}/api`, { Origin: alice.origin }, ['tern.v1', `tern.session.${token}`]);

  test('a page session cannot make codes, write backups or stop the node', T, async () => {
    const page = await asPage(await session());
    try {
      const refused = [
        ['ui.code', {}],
        ['id.backup', { path: path.join(alice.home, 'b.tern'), passphrase: 'a long enough passphrase' }],
        ['node.stop', {}],
        ['relay.remove', { addr: '/ip4/127.0.0.1/tcp/1' }],
        // Any file but one the page uploaded: the API token among them, also by a path
        // that only passes through uploads/.
        ['file.send', { contact: 'Nobody', path: path.join(alice.home, 'api.token') }],
        ['file.send', { contact: 'Nobody', path: path.join(alice.home, 'uploads', '..', 'api.token') }],
        ['file.get', { message: '0'.repeat(32), to: path.join(alice.home, 'out.bin') }],
      ];
      for (const [method, params] of refused) {
        await assert.rejects(page.call(method, params), (e) => e.code === 1023, `${method} from a page`);
      }
      assert.equal(fs.existsSync(path.join(alice.home, 'b.tern')), false, 'no backup was written');
      // The positive control: the page reads as before, and the CLI's token makes codes.
      assert.equal((await page.call('id.show', {})).user_id, (await alice.json(['id', 'show'])).user_id);
      assert.match(await alice.uiUrl(), /#c=/);
    } finally {
      page.close();
    }
  });

  test('tern ui --sign-out ends every page session at once, also across a restart', T, async () => {
    const [one, two] = [await session(), await session()];
    const open = await asPage(one);
    const closed = new Promise((resolve) => open.ws.once('close', resolve));
    const out = await alice.cli(['ui', '--sign-out']);
    assert.match(out, /ended [2-9]\d* web UI sessions/, out);
    await within('the open page socket to close', closed);
    for (const token of [one, two]) {
      const res = await rawRequest(alice.port, { path: '/api', headers: upgradeHeaders({ 'Sec-WebSocket-Protocol': `tern.v1, tern.session.${token}`, Origin: alice.origin }) });
      assert.equal(res.status, 401, `an ended session: HTTP ${res.status}`);
    }
    // A page signing itself out ends its own session only.
    const [mine, other] = [await session(), await session()];
    const page = await asPage(mine);
    assert.deepEqual(await page.call('ui.sign_out', {}), { ended: 1 });
    page.close();
    await alice.restartSamePort();
    const upgrade = (token) =>
      rawRequest(alice.port, { path: '/api', headers: upgradeHeaders({ 'Sec-WebSocket-Protocol': `tern.v1, tern.session.${token}`, Origin: alice.origin }) });
    assert.equal((await upgrade(mine)).status, 401, 'signed out stays out after a restart');
    assert.equal((await upgrade(other)).status, 101, 'another page rides out the restart');
  });

  test('a one-time code is exchanged once, then refused', T, async () => {
    const code = codeOf(await alice.uiUrl());
    assert.equal((await exchange(code)).status, 200);
    const again = await exchange(code);
    assert.ok(again.status >= 400 && again.status < 500, `second use of a code: HTTP ${again.status}`);
    const made = await exchange('0'.repeat(code.length));
    assert.ok(made.status >= 400 && made.status < 500, `a made-up code: HTTP ${made.status}`);
  });

  test('a page opened with a used code gets no session', T, async () => {
    const url = await alice.uiUrl();
    const first = await newPage(env.browser);
    await first.goto(url);
    await waitFor('the first page to hold a session', () =>
      first.evaluate(() => sessionStorage.getItem('tern.session')),
    );
    const second = await newPage(env.browser);
    await second.goto(url);
    // The page says to run `tern ui` again, and holds no session.
    await byId(second, ids.expired).waitFor();
    assert.equal(await second.evaluate(() => sessionStorage.getItem('tern.session')), null);
    // The first page keeps working.
    await ready(first);
    await first.context().close();
    await second.context().close();
  });

  test('tern ui without --print opens the browser through a 0600 redirect page', T, async () => {
    // The "browser" is `true`: it is given the page's path and does nothing.
    await alice.cli(['ui'], { env: { BROWSER: 'true' } });
    const page = path.join(alice.home, 'ui-open.html');
    assert.equal(fs.statSync(page).mode & 0o777, 0o600, 'the redirect page is readable by its owner only');
    const url = fs.readFileSync(page, 'utf8').match(/url=(http:\/\/127\.0\.0\.1:\d+\/#c=[^"]+)"/)?.[1];
    assert.ok(url, 'the redirect page names a one-time URL');
    assert.equal((await exchange(codeOf(url))).status, 200, 'its code opens a session once');
    assert.notEqual((await exchange(codeOf(url))).status, 200, 'and only once');
  });

  test('responses carry CSP, Referrer-Policy and nosniff', T, async () => {
    const index = await rawRequest(alice.port, { path: '/' });
    assert.equal(index.status, 200);
    const assets = [...index.body.matchAll(/(?:src|href)="(\/ui\/[^"]+)"/g)].map((m) => m[1]);
    assert.ok(assets.length > 0, `index.html names no /ui/ asset:\n${index.body}`);
    const checked = { '/': index, [assets[0]]: await rawRequest(alice.port, { path: assets[0] }) };
    checked['POST /session'] = await exchange(codeOf(await alice.uiUrl()));
    for (const [what, res] of Object.entries(checked)) {
      assert.equal(res.status, 200, `${what}: HTTP ${res.status}`);
      const csp = res.headers['content-security-policy'] ?? '';
      assert.match(csp, /default-src 'none'/, `${what}: Content-Security-Policy ${csp}`);
      assert.match(csp, /frame-ancestors 'none'/, `${what}: Content-Security-Policy ${csp}`);
      assert.equal(res.headers['referrer-policy'], 'no-referrer', `${what}: Referrer-Policy`);
      assert.equal(res.headers['x-content-type-options'], 'nosniff', `${what}: X-Content-Type-Options`);
    }
  });

  test('a foreign Host header (DNS rebinding) is refused with 403 on every route', T, async () => {
    const token = await session();
    const evilHost = `evil.example:${alice.port}`;
    const auth = { Authorization: `Bearer ${token}` };
    const routes = [
      { method: 'GET', path: '/' },
      { method: 'GET', path: '/index.html' },
      { method: 'GET', path: '/ui/app.js' },
      { method: 'POST', path: '/session', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ code: codeOf(await alice.uiUrl()) }) },
      { method: 'POST', path: '/upload?name=a.txt', headers: { ...auth, 'Content-Type': 'application/octet-stream' }, body: 'hello' },
      { method: 'GET', path: `/files/${'0'.repeat(32)}`, headers: auth },
      { method: 'GET', path: '/api', headers: upgradeHeaders({ 'Sec-WebSocket-Protocol': `tern.v1, tern.session.${token}` }) },
      { method: 'GET', path: '/', headers: upgradeHeaders({ Authorization: `Bearer ${alice.token()}` }) },
      { method: 'GET', path: '/no/such/route' },
    ];
    for (const host of [evilHost, 'evil.example', `127.0.0.1.evil.example:${alice.port}`, `localhost:${alice.port + 1}`]) {
      for (const r of routes) {
        const res = await rawRequest(alice.port, { ...r, headers: { ...r.headers, Host: host } });
        assert.equal(res.status, 403, `${r.method} ${r.path} with Host ${host}: HTTP ${res.status}`);
      }
    }
    // The positive control: the same socket with the right Host opens.
    const ok = await rawRequest(alice.port, routes[6]);
    assert.equal(ok.status, 101, `GET /api with the right Host: HTTP ${ok.status}`);
  });

  test('another origin cannot open the WebSocket (checked with raw requests)', T, async () => {
    const token = await session();
    const proto = { 'Sec-WebSocket-Protocol': `tern.v1, tern.session.${token}` };
    const right = await rawRequest(alice.port, { path: '/api', headers: upgradeHeaders({ ...proto, Origin: alice.origin }) });
    assert.equal(right.status, 101, 'the UI origin opens the socket');
    assert.equal(right.headers['sec-websocket-protocol'], 'tern.v1', 'the server picks tern.v1');
    const localhost = await rawRequest(alice.port, {
      path: '/api',
      headers: upgradeHeaders({ ...proto, Origin: `http://localhost:${alice.port}`, Host: `localhost:${alice.port}` }),
    });
    assert.equal(localhost.status, 101, 'http://localhost:PORT is the UI origin too');
    for (const origin of [evil.origin, 'http://evil.example', 'null', `https://127.0.0.1:${alice.port}`, `http://127.0.0.1:${alice.port}.evil.example`]) {
      const res = await rawRequest(alice.port, { path: '/api', headers: upgradeHeaders({ ...proto, Origin: origin }) });
      assert.equal(res.status, 403, `Origin ${origin}: HTTP ${res.status}`);
    }
    const wrong = await rawRequest(alice.port, {
      path: '/api',
      headers: upgradeHeaders({ 'Sec-WebSocket-Protocol': `tern.v1, tern.session.${'0'.repeat(token.length)}`, Origin: alice.origin }),
    });
    assert.ok(wrong.status === 401 || wrong.status === 403, `a made-up session token: HTTP ${wrong.status}`);
  });

  test('another origin cannot POST /session or /upload (checked with raw requests)', T, async () => {
    const code = codeOf(await alice.uiUrl());
    const refused = await exchange(code, evil.origin);
    assert.equal(refused.status, 403, `POST /session from ${evil.origin}: HTTP ${refused.status} ${refused.body}`);
    assert.equal((await exchange(code)).status, 200, 'a refused cross-origin try does not use the code up');
    const token = await session();
    const upload = (origin) =>
      rawRequest(alice.port, {
        method: 'POST',
        path: '/upload?name=a.txt',
        headers: { Origin: origin, Authorization: `Bearer ${token}`, 'Content-Type': 'application/octet-stream' },
        body: 'hello',
      });
    const res = await upload(evil.origin);
    assert.equal(res.status, 403, `POST /upload from ${evil.origin}: HTTP ${res.status} ${res.body}`);
    const own = await upload(alice.origin);
    assert.ok(own.status >= 200 && own.status < 300, `POST /upload from the UI's origin: HTTP ${own.status} ${own.body}`);
  });

  test('a page on another origin cannot use the socket or the POST routes', T, async () => {
    const token = await session();
    const code = codeOf(await alice.uiUrl());
    const page = await newPage(env.browser);
    await page.goto(`${evil.origin}/`);
    const outcome = await within('the cross-origin page to finish its tries', page.evaluate(tries, { api: alice.api, token, code }));
    assert.equal(outcome.socket, 'refused', `WebSocket from ${evil.origin}`);
    assert.equal(outcome.session, 'refused', `fetch POST /session from ${evil.origin}`);
    assert.equal(outcome.upload, 'refused', `fetch POST /upload from ${evil.origin}`);
    // The no-cors POST is opaque to the page; what matters is that it did not use the code.
    assert.equal((await exchange(code)).status, 200, 'the cross-origin page did not use the code up');
    await page.context().close();
    // The positive control: the same socket from a page of the UI's own origin opens.
    const own = await env.openUi(alice);
    await ready(own);
    assert.deepEqual(await own.evaluate(tries, { api: alice.api, token: await session() }), { socket: 'open' });
    await own.context().close();
  });
});
