// Desktop notifications for incoming messages, by the person's choice (content, name only,
// none) and per-chat mute, both kept in localStorage (store.js prefs).

/** At most one notification per conversation in this interval; later ones replace it. */
const PER_CHAT_INTERVAL_MS = 1500;
const lastShown = new Map();

export function notificationsSupported() {
  return typeof Notification !== 'undefined';
}

export async function askPermission() {
  if (!notificationsSupported()) return 'unsupported';
  if (Notification.permission !== 'default') return Notification.permission;
  return Notification.requestPermission();
}

/** Shows a notification for `m` when the page is hidden or another chat is open. */
export function notifyMessage(m, s, open) {
  const id = m.conversation;
  if (s.prefs.notify === 'none' || s.prefs.muted[id]) return;
  if (document.visibilityState === 'visible' && s.openId === id) return;
  if (!notificationsSupported() || Notification.permission !== 'granted') return;
  const now = Date.now();
  if (now - (lastShown.get(id) || 0) < PER_CHAT_INTERVAL_MS) return;
  lastShown.set(id, now);
  const conv = s.convs[id];
  const group = !!s.groups[id];
  const chatName = (conv && (conv.name || conv.title)) || (s.groups[id] && s.groups[id].title) || m.sender_name || 'Tern';
  let title = chatName;
  let body = 'New message';
  if (s.prefs.notify === 'content') {
    if (group) title = `${m.sender_name || 'Someone'} in ${chatName}`;
    body = m.kind === 'file' ? 'File: ' + (m.text || (m.media && m.media.name) || 'file') : m.text;
  }
  try {
    const n = new Notification(title, { body, tag: id });
    n.onclick = () => {
      window.focus();
      open(id);
      n.close();
    };
  } catch {
    /* some browsers only allow notifications from a service worker */
  }
}
