// The page's state: one object replaced piecewise, and a hook that re-renders a component
// only when the slice it selects changes (by identity). Every update makes new objects for
// what changed and keeps the rest, so unchanged rows skip rendering.

import { useEffect, useReducer, useRef } from './vendor/preact-htm.js';

const PREFS_KEY = 'tern.prefs';

function loadPrefs() {
  try {
    const p = JSON.parse(localStorage.getItem(PREFS_KEY) || '{}');
    return {
      notify: ['content', 'name', 'none'].includes(p.notify) ? p.notify : 'name',
      muted: p.muted && typeof p.muted === 'object' ? p.muted : {},
    };
  } catch {
    return { notify: 'name', muted: {} };
  }
}

export function savePrefs(prefs) {
  try {
    localStorage.setItem(PREFS_KEY, JSON.stringify(prefs));
  } catch {
    /* storage disabled: the choice lasts as long as this page */
  }
}

let state = {
  /** 'starting' | 'no-session' | 'expired' | 'error' | 'ready' */
  phase: 'starting',
  phaseError: null,
  /** Socket state: 'connecting' | 'open' | 'offline' | 'expired'. */
  conn: 'connecting',
  /** The socket has been down long enough that the node may have moved (see app.js). */
  offlineLong: false,
  /** Why the session ended: 'signed-out' when this page signed out, else null. */
  ended: null,
  me: null,
  /** id → {id, title, name, last_text, last_activity, unread, group} */
  convs: {},
  /** id → Group */
  groups: {},
  /** user_id → Contact */
  contacts: {},
  /** user_id → {user_id, name, state, last_seen} */
  presence: {},
  openId: null,
  /** The open chat's timeline shows its end (new messages there are seen). */
  atBottom: true,
  /** conversation id → [unsent text] in the order typed (outbox.js) */
  unsent: {},
  /** conversation id → Chat (see chat.js newChat) */
  chats: {},
  /** message id → Transfer */
  transfers: {},
  /** user_ids whose identity key changed and waits to be accepted */
  identityPending: {},
  revoked: false,
  /** {kind, ...} of the open dialog, or null */
  modal: null,
  /** [{id, text, kind}] */
  toasts: [],
  prefs: loadPrefs(),
};

const subscribers = new Set();

export function getState() {
  return state;
}

/** Applies `patch` (an object, or a function of the state returning one) shallowly. */
export function setState(patch) {
  const p = typeof patch === 'function' ? patch(state) : patch;
  if (!p) return;
  state = Object.assign({}, state, p);
  for (const f of subscribers) f();
}

/** Re-renders the calling component when `selector(state)` changes identity. */
export function useStore(selector) {
  const [, force] = useReducer((x) => x + 1, 0);
  const sel = useRef(selector);
  sel.current = selector;
  const value = selector(state);
  const last = useRef(value);
  last.current = value;
  useEffect(() => {
    const f = () => {
      if (sel.current(state) !== last.current) force(null);
    };
    subscribers.add(f);
    f(); // the state may have moved between render and subscription
    return () => subscribers.delete(f);
  }, []);
  return value;
}

let toastId = 0;
/** Shows a short message; `kind` 'error' is announced assertively. */
export function toast(text, kind = 'info') {
  const id = ++toastId;
  setState((s) => ({ toasts: s.toasts.concat([{ id, text, kind }]) }));
  setTimeout(() => setState((s) => ({ toasts: s.toasts.filter((t) => t.id !== id) })), kind === 'error' ? 8000 : 4000);
}

export function errorText(e) {
  if (!e) return 'Unknown error';
  return e.message || String(e);
}
