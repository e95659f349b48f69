// Texts the node has not taken yet, and drafts: both survive a reload of the tab.
//
// They are kept in sessionStorage (this tab only; gone when it closes), per conversation and
// bounded: at most MAX_UNSENT unsent texts, each at most MAX_TEXT_BYTES (the node's text
// limit: a longer one could never be sent), and at most MAX_DRAFTS drafts of that size.
//
// An unsent text is, in `state.unsent[conversation]`, in the order it was typed:
//   queued    not handed to the node yet, or handed and its answer lost (the socket closed,
//             the page reloaded): sent (in order) whenever the socket is open
//   sending   written to the socket, no answer yet
//   failed    the node refused it (`error` says why); Retry / Retry all / Dismiss
//
// Each text has its own key (`key`), sent as the call's `client_id`: the node sends a text
// once under its key, so a text whose answer was lost is simply sent again, and if the node
// had taken it, it answers with the message it has instead of sending a second one.

import { getState, setState } from './store.js';

export const MAX_UNSENT = 500;
export const MAX_TEXT_BYTES = 32 * 1024;
const MAX_DRAFTS = 100;

const UNSENT_KEY = 'tern.unsent';
const DRAFTS_KEY = 'tern.drafts';
/** Typing is written to storage after this pause (and when the page goes away). */
const DRAFT_SAVE_DELAY_MS = 300;
const HEX32 = /^[0-9a-f]{32}$/i;
/** A client key the node takes: 1 to 64 visible ASCII characters. */
const KEY = /^[\x21-\x7e]{1,64}$/;

/** A fresh key for a text (128 random bits). */
function newKey() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  return 'ui-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
}

function textBytes(t) {
  return new TextEncoder().encode(t).length;
}

// ---------------------------------------------------------------- unsent texts

let nextTemp = 0;

function readJson(key) {
  try {
    return JSON.parse(sessionStorage.getItem(key) || 'null');
  } catch {
    return null;
  }
}

function writeJson(key, value) {
  try {
    if (value && Object.keys(value).length) sessionStorage.setItem(key, JSON.stringify(value));
    else sessionStorage.removeItem(key);
  } catch {
    /* storage disabled or full: kept for this page's life only */
  }
}

/** What a previous load of this tab left unsent; a text that was in flight is to be checked. */
export function loadUnsent() {
  const raw = readJson(UNSENT_KEY);
  const unsent = {};
  let count = 0;
  if (raw && typeof raw === 'object') {
    for (const [conv, items] of Object.entries(raw)) {
      if (!HEX32.test(conv) || !Array.isArray(items)) continue;
      const list = [];
      for (const x of items) {
        if (count >= MAX_UNSENT) break;
        if (!x || typeof x.text !== 'string' || !x.text || textBytes(x.text) > MAX_TEXT_BYTES) continue;
        const n = Number(String(x.id || '').replace(/^temp-/, ''));
        if (!Number.isSafeInteger(n) || n <= 0) continue;
        nextTemp = Math.max(nextTemp, n);
        const inFlight = x.state === 'sending' || x.state === 'checking';
        const keyed = typeof x.key === 'string' && KEY.test(x.key);
        // In flight without a key (kept by an older page): the node may have it, and only
        // the person can tell; with one, it is sent again and the node answers what it has.
        const state = x.state === 'failed' || (inFlight && !keyed) ? 'failed' : 'queued';
        const unconfirmed = inFlight && !keyed ? 'The node did not confirm it: it may not have been sent' : null;
        list.push({
          id: 'temp-' + n,
          conversation: conv,
          group: !!x.group,
          text: x.text,
          key: keyed ? x.key : newKey(),
          at: Number(x.at) || Date.now(),
          state,
          error: state === 'failed' ? unconfirmed || (typeof x.error === 'string' ? x.error : null) : null,
        });
        count += 1;
      }
      if (list.length) unsent[conv] = list;
    }
  }
  setState({ unsent });
}

function saveUnsent(unsent) {
  const out = {};
  for (const [conv, items] of Object.entries(unsent)) {
    if (items.length) out[conv] = items.map((x) => ({ id: x.id, group: x.group, text: x.text, key: x.key, at: x.at, state: x.state, error: x.error }));
  }
  writeJson(UNSENT_KEY, out);
}

/** Applies `fn` to the unsent list of `conv` and keeps the result. */
export function patchUnsent(conv, fn) {
  setState((s) => {
    const old = s.unsent[conv] || [];
    const next = fn(old);
    if (next === old) return null;
    const unsent = Object.assign({}, s.unsent);
    if (next.length) unsent[conv] = next;
    else delete unsent[conv];
    saveUnsent(unsent);
    return { unsent };
  });
}

export function unsentCount(s) {
  let n = 0;
  for (const items of Object.values(s.unsent)) n += items.length;
  return n;
}

/** A new unsent text, or null when the bound is reached. */
export function addUnsent(conv, group, text) {
  if (unsentCount(getState()) >= MAX_UNSENT) return null;
  const item = { id: 'temp-' + ++nextTemp, conversation: conv, group, text, key: newKey(), at: Date.now(), state: 'queued', error: null };
  patchUnsent(conv, (list) => list.concat([item]));
  return item;
}

export function setUnsentState(conv, id, state, error = null) {
  patchUnsent(conv, (list) => {
    const at = list.findIndex((x) => x.id === id);
    if (at < 0 || (list[at].state === state && list[at].error === error)) return list;
    const out = list.slice();
    out[at] = Object.assign({}, list[at], { state, error });
    return out;
  });
}

export function dropUnsent(conv, id) {
  patchUnsent(conv, (list) => (list.some((x) => x.id === id) ? list.filter((x) => x.id !== id) : list));
}

// ---------------------------------------------------------------- drafts

let drafts = null;
let draftTimer = null;

function loadDrafts() {
  if (drafts) return drafts;
  drafts = new Map();
  const raw = readJson(DRAFTS_KEY);
  if (raw && typeof raw === 'object') {
    for (const [conv, text] of Object.entries(raw)) {
      if (HEX32.test(conv) && typeof text === 'string' && text && drafts.size < MAX_DRAFTS) drafts.set(conv, text);
    }
  }
  return drafts;
}

function saveDrafts() {
  clearTimeout(draftTimer);
  draftTimer = null;
  const out = {};
  for (const [conv, text] of loadDrafts()) {
    if (textBytes(text) <= MAX_TEXT_BYTES) out[conv] = text;
  }
  writeJson(DRAFTS_KEY, out);
}

export function getDraft(conv) {
  return loadDrafts().get(conv) || '';
}

export function setDraft(conv, text) {
  const d = loadDrafts();
  d.delete(conv);
  if (text) d.set(conv, text);
  while (d.size > MAX_DRAFTS) d.delete(d.keys().next().value);
  clearTimeout(draftTimer);
  draftTimer = setTimeout(saveDrafts, DRAFT_SAVE_DELAY_MS);
}

/** Signing out: what this page kept of unsent texts and drafts goes. */
export function forgetStored() {
  clearTimeout(draftTimer);
  draftTimer = null;
  drafts = new Map();
  writeJson(UNSENT_KEY, null);
  writeJson(DRAFTS_KEY, null);
  setState({ unsent: {} });
}

window.addEventListener('pagehide', () => {
  if (draftTimer) saveDrafts();
});
