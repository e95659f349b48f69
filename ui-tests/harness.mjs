// Harness for the browser tests: real `tern-relay` and `tern up` processes on 127.0.0.1 with
// temporary homes, the `tern` CLI, a plain API WebSocket client, and headless Debian Chromium
// driven by playwright-core. Every wait is bounded; every child (relays, nodes, the browser)
// is killed by `Env.close()` and, should the test process die first, by its exit handler.
//
// The binaries come from the environment that tests/tests/ui_browser.rs sets:
//   TERN_BIN, TERN_RELAY_BIN  the debug `tern` and `tern-relay`
//   TERN_CHROMIUM             the browser (default /usr/bin/chromium)
//   TERN_UI_SCREENSHOTS       where screenshots go (default ../target/ui-screenshots)

import { spawn, execFile } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import WebSocket from 'ws';

const here = path.dirname(fileURLToPath(import.meta.url));
const target = path.resolve(here, '..', 'target');

/** Longest wait for a process to print its ready line. */
export const START_TIMEOUT = 30_000;
/** Longest wait for a condition in a test. */
export const WAIT = 20_000;
/** Longest run of one CLI command. */
const CLI_TIMEOUT = 30_000;

export const TERN = process.env.TERN_BIN ?? path.join(target, 'debug', 'tern');
export const TERN_RELAY = process.env.TERN_RELAY_BIN ?? path.join(target, 'debug', 'tern-relay');
export const CHROMIUM = process.env.TERN_CHROMIUM ?? '/usr/bin/chromium';
export const SCREENSHOTS = process.env.TERN_UI_SCREENSHOTS ?? path.join(target, 'ui-screenshots');

/** The flags the browser runs with on this machine's closed network (see .ci/run). */
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

/** The UI's `data-testid` hooks (node/ui/TESTIDS.md), in one place. */
export const ids = {
  offlineBanner: 'offline-banner',
  connectingBanner: 'connecting-banner',
  expired: 'session-expired',
  noSession: 'no-session',
  conversationList: 'conv-list',
  noConversations: 'conv-empty',
  conversation: (id) => `conv-${id}`,
  chat: 'chat',
  composer: 'composer',
  timeline: 'timeline',
  status: (id) => `status-${id}`,
  newGroup: 'open-group-create',
  groupTitle: 'group-title',
  groupMember: (userId) => `group-create-member-${userId}`,
  groupCreate: 'group-create-submit',
  groupInfo: 'group-info-button',
  groupInfoDialog: 'group-info',
  search: 'search',
  searchResult: (id) => `search-hit-${id}`,
  searchResults: 'search-results',
  contacts: 'open-contacts',
  contactMessage: (userId) => `contact-message-${userId}`,
  contactQr: 'my-link-qr',
  safety: 'safety-button',
  safetyQr: 'safety-qr',
  dialogClose: 'dialog-close',
  offlineHint: 'offline-hint',
  presence: (id) => `presence-${id}`,
  unread: (id) => `unread-${id}`,
  unreadDivider: 'unread-divider',
  newMessages: 'new-messages',
  unsentBar: 'unsent-bar',
  retryAll: 'retry-all',
  contactRename: (userId) => `contact-rename-${userId}`,
  contactRenameInput: (userId) => `contact-rename-input-${userId}`,
  contactRenameSave: (userId) => `contact-rename-save-${userId}`,
  contactRenameError: (userId) => `contact-rename-error-${userId}`,
  contactAddLink: 'contact-add-link',
  contactAddSubmit: 'contact-add-submit',
  contactAddUnnamed: 'contact-add-unnamed',
  contactAddError: 'contact-add-error',
  contact: (userId) => `contact-${userId}`,
  emptyAddContact: 'conv-empty-add-contact',
  settings: 'open-settings',
  signOut: 'sign-out',
};

/** Every child this process started, killed on exit whatever happens. */
const children = new Set();
process.on('exit', () => killAll());
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => process.exit(130));
}

/** The environment for `tern` and `tern-relay`: ours, plus `extra`, without TERN_HOME. */
function childEnv(extra = {}) {
  const env = { ...process.env, ...extra };
  delete env.TERN_HOME;
  return env;
}

/**
 * SIGKILLs every child this process started that is still running: the last line of each
 * file's `after`, for whatever a failed or timed-out start left behind.
 */
export function killAll() {
  for (const c of children) {
    try {
      c.kill('SIGKILL');
    } catch {
      // Already gone.
    }
  }
}

/** Resolves after `ms`. */
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `f` every 25 ms until it returns something other than undefined/false, at most `timeout`. */
export async function waitFor(what, f, timeout = WAIT) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined && v !== false && v !== null) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeout} ms waiting for ${what}${last ? `: ${last.message}` : ''}`);
    }
    await sleep(25);
  }
}

/**
 * Checks that `f` stays true for `ms` (polled every 25 ms): for what must NOT happen, such as
 * a message marked read, given the time the page would need to do it. Throws at once if not.
 */
export async function holds(what, f, ms) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (!(await f())) throw new Error(`no longer true: ${what}`);
    await sleep(25);
  }
}

/**
 * Puts the page's WebSocket(s) to the node behind a switch (Playwright's routeWebSocket),
 * before the page opens any: `cut()` drops the open ones and refuses new ones (the node
 * looks down to the page while its HTTP side still serves, so the page can be reloaded);
 * `mend()` lets them through again. `dropRequests(method)` / `dropAnswers(method)` make the
 * requests of that method vanish on their way to the node, or their answers (and every event
 * meanwhile) on the way back.
 */
export async function socketSwitch(page) {
  const sw = { blocked: false, open: new Set(), dropReq: new Set(), dropAns: new Set(), ansIds: new Set() };
  await page.routeWebSocket(/\/api$/, (ws) => {
    if (sw.blocked) {
      ws.close({ code: 1011, reason: 'cut' });
      return;
    }
    const server = ws.connectToServer();
    sw.open.add(ws);
    ws.onClose(() => sw.open.delete(ws));
    ws.onMessage((m) => {
      const req = JSON.parse(m);
      if (sw.dropReq.has(req.method)) return;
      if (sw.dropAns.has(req.method)) sw.ansIds.add(req.id);
      server.send(m);
    });
    server.onMessage((m) => {
      const msg = JSON.parse(m);
      if ((msg.id != null && sw.ansIds.has(msg.id)) || (sw.dropAns.size && msg.method === 'event')) return;
      ws.send(m);
    });
  });
  return {
    async cut() {
      sw.blocked = true;
      for (const ws of [...sw.open]) await ws.close({ code: 1011, reason: 'cut' });
    },
    mend() {
      sw.blocked = false;
      sw.dropReq.clear();
      sw.dropAns.clear();
      sw.ansIds.clear();
    },
    dropRequests(method) {
      sw.dropReq.add(method);
    },
    dropAnswers(method) {
      sw.dropAns.add(method);
    },
  };
}

/** Races `p` against a timer. */
export function within(what, p, timeout = WAIT) {
  let timer;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out after ${timeout} ms: ${what}`)), timeout);
    }),
  ]);
}

/** Spawns a long-running child with stdout piped (lines) and stderr to `log`; tracked for cleanup. */
function spawnTracked(cmd, args, log, env = {}) {
  const err = fs.openSync(log, 'a');
  const child = spawn(cmd, args, {
    stdio: ['ignore', 'pipe', err],
    env: childEnv(env),
  });
  fs.closeSync(err);
  children.add(child);
  child.on('exit', () => children.delete(child));
  const lines = [];
  const waiters = [];
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    lines.push(line);
    for (const w of waiters.splice(0)) w();
  });
  /** The first stdout line (past or future) that `pred` accepts, within `timeout`. */
  child.lineMatching = async (what, pred, timeout = START_TIMEOUT) => {
    const deadline = Date.now() + timeout;
    let seen = 0;
    for (;;) {
      for (; seen < lines.length; seen++) {
        if (pred(lines[seen])) return lines[seen];
      }
      if (child.exitCode !== null || child.signalCode !== null) {
        throw new Error(`${path.basename(cmd)} exited (${child.exitCode ?? child.signalCode}) before ${what}; log ${log}:\n${tail(log)}`);
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${path.basename(cmd)} printed no ${what} within ${timeout} ms; log ${log}:\n${tail(log)}`);
      await new Promise((r) => {
        const t = setTimeout(r, Math.min(left, 200));
        waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  };
  return child;
}

/** The last lines of a log file. */
function tail(file, n = 30) {
  try {
    return fs.readFileSync(file, 'utf8').split('\n').slice(-n).join('\n');
  } catch {
    return '(no log)';
  }
}

/** SIGKILLs a child and waits (bounded) until it is reaped. */
async function kill9(child) {
  if (!child || child.exitCode !== null || child.signalCode !== null) return;
  const gone = new Promise((r) => child.once('exit', r));
  child.kill('SIGKILL');
  await within('a killed process to exit', gone, 10_000).catch(() => {});
}

/** Runs the `tern` CLI once for a home; resolves with stdout, rejects with stderr on failure. */
export function tern(home, args, { timeout = CLI_TIMEOUT, env = {} } = {}) {
  return new Promise((resolve, reject) => {
    execFile(
      TERN,
      ['--home', home, ...args],
      { timeout, killSignal: 'SIGKILL', env: childEnv(env), maxBuffer: 64 << 20 },
      (err, stdout, stderr) => {
        if (err) reject(new Error(`tern ${args.join(' ')} failed (${err.code ?? err.signal}): ${stderr}`));
        else resolve(stdout);
      },
    );
  });
}

/** `tern --json ...`, parsed. */
export async function ternJson(home, args, opts) {
  const out = await tern(home, ['--json', ...args], opts);
  return JSON.parse(out);
}

/** Relay config lifting the per-sender rate limits, for seeding thousands of messages. */
export const UNLIMITED_RATE =
  '[rate]\nrequests_per_sec = 1000000.0\nrequests_burst = 1000000.0\ndeposits_per_sec = 1000000.0\ndeposits_burst = 1000000.0\n';

/** A running `tern-relay`. */
export class Relay {
  constructor(child, addr) {
    this.child = child;
    /** Its TCP multiaddr with /p2p/<id>. */
    this.addr = addr;
  }

  /** `extra` is appended to the relay's TOML config (e.g. `UNLIMITED_RATE`). */
  static async start(dir, extra = '') {
    const data = path.join(dir, 'relay');
    fs.mkdirSync(data, { recursive: true });
    const cfg = path.join(data, 'relay.toml');
    fs.writeFileSync(cfg, `data_dir = ${JSON.stringify(path.join(data, 'db'))}\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n${extra}`);
    const child = spawnTracked(TERN_RELAY, ['--config', cfg], path.join(dir, 'relay.log'), {
      RUST_LOG: process.env.TERN_TEST_LOG ?? 'warn',
    });
    const addr = await child.lineMatching('listen address', (l) => l.startsWith('/ip4/') && l.includes('/tcp/'));
    return new Relay(child, addr);
  }

  async kill() {
    await kill9(this.child);
  }
}

/** A `tern up` process for a home. */
export class Node {
  constructor(home, name, relay) {
    this.home = home;
    this.name = name;
    this.relay = relay;
    this.child = null;
    /** `127.0.0.1:PORT` of the API and UI. */
    this.api = null;
    this.user = null;
    this.device = null;
  }

  /** `tern init --name NAME` in `dir/NAME`, then `tern up`. */
  static async create(dir, name, relay) {
    const node = new Node(path.join(dir, name), name, relay);
    await tern(node.home, ['init', '--name', name]);
    await node.start();
    return node;
  }

  /** Starts `tern up`; `api` defaults to a free port (`127.0.0.1:0`). */
  async start(api = '127.0.0.1:0') {
    const args = ['--home', this.home, 'up', '--relay', this.relay, '--listen', '/ip4/127.0.0.1/tcp/0', '--api', api];
    this.child = spawnTracked(TERN, args, `${this.home}.log`, { TERN_LOG: process.env.TERN_TEST_LOG ?? 'warn' });
    const line = await this.child.lineMatching('ready line', (l) => l.startsWith('ready '));
    const field = (k) => {
      const w = line.split(/\s+/).find((x) => x.startsWith(`${k}=`));
      if (!w) throw new Error(`ready line lacks ${k}: ${line}`);
      return w.slice(k.length + 1);
    };
    this.api = field('api');
    this.user = field('user');
    this.device = field('device');
  }

  /** The API's port. */
  get port() {
    return Number(this.api.split(':').pop());
  }

  /** The UI's origin. */
  get origin() {
    return `http://${this.api}`;
  }

  async kill9() {
    await kill9(this.child);
    this.child = null;
  }

  /** Restarts after a kill on the same API port (a browser page open on it reconnects). */
  async restartSamePort() {
    const port = this.port;
    await this.kill9();
    // The port was ours a moment ago; retry briefly in case the kernel still holds it.
    const deadline = Date.now() + WAIT;
    for (;;) {
      try {
        await this.start(`127.0.0.1:${port}`);
        return;
      } catch (e) {
        if (Date.now() > deadline) throw e;
        await sleep(250);
      }
    }
  }

  cli(args, opts) {
    return tern(this.home, args, opts);
  }

  json(args, opts) {
    return ternJson(this.home, args, opts);
  }

  /** A one-time UI URL (`tern ui --print`): `http://127.0.0.1:PORT/#c=CODE`. */
  async uiUrl() {
    const out = await this.cli(['ui', '--print']);
    const url = out.split(/\s+/).find((w) => /^http:\/\/(127\.0\.0\.1|localhost):\d+\/#c=/.test(w));
    if (!url) throw new Error(`tern ui --print printed no URL: ${JSON.stringify(out)}`);
    return url;
  }

  /** The API bearer token (`api.token`, rewritten by every `tern up`). */
  token() {
    return fs.readFileSync(path.join(this.home, 'api.token'), 'utf8').trim();
  }

  /** A connected plain API client (what the CLI does). */
  async client() {
    return ApiClient.connect(`ws://${this.api}/`, { Authorization: `Bearer ${this.token()}` });
  }
}

/** Makes two nodes contacts of each other; `a` knows `b` as `bName` and vice versa. */
export async function linkPair(a, b, aName, bName) {
  const la = (await a.json(['contact', 'link'])).link;
  const lb = (await b.json(['contact', 'link'])).link;
  await a.cli(['contact', 'add', lb, '--name', bName]);
  await b.cli(['contact', 'add', la, '--name', aName]);
}

/** A JSON-RPC client of a node's API over a plain WebSocket. */
export class ApiClient {
  constructor(ws) {
    this.ws = ws;
    this.next = 1;
    this.pending = new Map();
    /** Listeners for event notifications. */
    this.listeners = new Set();
    ws.on('message', (data) => {
      const msg = JSON.parse(data.toString());
      if (msg.id !== undefined && this.pending.has(msg.id)) {
        const { resolve, reject } = this.pending.get(msg.id);
        this.pending.delete(msg.id);
        if (msg.error) reject(Object.assign(new Error(msg.error.message), { code: msg.error.code }));
        else resolve(msg.result);
      } else if (msg.method === 'event') {
        for (const l of this.listeners) l(msg.params, Date.now());
      }
    });
    ws.on('close', () => {
      for (const { reject } of this.pending.values()) reject(new Error('API connection closed'));
      this.pending.clear();
    });
  }

  static async connect(url, headers, protocols) {
    const ws = new WebSocket(url, protocols, { headers, handshakeTimeout: 10_000 });
    await within(
      `WebSocket to ${url}`,
      new Promise((resolve, reject) => {
        ws.once('open', resolve);
        ws.once('error', reject);
        ws.once('unexpected-response', (_req, res) => reject(new Error(`HTTP ${res.statusCode}`)));
      }),
    );
    return new ApiClient(ws);
  }

  /** Sends a request without waiting (for pipelining); the promise is its answer. */
  request(method, params) {
    const id = this.next++;
    const p = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
    this.ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params }));
    return p;
  }

  call(method, params, timeout = WAIT) {
    return within(`API ${method}`, this.request(method, params), timeout);
  }

  onEvent(f) {
    this.listeners.add(f);
    return () => this.listeners.delete(f);
  }

  close() {
    this.ws.terminate();
  }
}

/**
 * The answer to a raw HTTP request to 127.0.0.1:`port` (node's http module, so the Host and
 * Origin headers are ours to choose): `{status, headers, body}`. An upgrade request resolves
 * with status 101 when the server accepts it.
 */
export function rawRequest(port, { method = 'GET', path: p = '/', headers = {}, body } = {}) {
  return within(
    `${method} ${p}`,
    new Promise((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, method, path: p, headers, agent: false, setHost: !('Host' in headers) });
      req.on('response', (res) => {
        const chunks = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks).toString() }));
      });
      req.on('upgrade', (res, socket) => {
        socket.destroy();
        resolve({ status: res.statusCode, headers: res.headers, body: '' });
      });
      req.on('error', reject);
      if (body !== undefined) req.write(body);
      req.end();
    }),
  );
}

/** The headers of a WebSocket upgrade request (Sec-WebSocket-Key is any 16 bytes, base64). */
export function upgradeHeaders(extra = {}) {
  return {
    Connection: 'Upgrade',
    Upgrade: 'websocket',
    'Sec-WebSocket-Version': '13',
    'Sec-WebSocket-Key': Buffer.from('0123456789abcdef').toString('base64'),
    ...extra,
  };
}

/** A tiny HTTP server on 127.0.0.1 (another origin) serving `html` at every path. */
export async function otherOrigin(html) {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8' });
    res.end(html);
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

/** Headless Debian Chromium through playwright-core, with a fresh temporary profile. */
export async function launchBrowser() {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`no browser at ${CHROMIUM}: run .ci/run (or apt-get install chromium, then npm ci in ui-tests/)`);
  }
  // Playwright gives the browser a new temporary --user-data-dir and removes it on close.
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS, timeout: START_TIMEOUT });
}

/** A page in its own browser context (its own storage) with bounded default waits. */
export async function newPage(browser, { colorScheme = 'light' } = {}) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 800 }, colorScheme });
  context.setDefaultTimeout(WAIT);
  context.setDefaultNavigationTimeout(WAIT);
  const page = await context.newPage();
  page.consoleLines = [];
  page.on('console', (m) => page.consoleLines.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => page.consoleLines.push(`pageerror: ${e.message}`));
  return page;
}

/** A page's `data-testid` locator. */
export const byId = (page, id) => page.locator(`[data-testid="${id}"]`);

/** A temporary directory, removed by `Env.close()`. */
function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/**
 * One test file's world: a relay, nodes by name, the browser; `close()` ends them all.
 * `withContacts` names pairs of nodes to link, each knowing the other by its name.
 */
export class Env {
  constructor() {
    this.dir = tempDir('tern-ui-');
    this.relay = null;
    this.nodes = {};
    this.browser = null;
    this.closers = [];
  }

  static async start(names, { browser = true, relayConfig = '' } = {}) {
    const env = new Env();
    try {
      env.relay = await Relay.start(env.dir, relayConfig);
      const nodes = await Promise.all(names.map((n) => Node.create(env.dir, n, env.relay.addr)));
      for (const n of nodes) env.nodes[n.name] = n;
      for (let i = 0; i < nodes.length; i++) {
        for (let j = i + 1; j < nodes.length; j++) {
          await linkPair(nodes[i], nodes[j], nodes[i].name, nodes[j].name);
        }
      }
      if (browser) env.browser = await launchBrowser();
    } catch (e) {
      await env.close(false);
      throw e;
    }
    return env;
  }

  /** Runs `f` at close (servers, clients). */
  defer(f) {
    this.closers.push(f);
  }

  /** A page for `node`, logged in with a fresh one-time code; waits for the app to load. */
  async openUi(node, opts = {}) {
    const page = await newPage(this.browser, opts);
    const url = await node.uiUrl();
    await page.goto(url);
    return page;
  }

  /** Kills everything; removes the temporary homes unless `keep` (TERN_UI_KEEP=1 keeps them). */
  async close(keep = process.env.TERN_UI_KEEP === '1') {
    for (const f of this.closers.splice(0).reverse()) {
      try {
        await f();
      } catch {
        // Best effort: the processes below must still be killed.
      }
    }
    if (this.browser) await within('the browser to close', this.browser.close(), 15_000).catch(() => {});
    await Promise.all(Object.values(this.nodes).map((n) => n.kill9()));
    if (this.relay) await this.relay.kill();
    if (keep) console.log(`# kept ${this.dir}`);
    else fs.rmSync(this.dir, { recursive: true, force: true });
  }

  /** The tail of a node's log, for failure messages. */
  log(name) {
    return tail(`${this.nodes[name].home}.log`);
  }
}

/** `p`-th percentile (0–100) of numbers, nearest rank. */
export function percentile(xs, p) {
  const s = [...xs].sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const i = Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1));
  return s[i];
}

/** Writes a screenshot `name.png` into SCREENSHOTS. */
export async function screenshot(page, name) {
  fs.mkdirSync(SCREENSHOTS, { recursive: true });
  const file = path.join(SCREENSHOTS, `${name}.png`);
  await page.screenshot({ path: file, fullPage: false });
  return file;
}

/** The timeline row of the message whose text is `text`. */
export const row = (page, text) =>
  page.locator('[data-testid^="msg-"]').filter({ has: page.locator('.text', { hasText: text }) });

/** The ready app: its list (or the empty list's note) is shown and the socket is open. */
export async function ready(page) {
  await page.locator(`[data-testid="${ids.conversationList}"], [data-testid="${ids.noConversations}"]`).first().waitFor();
  await byId(page, ids.connectingBanner).waitFor({ state: 'hidden' });
  await byId(page, ids.offlineBanner).waitFor({ state: 'hidden' });
}

/**
 * Opens the conversation `id` (a contact's user id, or a group id): from the list when it is
 * there, else from the contacts dialog's Message button (a contact never written to).
 */
export async function openChat(page, id) {
  const item = byId(page, ids.conversation(id));
  if (await item.count()) {
    await item.click();
  } else {
    await byId(page, ids.contacts).click();
    await byId(page, ids.contactMessage(id)).click();
  }
  await waitFor(`chat ${id} to open`, async () => (await byId(page, ids.chat).getAttribute('data-conversation', { timeout: 1000 })) === id);
}

/** Types `text` into the open chat's composer and sends it with Enter. */
export async function typeAndSend(page, text) {
  const composer = byId(page, ids.composer);
  await composer.fill(text);
  await composer.press('Enter');
}
