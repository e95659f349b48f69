// The page's link to the node: the one-time code → session token exchange, and the
// JSON-RPC 2.0 WebSocket client with reconnection and event sequencing.

export const SESSION_KEY = 'tern.session';

/** Backoff between reconnection attempts: starts here, doubles, stops growing at the cap. */
const BACKOFF_START_MS = 500;
const BACKOFF_CAP_MS = 5000;
/** A request with no answer by then fails (contact.add may wait 10 s for a relay). */
const CALL_TIMEOUT_MS = 60000;
/** How long a call made while (re)connecting waits for the socket to open. */
const QUEUE_WAIT_MS = 15000;
/** Refusals of the socket while the HTTP server answers, before the session counts as gone. */
const REFUSALS_BEFORE_EXPIRED = 3;

/** An error answer from the node: `code` as in docs/api.md "Errors". */
export class RpcError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}

/** The node no longer accepts this page's session: the person must run `tern ui` again. */
export class SessionExpired extends Error {}

/** A copy of `err` marked as the failure of a request that was written but not answered. */
function unanswered(err) {
  const e = err instanceof SessionExpired ? new SessionExpired(err.message) : new Error(err.message);
  e.unanswered = true;
  return e;
}

export function storedToken() {
  try {
    return sessionStorage.getItem(SESSION_KEY);
  } catch {
    return null;
  }
}

export function forgetToken() {
  try {
    sessionStorage.removeItem(SESSION_KEY);
  } catch {
    /* storage disabled: nothing to forget */
  }
}

/**
 * Takes `c=CODE` out of the address (at once, so it is neither reloaded nor bookmarked) and
 * trades it for a session token. Returns the token, or null when the address had no code.
 * Throws SessionExpired when the server refuses the code.
 */
export async function sessionFromHash() {
  const hash = location.hash.replace(/^#/, '');
  const params = new URLSearchParams(hash);
  const code = params.get('c');
  if (!code) return null;
  history.replaceState(null, '', '/');
  const res = await fetch('/session', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ code }),
  });
  if (res.status >= 400 && res.status < 500) throw new SessionExpired('code refused');
  if (!res.ok) throw new Error(`session exchange failed: HTTP ${res.status}`);
  const { token } = await res.json();
  if (typeof token !== 'string' || !token) throw new Error('session exchange: no token');
  try {
    sessionStorage.setItem(SESSION_KEY, token);
  } catch {
    /* storage disabled: the session lasts as long as this page */
  }
  return token;
}

/**
 * fetch() with the session's bearer token; a 401/403 calls `onExpired` and throws
 * SessionExpired.
 */
export async function authedFetch(client, url, init = {}) {
  const headers = Object.assign({}, init.headers, { Authorization: 'Bearer ' + client.token });
  const res = await fetch(url, Object.assign({}, init, { headers }));
  if (res.status === 401 || res.status === 403) {
    client.expire();
    throw new SessionExpired(`HTTP ${res.status}`);
  }
  return res;
}

/**
 * One logical connection to the node that survives socket drops.
 *
 * handlers: onState(state) with state 'connecting' | 'open' | 'offline' | 'expired';
 * onOpen() after every (re)connection, once subscribed (the place to re-fetch);
 * onEvent(event); onResync(reason) when events were lost (a seq gap or `lagged`).
 */
export class Client {
  constructor(token, handlers) {
    this.token = token;
    this.h = handlers;
    this.ws = null;
    this.state = 'connecting';
    this.nextId = 1;
    /** id → {resolve, reject, timer}: answers come in any order. */
    this.pending = new Map();
    /** Calls made while the socket is not open: [{send, reject, timer}]. */
    this.queue = [];
    this.backoff = BACKOFF_START_MS;
    this.retryTimer = null;
    /** Last event seq on the current socket; seq restarts with every connection. */
    this.lastSeq = null;
    this.refusals = 0;
    this.stopped = false;
  }

  connect() {
    if (this.stopped) return;
    let ws;
    try {
      ws = new WebSocket(`ws://${location.host}/api`, ['tern.v1', 'tern.session.' + this.token]);
    } catch {
      this.retry(false);
      return;
    }
    this.ws = ws;
    let opened = false;
    ws.onopen = () => {
      opened = true;
      this.refusals = 0;
      this.backoff = BACKOFF_START_MS;
      this.lastSeq = null;
      this.afterOpen(ws);
    };
    ws.onmessage = (e) => this.receive(e.data);
    ws.onerror = () => {
      /* a close always follows */
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.failPending(new Error('Node offline'));
      if (this.stopped) return;
      this.retry(!opened);
    };
  }

  async afterOpen(ws) {
    try {
      await this.rawCall(ws, 'subscribe', {});
    } catch {
      return; // the close handler takes over
    }
    if (this.ws !== ws) return;
    this.setState('open');
    const queued = this.queue;
    this.queue = [];
    for (const q of queued) {
      clearTimeout(q.timer);
      q.send();
    }
    this.h.onOpen && this.h.onOpen();
  }

  async retry(neverOpened) {
    this.setState('offline');
    if (neverOpened) {
      // The browser hides why an upgrade failed: ask the HTTP side whether this session
      // is still known, to tell "node down" from "session refused".
      const verdict = await this.probe();
      if (verdict === 'expired') return this.expire();
      if (verdict === 'up') {
        this.refusals += 1;
        if (this.refusals >= REFUSALS_BEFORE_EXPIRED) return this.expire();
      }
    }
    if (this.stopped) return;
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, BACKOFF_CAP_MS);
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.connect(), wait);
  }

  /** 'expired' (401/403), 'up' (answers otherwise) or 'down' (no answer). */
  async probe() {
    try {
      const res = await fetch('/files/probe', {
        headers: { Authorization: 'Bearer ' + this.token },
        cache: 'no-store',
      });
      if (res.status === 401 || res.status === 403) return 'expired';
      return 'up';
    } catch {
      return 'down';
    }
  }

  /** The session is gone: stop for good and say so. */
  expire() {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.retryTimer);
    forgetToken();
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close();
    }
    this.failPending(new SessionExpired('session expired'));
    this.setState('expired');
  }

  setState(s) {
    if (this.state === s) return;
    this.state = s;
    this.h.onState && this.h.onState(s);
  }

  failPending(err) {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(unanswered(err));
    }
    this.pending.clear();
    if (this.state === 'expired' || this.stopped) {
      for (const q of this.queue) {
        clearTimeout(q.timer);
        q.reject(err);
      }
      this.queue = [];
    }
  }

  receive(data) {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;
    }
    if (msg && msg.method === 'event' && msg.params) {
      const ev = msg.params;
      if (typeof ev.seq === 'number') {
        const gap = this.lastSeq !== null && ev.seq !== this.lastSeq + 1;
        this.lastSeq = ev.seq;
        if (gap) this.h.onResync && this.h.onResync('gap');
      }
      if (ev.type === 'lagged') {
        this.h.onResync && this.h.onResync('lagged');
        return;
      }
      this.h.onEvent && this.h.onEvent(ev);
      return;
    }
    if (msg && msg.id != null && this.pending.has(msg.id)) {
      const p = this.pending.get(msg.id);
      this.pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error) p.reject(new RpcError(msg.error.code, msg.error.message || 'error'));
      else p.resolve(msg.result);
    }
  }

  rawCall(ws, method, params) {
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(unanswered(new Error(`${method}: no answer from the node`)));
      }, CALL_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      try {
        ws.send(JSON.stringify({ jsonrpc: '2.0', id, method, params: params || {} }));
      } catch (e) {
        this.pending.delete(id);
        clearTimeout(timer);
        reject(e);
      }
    });
  }

  /**
   * Calls a method; waits a little for the socket when it is reconnecting. A failure whose
   * error has `unanswered` set came after the request was written to the socket: the node may
   * have carried it out.
   */
  call(method, params) {
    if (this.stopped) return Promise.reject(new SessionExpired('session expired'));
    if (this.ws && this.state === 'open') return this.rawCall(this.ws, method, params);
    return new Promise((resolve, reject) => {
      const q = {
        send: () => this.rawCall(this.ws, method, params).then(resolve, reject),
        reject,
        timer: setTimeout(() => {
          this.queue = this.queue.filter((x) => x !== q);
          reject(new Error('Node offline'));
        }, QUEUE_WAIT_MS),
      };
      this.queue.push(q);
    });
  }
}
