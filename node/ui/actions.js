// What the page does with the node: loading, sending, and applying events to the state.

import { Client, RpcError, SessionExpired, authedFetch, sessionFromHash, storedToken } from './api.js';
import { getState, setState, toast, errorText } from './store.js';
import { applyReceipt, prependOlder, statusRank, theirCount, unreadAnchor, upsert } from './timeline.js';
import { notifyMessage } from './notify.js';
import { addUnsent, dropUnsent, forgetStored, loadUnsent, patchUnsent, setUnsentState } from './outbox.js';

/** Messages per history page. */
export const PAGE = 50;
/** Page size and page count when paging back to a search hit. */
const JUMP_PAGE = 200;
const JUMP_MAX_PAGES = 25;
/** Marking an open chat read waits this long, so a burst costs one call. */
const MARK_READ_DELAY_MS = 400;
/** Re-fetching the lists after unknown conversations or lost events waits this long. */
const REFRESH_DELAY_MS = 300;
/** `history`'s largest page; pages of it are loaded back to the first unread message, at most
 * this many. */
const HISTORY_MAX = 500;
/** After a call went unanswered on an open socket, its text is sent again this much later. */
const RESEND_DELAY_MS = 1000;
const UNREAD_MAX_PAGES = 4;
/** API error: the node is stopping and did not take the request (docs/api.md "Errors"). */
const NODE_STOPPING = 1011;
/** After this long without the node the page says it may have moved (a new port). */
const OFFLINE_HINT_MS = 10000;

export let client = null;

// ---------------------------------------------------------------- start

export async function start() {
  let token = null;
  try {
    token = await sessionFromHash();
  } catch (e) {
    if (e instanceof SessionExpired) return setState({ phase: 'expired' });
    return setState({ phase: 'error', phaseError: errorText(e) });
  }
  token = token || storedToken();
  if (!token) return setState({ phase: 'no-session' });
  loadUnsent();
  client = new Client(token, {
    onState: (conn) => {
      if (conn === 'expired') setState({ conn, phase: 'expired' });
      else setState({ conn });
      clearTimeout(offlineTimer);
      if (conn === 'open') setState({ offlineLong: false });
      else if (conn === 'offline' && !getState().offlineLong) {
        offlineTimer = setTimeout(() => {
          if (getState().conn === 'offline') setState({ offlineLong: true });
        }, OFFLINE_HINT_MS);
      }
    },
    onOpen: () => {
      refreshAll();
      resumeUnsent();
    },
    onEvent: (ev) => onEvent(ev),
    onResync: () => scheduleRefresh(true),
  });
  setState({ phase: 'ready' });
  client.connect();
  document.addEventListener('visibilitychange', () => {
    const s = getState();
    if (s.openId && seesLatest(s, s.openId) && (s.convs[s.openId]?.unread || 0) > 0) scheduleMarkRead(s.openId);
  });
}

let offlineTimer = null;

/** Ends this page's session (`ui.sign_out`): the node closes its socket; the page says so. */
export async function signOut() {
  try {
    await call('ui.sign_out', {});
  } catch (e) {
    // The socket may close before the answer comes: the session ended all the same.
    if (!e.unanswered) throw e;
  }
  forgetStored();
  setState({ ended: 'signed-out' });
  client.expire();
}

export function call(method, params) {
  if (!client) return Promise.reject(new Error('not connected'));
  return client.call(method, params);
}

export function fetchAuthed(url, init) {
  return authedFetch(client, url, init);
}

// ---------------------------------------------------------------- lists

let refreshTimer = null;
let refreshDropsChats = false;

/** Re-fetches lists soon; `dropChats` also reloads the open chat (events were lost). */
export function scheduleRefresh(dropChats) {
  refreshDropsChats = refreshDropsChats || !!dropChats;
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    const drop = refreshDropsChats;
    refreshDropsChats = false;
    if (drop) refreshAll();
    else refreshLists();
  }, REFRESH_DELAY_MS);
}

/** After every (re)connection or loss of events: lists, then the open chat from scratch. */
export async function refreshAll() {
  const s = getState();
  // Cached chats may have missed events: keep only the open one, reloaded below.
  const keep = {};
  if (s.openId && s.chats[s.openId]) keep[s.openId] = s.chats[s.openId];
  setState({ chats: keep });
  await Promise.all([
    call('id.show').then((me) => setState({ me }), ignore),
    refreshLists(),
    refreshPresence(),
    call('file.transfers').then((list) => {
      const transfers = {};
      for (const t of list || []) transfers[t.id] = t;
      setState((st) => ({ transfers: Object.assign({}, st.transfers, transfers) }));
    }, ignore),
  ]);
  const open = getState().openId;
  if (open) await loadLatest(open, { reload: true });
}

export async function refreshLists() {
  try {
    const [convList, groupList, contactList] = await Promise.all([
      call('conversations'),
      call('group_list'),
      call('contact.list'),
    ]);
    const groups = {};
    for (const g of groupList || []) groups[g.id] = g;
    const contacts = {};
    const identityPending = {};
    for (const c of contactList || []) {
      contacts[c.user_id] = c;
      if (c.identity_change_pending) identityPending[c.user_id] = true;
    }
    const convs = {};
    const openId = getState().openId;
    for (const c of convList || []) {
      convs[c.id] = Object.assign({}, c, { group: !!groups[c.id], unread: seesLatest(getState(), c.id) ? 0 : c.unread });
    }
    for (const g of Object.values(groups)) {
      if (!convs[g.id]) {
        convs[g.id] = { id: g.id, title: g.title, name: g.title, last_text: null, last_activity: 0, unread: g.unread || 0, group: true };
      }
    }
    // A chat opened before it had a conversation (a new contact) stays listed.
    const prev = getState().convs;
    if (openId && !convs[openId] && prev[openId]) convs[openId] = prev[openId];
    setState({ convs, groups, contacts, identityPending });
  } catch (e) {
    if (!(e instanceof SessionExpired)) toast('Could not load conversations: ' + errorText(e), 'error');
  }
}

export async function refreshPresence(contact) {
  try {
    const list = await call('presence', contact ? { contact } : {});
    setState((s) => {
      const presence = Object.assign({}, s.presence);
      for (const p of list || []) presence[p.user_id] = p;
      return { presence };
    });
  } catch {
    /* presence is a nicety: the relays may be unreachable */
  }
}

export function convName(s, id) {
  const c = s.convs[id];
  return (
    (c && (c.name || c.title)) ||
    (s.groups[id] && s.groups[id].title) ||
    (s.contacts[id] && s.contacts[id].name) ||
    (id ? id.slice(0, 8) : '')
  );
}

export function isGroup(s, id) {
  return !!(s.groups[id] || (s.convs[id] && s.convs[id].group));
}

function target(s, id) {
  return isGroup(s, id) ? { group: id } : { contact: id };
}

function visible() {
  return document.visibilityState === 'visible';
}

/** Whether new messages of `id` are seen as they come: open, shown, and scrolled to its end. */
function seesLatest(s, id) {
  return s.openId === id && visible() && s.atBottom;
}

/** The open chat's timeline reached its end, or left it: at the end, what came is read. */
export function noteAtBottom(id, at) {
  const s = getState();
  if (s.atBottom === at) return;
  setState({ atBottom: at });
  if (at && seesLatest(getState(), id) && (s.convs[id]?.unread || 0) > 0) scheduleMarkRead(id);
}

function ignore() {}

// ---------------------------------------------------------------- chats

function newChat() {
  return { messages: [], loaded: false, loading: false, hasMore: true, anchor: null, uploads: [], target: null, error: null, version: 0 };
}

function patchChat(id, fn) {
  setState((s) => {
    const old = s.chats[id] || newChat();
    const next = fn(old);
    if (next === old) return null;
    return { chats: Object.assign({}, s.chats, { [id]: next }) };
  });
}

function patchConv(id, fn) {
  setState((s) => {
    const old = s.convs[id];
    const next = fn(old);
    if (!next || next === old) return null;
    return { convs: Object.assign({}, s.convs, { [id]: next }) };
  });
}

/** Opens a conversation; `targetId` scrolls to (and loads back to) that message. */
export function openConversation(id, targetId) {
  const s = getState();
  if (!s.convs[id]) {
    // A contact with no messages yet: list it so it can be opened and written to.
    const c = s.contacts[id];
    patchConv(id, () => ({ id, title: null, name: c ? c.name : null, last_text: null, last_activity: 0, unread: 0, group: !!s.groups[id] }));
  }
  setState({ openId: id, modal: null, atBottom: true });
  try {
    sessionStorage.setItem('tern.open', id);
  } catch {
    /* not kept across reloads then */
  }
  const chat = getState().chats[id];
  if (targetId) patchChat(id, (c) => Object.assign({}, c, { target: targetId }));
  if (chat && chat.loaded && !targetId && (getState().convs[id]?.unread || 0) > 0) {
    // Kept from before, with unread messages since: loaded again, to open at the first of them.
    patchChat(id, (c) => Object.assign({}, c, { loaded: false }));
    loadLatest(id, { reload: true, markRead: visible() });
  } else if (!chat || !chat.loaded) loadLatest(id, { targetId });
  else {
    if (targetId) findMessage(id, targetId);
    if ((getState().convs[id]?.unread || 0) > 0) scheduleMarkRead(id);
  }
  if (!isGroup(getState(), id)) refreshPresence(id);
}

/** Closes the open chat (narrow windows show the list or a chat, not both). */
export function closeConversation() {
  setState({ openId: null });
  try {
    sessionStorage.removeItem('tern.open');
  } catch {
    /* storage disabled */
  }
}

/**
 * Loads the newest page, and older ones back to the first unread message (bounded); with
 * `reload`, replaces what was loaded. Opening a chat reads it; reloading one does only when
 * its end is in view.
 */
export async function loadLatest(id, opts = {}) {
  const s = getState();
  const unread = (s.convs[id] && s.convs[id].unread) || 0;
  const markRead = opts.markRead ?? (opts.reload ? seesLatest(s, id) : visible());
  patchChat(id, (c) => Object.assign({}, c, { loading: true, error: null }));
  const method = isGroup(s, id) ? 'group_history' : 'history';
  try {
    const first = Math.min(HISTORY_MAX, Math.max(PAGE, unread + PAGE));
    let page = await call(method, Object.assign(target(s, id), { limit: first, mark_read: markRead }));
    let more = page.length >= first;
    for (let i = 0; more && page.length && theirCount(page) < unread && i < UNREAD_MAX_PAGES; i++) {
      const older = await call(method, Object.assign(target(s, id), { limit: HISTORY_MAX, before: page[0].id }));
      page = prependOlder(page, older);
      more = older.length >= HISTORY_MAX;
    }
    patchChat(id, (c) => {
      const messages = opts.reload || !c.loaded ? page : prependOlder(c.messages, page);
      const fresh = !c.loaded || opts.reload;
      return Object.assign({}, c, {
        messages,
        loaded: true,
        loading: false,
        hasMore: more,
        anchor: fresh ? unreadAnchor(page, unread) : c.anchor,
        // Not every unread message could be loaded: the divider says there are more above.
        anchorPartial: fresh ? unread > 0 && theirCount(page) < unread : c.anchorPartial,
        version: c.version + 1,
      });
    });
    if (markRead) patchConv(id, (c) => c && c.unread ? Object.assign({}, c, { unread: 0 }) : c);
    if (opts.targetId) await findMessage(id, opts.targetId);
  } catch (e) {
    patchChat(id, (c) => Object.assign({}, c, { loading: false, error: errorText(e) }));
  }
}

/** Loads the page before the oldest loaded message. */
export async function loadOlder(id, limit = PAGE) {
  const s = getState();
  const chat = s.chats[id];
  if (!chat || chat.loading || !chat.hasMore) return false;
  const oldest = chat.messages.find((m) => !m.temp);
  if (!oldest) return false;
  patchChat(id, (c) => Object.assign({}, c, { loading: true }));
  const method = isGroup(s, id) ? 'group_history' : 'history';
  try {
    const page = await call(method, Object.assign(target(s, id), { limit, before: oldest.id }));
    patchChat(id, (c) => Object.assign({}, c, {
      messages: prependOlder(c.messages, page),
      loading: false,
      hasMore: page.length >= limit,
      version: c.version + 1,
    }));
    return page.length > 0;
  } catch (e) {
    patchChat(id, (c) => Object.assign({}, c, { loading: false, hasMore: !(e instanceof RpcError && e.code === 1006) }));
    return false;
  }
}

/** Pages back (bounded) until `msgId` is loaded, then marks it as the target to show. */
export async function findMessage(id, msgId) {
  for (let i = 0; i < JUMP_MAX_PAGES; i++) {
    const chat = getState().chats[id];
    if (!chat) return;
    if (chat.messages.some((m) => m.id === msgId)) break;
    if (!chat.hasMore) break;
    if (chat.loading) await new Promise((r) => setTimeout(r, 50));
    else if (!(await loadOlder(id, JUMP_PAGE))) break;
  }
  const chat = getState().chats[id];
  if (chat && !chat.messages.some((m) => m.id === msgId)) toast('That message is too far back to show here.');
  patchChat(id, (c) => Object.assign({}, c, { target: msgId, targetSeq: (c.targetSeq || 0) + 1 }));
}

let tempId = 0;

/**
 * Sends a text: shown at once as unsent (outbox.js), sent in the order typed whenever the
 * node is reachable, and replaced by the node's Message. Refused only past the outbox's bound.
 */
export function sendText(id, text) {
  const item = addUnsent(id, isGroup(getState(), id), text);
  if (!item) {
    toast('Too many messages wait for the node: dismiss some, or wait until it is back.', 'error');
    return false;
  }
  pumpUnsent(id);
  return true;
}

/** Ids of unsent texts whose call is under way. */
const inFlight = new Set();

/** Hands the queued texts of `id` to the node, in order (pipelined requests keep it). */
export function pumpUnsent(id) {
  if (!client || client.state !== 'open') return;
  for (const item of getState().unsent[id] || []) {
    if (item.state !== 'queued' || inFlight.has(item.id)) continue;
    inFlight.add(item.id);
    sendUnsent(item).finally(() => inFlight.delete(item.id));
  }
}

async function sendUnsent(item) {
  const id = item.conversation;
  const params = Object.assign(item.group ? { group: id } : { contact: id }, { text: item.text, client_id: item.key });
  setUnsentState(id, item.id, 'sending');
  let m;
  try {
    m = await call(item.group ? 'group_send' : 'send', params);
  } catch (e) {
    if (e instanceof SessionExpired) return;
    if (e.unanswered || (e instanceof RpcError && e.code === NODE_STOPPING)) {
      // Sent again under its key once connected again (or in a moment, if the socket stayed
      // open): if the node took it, it answers with the message it has rather than sending
      // a second one. A stopping node is waited for until the page reconnects.
      setUnsentState(id, item.id, 'queued');
      if (e.unanswered) setTimeout(() => pumpUnsent(id), RESEND_DELAY_MS);
    } else if (e instanceof RpcError) {
      setUnsentState(id, item.id, 'failed', errorText(e));
      toast('Not sent: ' + errorText(e), 'error');
    } else {
      // Never reached the node (it went away meanwhile): sent when it is back.
      setUnsentState(id, item.id, 'queued');
    }
    return;
  }
  dropUnsent(id, item.id);
  const chat = getState().chats[id];
  if (chat && chat.loaded) patchChat(id, (c) => Object.assign({}, c, { messages: upsert(c.messages, withReceipts(m)) }));
  noteInConv(m);
}

/** Once connected: what waits is sent, in order. */
function resumeUnsent() {
  for (const id of Object.keys(getState().unsent)) pumpUnsent(id);
}

/** Sends a failed text again (Retry), or every failed text of the chat (Retry all). */
export function retryUnsent(id, itemId) {
  patchUnsent(id, (list) => list.map((x) => (x.state === 'failed' && (!itemId || x.id === itemId)
    ? Object.assign({}, x, { state: 'queued', error: null }) : x)));
  pumpUnsent(id);
}

/** Drops an unsent text (Dismiss). One handed to the node and not answered yet stays. */
export function dismissUnsent(id, itemId) {
  const item = (getState().unsent[id] || []).find((x) => x.id === itemId);
  if (!item || item.state === 'sending') return;
  dropUnsent(id, itemId);
}

/**
 * Files this page handed to the node, by transfer id, kept until sent (at most
 * KEPT_FILES): one the node could not prepare as an image can be sent again as a file.
 */
const keptFiles = new Map();
const KEPT_FILES = 20;

/** Whether the page still holds the file of upload `tid` (to send it again as a file). */
export function holdsFile(tid) {
  return keptFiles.has(tid);
}

/** Sends the file of a failed upload again, as it is (`as_file`): for an image the node cannot read. */
export function sendAsFile(id, tid) {
  const kept = keptFiles.get(tid);
  if (!kept) return;
  keptFiles.delete(tid);
  dismissUpload(id, tid);
  sendFile(id, kept.file, kept.caption, true);
}

/** Uploads a file's bytes to the node, then asks it to send them (`asFile`: as it is). */
export async function sendFile(id, file, caption, asFile = false) {
  const s = getState();
  const localId = 'upload-' + ++tempId;
  const placeholder = { id: localId, direction: 'up', state: 'queued', bytes: 0, total: file.size, name: file.name, local: true };
  setState((st) => ({ transfers: Object.assign({}, st.transfers, { [localId]: placeholder }) }));
  patchChat(id, (c) => Object.assign({}, c, { uploads: c.uploads.concat([localId]) }));
  // The message may already be here (its event came before the answer): then no row.
  const swap = (tid) => patchChat(id, (c) => Object.assign({}, c, {
    uploads: c.messages.some((m) => m.id === tid)
      ? c.uploads.filter((u) => u !== localId)
      : c.uploads.map((u) => (u === localId ? tid : u)),
  }));
  try {
    const res = await fetchAuthed('/upload?name=' + encodeURIComponent(file.name), { method: 'POST', body: file });
    if (!res.ok) throw new Error(`upload refused (HTTP ${res.status}${await res.text().then((t) => (t ? ': ' + t : ''), () => '')})`);
    const { path } = await res.json();
    const params = Object.assign(target(s, id), { path });
    if (caption) params.caption = caption;
    if (asFile) params.as_file = true;
    const t = await call('file.send', params);
    keptFiles.set(t.id, { file, caption });
    if (keptFiles.size > KEPT_FILES) keptFiles.delete(keptFiles.keys().next().value);
    setState((st) => {
      const transfers = Object.assign({}, st.transfers);
      delete transfers[localId];
      // An event may already have moved it on.
      if (!transfers[t.id]) transfers[t.id] = t;
      return { transfers };
    });
    swap(t.id);
  } catch (e) {
    setState((st) => ({
      transfers: Object.assign({}, st.transfers, { [localId]: Object.assign({}, placeholder, { state: 'failed', code: errorText(e) }) }),
    }));
    toast(`${file.name} not sent: ${errorText(e)}`, 'error');
  }
}

export function dismissUpload(id, tid) {
  keptFiles.delete(tid);
  patchChat(id, (c) => Object.assign({}, c, { uploads: c.uploads.filter((u) => u !== tid) }));
}

const markTimers = new Map();

/** Marks an open conversation read (and sends read receipts) after a short pause. */
export function scheduleMarkRead(id) {
  patchConv(id, (c) => (c && c.unread ? Object.assign({}, c, { unread: 0 }) : c));
  // The received messages shown now are the ones read: one that comes during the delay,
  // unseen, stays unread (the node's `read` event then says how many are left).
  const chat = getState().chats[id];
  const seen = markSeen.get(id) || new Set();
  for (const m of chat && chat.loaded ? chat.messages : []) {
    if (!m.own && m.status === 'received') seen.add(m.id);
  }
  markSeen.set(id, seen);
  clearTimeout(markTimers.get(id));
  markTimers.set(id, setTimeout(() => {
    markTimers.delete(id);
    markSeen.delete(id);
    const s = getState();
    const method = isGroup(s, id) ? 'group_history' : 'history';
    const ids = [...seen].slice(-HISTORY_MAX);
    const mark = chat && chat.loaded ? { mark_read_ids: ids } : { mark_read: true };
    if (mark.mark_read_ids && !ids.length) return;
    call(method, Object.assign(target(s, id), { limit: 1 }, mark)).catch(ignore);
  }, MARK_READ_DELAY_MS));
}

/** The received messages seen in each chat since its last mark was sent. */
const markSeen = new Map();

// ---------------------------------------------------------------- events

/** Receipts that came before their message: id → best status. */
const earlyReceipts = new Map();
const EARLY_RECEIPTS_MAX = 2000;

function withReceipts(m) {
  const r = earlyReceipts.get(m.id);
  if (r && statusRank(r) > statusRank(m.status)) return Object.assign({}, m, { status: r });
  return m;
}

function previewOf(m) {
  if (m.kind === 'file') return 'File: ' + (m.text || (m.media && m.media.name) || 'file');
  return m.text;
}

/** Updates the conversation list for a message (sent here, or received). */
function noteInConv(m, fresh) {
  const s = getState();
  const id = m.conversation;
  const openAndSeen = seesLatest(s, id);
  const counts = fresh && !m.own && m.kind !== 'membership' && m.status !== 'read';
  const time = Math.max(m.received_at || 0, m.sent_at || 0);
  if (!s.convs[id]) scheduleRefresh(false);
  // The first message of the open chat not seen as it came: the divider goes before it.
  if (counts && !openAndSeen && s.openId === id && !(s.convs[id]?.unread > 0) && s.chats[id]?.loaded) {
    patchChat(id, (c) => Object.assign({}, c, { anchor: m.id, anchorPartial: false }));
  }
  patchConv(id, (c) => {
    const base = c || { id, title: null, name: m.own ? null : m.sender_name, last_text: null, last_activity: 0, unread: 0, group: !!s.groups[id] };
    return Object.assign({}, base, {
      last_text: time >= base.last_activity || !base.last_text ? previewOf(m) : base.last_text,
      last_activity: Math.max(base.last_activity, time),
      unread: counts && !openAndSeen ? base.unread + 1 : base.unread,
    });
  });
  if (counts && openAndSeen) scheduleMarkRead(id);
}

/**
 * An own text's event can come before the answer to `send`: the oldest unsent text with the
 * same text whose call is under way stands for it, so the two are not both shown.
 */
function dropMatchingUnsent(m) {
  if (!m.own || m.kind !== 'text') return;
  // The oldest such text not failed: only if its call is under way is it this one (an older
  // one waiting to be sent again may be it, and a newer one then is not).
  const item = (getState().unsent[m.conversation] || []).find((x) => x.state !== 'failed' && x.text === m.text);
  if (item && item.state === 'sending') dropUnsent(m.conversation, item.id);
}

function onMessage(m) {
  const s = getState();
  const id = m.conversation;
  const known = s.chats[id] && s.chats[id].messages.some((x) => x.id === m.id);
  if (!known) dropMatchingUnsent(m);
  if (s.chats[id] && s.chats[id].loaded) {
    patchChat(id, (c) => Object.assign({}, c, {
      messages: upsert(c.messages, withReceipts(m)),
      uploads: c.uploads.filter((u) => u !== m.id),
    }));
  } else if (s.chats[id]) {
    patchChat(id, (c) => Object.assign({}, c, { uploads: c.uploads.filter((u) => u !== m.id) }));
  }
  noteInConv(m, !known);
  if (!m.own && !known && m.kind !== 'membership') notifyMessage(m, getState(), openConversation);
}

function onEvent(ev) {
  switch (ev.type) {
    case 'message':
      return onMessage(ev.message);
    case 'receipt': {
      for (const id of ev.ids || []) {
        if (statusRank(ev.status) > statusRank(earlyReceipts.get(id))) earlyReceipts.set(id, ev.status);
      }
      while (earlyReceipts.size > EARLY_RECEIPTS_MAX) earlyReceipts.delete(earlyReceipts.keys().next().value);
      if (getState().chats[ev.conversation]) {
        patchChat(ev.conversation, (c) => {
          const messages = applyReceipt(c.messages, ev.ids || [], ev.status);
          return messages === c.messages ? c : Object.assign({}, c, { messages });
        });
      }
      return;
    }
    case 'presence':
      return setState((s) => ({ presence: Object.assign({}, s.presence, { [ev.presence.user_id]: ev.presence }) }));
    case 'group': {
      const g = ev.group;
      setState((s) => ({ groups: Object.assign({}, s.groups, { [g.id]: g }) }));
      patchConv(g.id, (c) => Object.assign({}, c || { id: g.id, last_text: null, last_activity: Date.now(), unread: 0 }, { title: g.title, name: g.title, group: true }));
      return;
    }
    case 'notification': {
      const s = getState();
      if (seesLatest(s, ev.conversation)) return;
      patchConv(ev.conversation, (c) => (c ? Object.assign({}, c, { unread: Math.max(c.unread, ev.unread || 0) }) : c));
      return;
    }
    case 'read': {
      // Read here (this page, another tab, the CLI): as many are left unread as it says.
      const unread = Number.isSafeInteger(ev.unread) && ev.unread > 0 ? ev.unread : 0;
      return patchConv(ev.conversation, (c) => (c && c.unread !== unread ? Object.assign({}, c, { unread }) : c));
    }
    case 'transfer':
      if (ev.transfer.state === 'done') keptFiles.delete(ev.transfer.id);
      return setState((s) => ({ transfers: Object.assign({}, s.transfers, { [ev.transfer.id]: ev.transfer }) }));
    case 'identity_changed': {
      setState((s) => ({ identityPending: Object.assign({}, s.identityPending, { [ev.user_id]: true }) }));
      const s = getState();
      toast(`${convName(s, ev.user_id)}'s identity key changed: sending to them is blocked until you accept it.`, 'error');
      scheduleRefresh(false);
      return;
    }
    case 'revoked':
      setState({ revoked: true });
      return;
    case 'device_link':
      if (ev.link === 'confirmed') toast('The new device confirmed the link.');
      else toast('The new device did not confirm the link in time. Revoke it in Devices if it is not yours.', 'error');
      return;
    case 'undecryptable': {
      const s = getState();
      const who = convName(s, ev.user_id);
      const why = ev.reason === 'message_key_gone' ? ' (asked them to send it again)' : '';
      toast(`A message from ${who} could not be decrypted${why}.`, 'error');
      return;
    }
    case 'peer':
      if (ev.user_id) refreshPresence(ev.user_id);
      return;
    default:
      return;
  }
}

// ---------------------------------------------------------------- contacts

/** Accepts a contact's new identity key. */
export async function acceptIdentity(userId) {
  const res = await call('contact.accept', { contact: userId });
  setState((s) => {
    const identityPending = Object.assign({}, s.identityPending);
    delete identityPending[userId];
    return { identityPending, contacts: Object.assign({}, s.contacts, { [res.contact.user_id]: res.contact }) };
  });
  return res;
}

/** Replaces a group in the state after a change the node answered with. */
export function putGroup(g) {
  setState((s) => ({ groups: Object.assign({}, s.groups, { [g.id]: g }) }));
  patchConv(g.id, (c) => Object.assign({}, c || { id: g.id, last_text: null, last_activity: Date.now(), unread: 0 }, { title: g.title, name: g.title, group: true }));
}
