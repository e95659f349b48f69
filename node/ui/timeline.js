// Pure functions over a conversation's loaded messages (oldest first, in display order).
// Each returns a new array when something changed and the same array when nothing did,
// so rows whose Message object is unchanged are not rendered again.

const RANK = { pending: 0, received: 0, failed: 1, sent: 2, delivered: 3, read: 4 };

export function statusRank(s) {
  return RANK[s] ?? 0;
}

function cmpStr(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** docs/api.md display order: (lamport, sender, sender_device, seq, id). */
export function compareMsg(a, b) {
  return (
    (a.lamport - b.lamport) ||
    cmpStr(a.sender, b.sender) ||
    cmpStr(a.sender_device, b.sender_device) ||
    (a.seq - b.seq) ||
    cmpStr(a.id, b.id)
  );
}

/** The better-known of two copies of one message: a status never moves back. */
function mergeCopy(old, m) {
  if (statusRank(old.status) > statusRank(m.status)) return Object.assign({}, m, { status: old.status });
  return m;
}

/** Inserts or replaces `m`, keeping display order. */
export function upsert(list, m) {
  const at = list.findIndex((x) => x.id === m.id);
  if (at >= 0) {
    const merged = mergeCopy(list[at], m);
    const out = list.slice();
    out.splice(at, 1);
    return insertSorted(out, merged);
  }
  return insertSorted(list.slice(), m);
}

function insertSorted(out, m) {
  // New messages nearly always belong at the end: search from there.
  let i = out.length;
  while (i > 0 && compareMsg(out[i - 1], m) > 0) i--;
  out.splice(i, 0, m);
  return out;
}

/** Puts an older page (oldest first) in front, skipping ids already loaded. */
export function prependOlder(list, older) {
  if (!older.length) return list;
  const have = new Set(list.map((m) => m.id));
  const fresh = older.filter((m) => !have.has(m.id));
  if (!fresh.length) return list;
  const out = fresh.concat(list);
  // Pages are in display order already; sorting again costs little and guards the seam.
  out.sort(compareMsg);
  return out;
}

/** Moves own messages named in `ids` forward to `status`. */
export function applyReceipt(list, ids, status) {
  const want = new Set(ids);
  let changed = false;
  const out = list.map((m) => {
    if (!want.has(m.id) || statusRank(m.status) >= statusRank(status)) return m;
    changed = true;
    return Object.assign({}, m, { status });
  });
  return changed ? out : list;
}

/** Id of the first of the last `unread` messages others sent, or null. */
export function unreadAnchor(list, unread) {
  if (!unread) return null;
  let count = 0;
  let anchor = null;
  for (let i = list.length - 1; i >= 0; i--) {
    const m = list[i];
    if (m.own || m.kind === 'membership') continue;
    anchor = m.id;
    count += 1;
    if (count >= unread) break;
  }
  return anchor;
}

/** Splits a search snippet into [{text, hit}] at its `[` `]` marks. */
export function snippetParts(snippet) {
  const parts = [];
  const re = /\[([^\]]*)\]/g;
  let last = 0;
  let m;
  while ((m = re.exec(snippet)) !== null) {
    if (m.index > last) parts.push({ text: snippet.slice(last, m.index), hit: false });
    parts.push({ text: m[1], hit: true });
    last = re.lastIndex;
  }
  if (last < snippet.length) parts.push({ text: snippet.slice(last), hit: false });
  return parts;
}

/** How many messages of others (texts and files) `list` holds: what counts as unread. */
export function theirCount(list) {
  let n = 0;
  for (const m of list) if (!m.own && m.kind !== 'membership') n += 1;
  return n;
}
