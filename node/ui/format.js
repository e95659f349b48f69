// Display helpers: times, dates, sizes, presence.

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dateFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', day: 'numeric', month: 'long', year: 'numeric' });
const shortDateFmt = new Intl.DateTimeFormat(undefined, { day: 'numeric', month: 'short' });

export function msgTime(m) {
  return m.sent_at || m.received_at || 0;
}

export function clock(ms) {
  return ms ? timeFmt.format(new Date(ms)) : '';
}

export function dayKey(ms) {
  const d = new Date(ms);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

export function dayLabel(ms) {
  const today = new Date();
  const d = new Date(ms);
  if (dayKey(ms) === dayKey(today.getTime())) return 'Today';
  const y = new Date(today);
  y.setDate(today.getDate() - 1);
  if (dayKey(ms) === dayKey(y.getTime())) return 'Yesterday';
  return dateFmt.format(d);
}

/** For the conversation list: time today, else a short date. */
export function listTime(ms) {
  if (!ms) return '';
  return dayKey(ms) === dayKey(Date.now()) ? clock(ms) : shortDateFmt.format(new Date(ms));
}

export function ago(ms) {
  if (!ms) return '';
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return 'just now';
  const m = Math.round(s / 60);
  if (m < 60) return `${m} min ago`;
  const h = Math.round(m / 60);
  if (h < 24) return `${h} h ago`;
  return `on ${shortDateFmt.format(new Date(ms))} at ${clock(ms)}`;
}

export function presenceText(p) {
  if (!p) return '';
  if (p.state === 'online') return 'online';
  if (p.state === 'away') return 'away';
  if (p.state === 'offline') return p.last_seen ? 'last seen ' + ago(p.last_seen) : 'offline';
  return '';
}

export function bytes(n) {
  if (n == null) return '';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 * 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 / 1024 / 1024).toFixed(2)} GiB`;
}

export const STATUS_LABEL = {
  pending: 'Sending',
  sent: 'Sent',
  delivered: 'Delivered',
  read: 'Read',
  failed: 'Failed',
  received: 'Received',
};

export const STATUS_ICON = {
  pending: '○',
  sent: '✓',
  delivered: '✓✓',
  read: '✓✓',
  failed: '⚠',
};

/** base64 of a string's UTF-8 bytes (btoa alone takes Latin-1 only). */
export function utf8Base64(text) {
  const bytesArr = new TextEncoder().encode(text);
  let bin = '';
  for (let i = 0; i < bytesArr.length; i += 0x8000) {
    bin += String.fromCharCode.apply(null, bytesArr.subarray(i, i + 0x8000));
  }
  return btoa(bin);
}

/** A transfer's `code` (docs/api.md, Transfer) in words; `dir` 'up' (sending) or 'down'. */
const TRANSFER_CODES = {
  bad_image: 'This file looks like a picture but could not be read as one (it may be damaged or in a format Tern cannot open).',
  too_large: 'The file is too large (at most 100 MiB).',
  over_quota: 'The relay has no room left for your files now; try again later.',
  storage_full: 'The relay has no room left; try again later.',
  rate_limited: 'The relay asks to slow down; retrying.',
  unauthorised: 'The relay refused the file.',
  not_found: 'The file is no longer on the relay.',
  expired: 'The file is no longer on the relay.',
  hash_mismatch: 'The file arrived damaged or altered; nothing was kept.',
  tampered: 'The file arrived damaged or altered; nothing was kept.',
  hash: 'The file arrived damaged or altered; nothing was kept.',
  not_a_file: 'That is not a file Tern can send.',
  network: 'The network is down; retrying.',
  disk_full: 'The disk is full.',
  no_relay: 'No relay is reachable.',
};

export function transferProblem(t, dir) {
  const words = t.code && TRANSFER_CODES[t.code];
  const lead = dir === 'up' ? 'Not sent' : 'Download failed';
  if (words) return `${lead}: ${words.charAt(0).toLowerCase()}${words.slice(1)}`;
  return t.code ? `${lead}: ${t.code}` : lead;
}
