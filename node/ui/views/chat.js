// The open conversation: header, timeline (paged back on scroll), composer, attachments.

import { html, useEffect, useLayoutEffect, useRef, useState } from '../vendor/preact-htm.js';
import { useStore, setState, savePrefs, getState, toast, errorText } from '../store.js';
import {
  acceptIdentity, closeConversation, convName, dismissUpload, isGroup, loadLatest, loadOlder, sendFile, sendText,
} from '../actions.js';
import { MessageRow, UploadRow } from './message.js';
import { dayKey, dayLabel, msgTime, presenceText } from '../format.js';

/** Within this many pixels of the top, older messages load; of the bottom, new ones stick. */
const LOAD_OLDER_PX = 200;
const STICK_PX = 48;
/** How long a search hit stays highlighted. */
const FLASH_MS = 2500;

export function Chat() {
  const id = useStore((s) => s.openId);
  if (!id) {
    return html`<section class="chat empty" aria-label="No conversation open">
      <p class="muted">Choose a conversation, or press <kbd>Ctrl</kbd>+<kbd>K</kbd>.</p>
    </section>`;
  }
  return html`<${ChatView} key=${id} id=${id} />`;
}

function ChatView({ id }) {
  const [dragging, setDragging] = useState(false);
  const dragDepth = useRef(0);
  const group = useStore((s) => isGroup(s, id));

  const onDragEnter = (e) => {
    if (!e.dataTransfer || !Array.from(e.dataTransfer.types || []).includes('Files')) return;
    e.preventDefault();
    dragDepth.current += 1;
    setDragging(true);
  };
  const onDragOver = (e) => {
    if (!e.dataTransfer || !Array.from(e.dataTransfer.types || []).includes('Files')) return;
    e.preventDefault();
    e.dataTransfer.dropEffect = 'copy';
  };
  const onDragLeave = () => {
    dragDepth.current = Math.max(0, dragDepth.current - 1);
    if (!dragDepth.current) setDragging(false);
  };
  const onDrop = (e) => {
    e.preventDefault();
    dragDepth.current = 0;
    setDragging(false);
    for (const f of Array.from((e.dataTransfer && e.dataTransfer.files) || [])) sendFile(id, f);
  };

  return html`<section class="chat" aria-label="Conversation" data-testid="chat" data-conversation=${id}
      onDragEnter=${onDragEnter} onDragOver=${onDragOver} onDragLeave=${onDragLeave} onDrop=${onDrop}>
    <${ChatHeader} id=${id} group=${group} />
    <${IdentityWarning} id=${id} />
    <${Timeline} id=${id} group=${group} />
    <${Composer} id=${id} group=${group} />
    ${dragging && html`<div class="drop-overlay" data-testid="drop-overlay" aria-hidden="true">Drop to send</div>`}
  </section>`;
}

function ChatHeader({ id, group }) {
  const name = useStore((s) => convName(s, id));
  const presence = useStore((s) => s.presence[id]);
  const g = useStore((s) => s.groups[id]);
  const muted = useStore((s) => !!s.prefs.muted[id]);
  const verified = useStore((s) => s.contacts[id] && s.contacts[id].verified);

  const toggleMute = () => {
    const prefs = getState().prefs;
    const next = Object.assign({}, prefs.muted);
    if (next[id]) delete next[id];
    else next[id] = true;
    const p = Object.assign({}, prefs, { muted: next });
    savePrefs(p);
    setState({ prefs: p });
  };

  const sub = group
    ? g ? `${g.members.length} member${g.members.length === 1 ? '' : 's'}${g.member ? '' : ' · you left'}` : ''
    : presenceText(presence);

  const back = () => {
    closeConversation();
    setTimeout(() => {
      const item = document.querySelector(`[data-testid="conv-${id}"]`);
      if (item) item.focus();
    }, 0);
  };

  return html`<header class="chat-header">
    <button type="button" class="icon back" aria-label="Back to conversations" title="Back to conversations"
      data-testid="chat-back" onClick=${back}><span aria-hidden="true">←</span></button>
    ${!group && html`<span class=${'dot ' + ((presence && presence.state) || 'unknown')} aria-hidden="true"></span>`}
    <div class="chat-title">
      <h2 data-testid="chat-title">${name}${verified ? html` <span class="verified" role="img" title="Verified" aria-label="verified">✔</span>` : ''}</h2>
      <div class="muted" data-testid="chat-subtitle">${sub}</div>
    </div>
    <div class="chat-actions">
      ${group && html`<button type="button" data-testid="group-info-button" aria-label="Group members"
        onClick=${() => setState({ modal: { kind: 'group-info', id } })}>Members</button>`}
      ${!group && html`<button type="button" data-testid="safety-button" aria-label="Safety number"
        onClick=${() => setState({ modal: { kind: 'safety', id } })}>Safety number</button>`}
      <button type="button" data-testid="mute-button" aria-pressed=${muted ? 'true' : 'false'}
        aria-label=${muted ? 'Unmute notifications for this chat' : 'Mute notifications for this chat'}
        onClick=${toggleMute}><img src=${muted ? '/ui/icons/bell-off.svg' : '/ui/icons/bell.svg'} alt="" width="20" height="20" /></button>
    </div>
  </header>`;
}

function IdentityWarning({ id }) {
  const pending = useStore((s) => !!s.identityPending[id]);
  const [busy, setBusy] = useState(false);
  if (!pending) return null;
  const accept = async () => {
    setBusy(true);
    try {
      await acceptIdentity(id);
      toast('New identity key accepted. Compare safety numbers to be sure.');
    } catch (e) {
      toast('Could not accept: ' + errorText(e), 'error');
    }
    setBusy(false);
  };
  return html`<div class="warning" role="alert" data-testid="identity-warning">
    <strong>This contact's identity key changed.</strong> Someone may be impersonating them, or they
    reinstalled Tern. Sending is blocked until you accept the new key; compare safety numbers first.
    <button type="button" data-testid="identity-accept" disabled=${busy} onClick=${accept}>Accept new key</button>
  </div>`;
}

function Timeline({ id, group }) {
  const chat = useStore((s) => s.chats[id]);
  const scroller = useRef(null);
  const list = useRef(null);
  const atBottom = useRef(true);
  const restore = useRef(null); // {id, top}: keep this row in place across a prepend
  const initialDone = useRef(false);
  const lastId = useRef(null);
  const uploadCount = useRef(0);
  const [flash, setFlash] = useState(null);

  const messages = chat ? chat.messages : [];

  const onScroll = () => {
    const el = scroller.current;
    if (!el) return;
    atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < STICK_PX;
    if (el.scrollTop < LOAD_OLDER_PX) older();
  };

  const older = () => {
    const c = getState().chats[id];
    if (!c || !c.loaded || c.loading || !c.hasMore) return;
    rememberTop();
    loadOlder(id);
  };

  const rememberTop = () => {
    const el = scroller.current;
    if (!el) return;
    const rows = list.current ? list.current.children : [];
    for (const row of rows) {
      if (row.offsetTop + row.offsetHeight >= el.scrollTop && row.id) {
        restore.current = { id: row.id, top: row.offsetTop - el.scrollTop };
        return;
      }
    }
  };

  useLayoutEffect(() => {
    const el = scroller.current;
    if (!el || !chat || !chat.loaded) return;
    if (!initialDone.current) {
      initialDone.current = true;
      const anchor = chat.anchor && document.getElementById('m-' + chat.anchor);
      if (anchor && !chat.target) {
        el.scrollTop = Math.max(0, anchor.offsetTop - 80);
        atBottom.current = el.scrollHeight - el.scrollTop - el.clientHeight < STICK_PX;
      } else {
        el.scrollTop = el.scrollHeight;
        atBottom.current = true;
      }
    } else if (restore.current) {
      const row = document.getElementById(restore.current.id);
      if (row) el.scrollTop = row.offsetTop - restore.current.top;
      restore.current = null;
    } else if (atBottom.current) {
      el.scrollTop = el.scrollHeight;
    } else {
      // What this person just sent is always shown.
      const last = chat.messages[chat.messages.length - 1];
      if (last && last.own && last.id !== lastId.current && last.temp) {
        el.scrollTop = el.scrollHeight;
        atBottom.current = true;
      }
    }
    const uploads = (chat.uploads || []).length;
    if (uploads > uploadCount.current) {
      el.scrollTop = el.scrollHeight;
      atBottom.current = true;
    }
    uploadCount.current = uploads;
    const tail = chat.messages[chat.messages.length - 1];
    lastId.current = tail ? tail.id : null;
    // A first page shorter than the view gives no scroll to page back with.
    if (el.scrollHeight <= el.clientHeight && chat.hasMore && !chat.loading) older();
  }, [chat && chat.messages, chat && chat.loaded, chat && chat.uploads]);

  // Images and thumbnails change heights after render: keep the bottom in view.
  useEffect(() => {
    if (typeof ResizeObserver === 'undefined' || !list.current) return;
    const ro = new ResizeObserver(() => {
      const el = scroller.current;
      if (el && atBottom.current && !restore.current) el.scrollTop = el.scrollHeight;
    });
    ro.observe(list.current);
    // The timeline gets shorter too (a notice under the layout, a taller composer).
    if (scroller.current) ro.observe(scroller.current);
    return () => ro.disconnect();
  }, []);

  // A search hit: show it and flash it.
  useEffect(() => {
    if (!chat || !chat.target || !chat.targetSeq) return;
    const row = document.getElementById('m-' + chat.target);
    if (!row) return;
    row.scrollIntoView({ block: 'center' });
    atBottom.current = false;
    setFlash(chat.target);
    const t = setTimeout(() => setFlash(null), FLASH_MS);
    return () => clearTimeout(t);
  }, [chat && chat.targetSeq]);

  const items = [];
  let prevDay = null;
  let prevSender = null;
  for (const m of messages) {
    const t = msgTime(m);
    const day = dayKey(t);
    if (day !== prevDay) {
      items.push(html`<li role="listitem" class="day" key=${'d-' + day} data-testid="date-separator">
        <span>${dayLabel(t)}</span></li>`);
      prevDay = day;
      prevSender = null;
    }
    if (m.id === chat.anchor) {
      items.push(html`<li role="listitem" class="unread-divider" key="unread" data-testid="unread-divider">
        <span>Unread messages</span></li>`);
      prevSender = null;
    }
    const showSender = group && !m.own && m.kind !== 'membership' && prevSender !== m.sender;
    prevSender = m.kind === 'membership' ? null : m.sender;
    items.push(html`<${MessageRow} key=${m.id} m=${m} chatId=${id} showSender=${showSender} flash=${flash === m.id} />`);
  }
  for (const tid of (chat && chat.uploads) || []) {
    items.push(html`<${UploadRow} key=${'u-' + tid} tid=${tid} onDismiss=${() => dismissUpload(id, tid)} />`);
  }

  return html`<div class="timeline" ref=${scroller} onScroll=${onScroll} role="log" aria-live="polite"
      aria-relevant="additions" aria-label="Messages" data-testid="timeline" tabindex="0">
    ${chat && chat.loaded && chat.hasMore && html`<div class="older">
      <button type="button" class="link" data-testid="load-older" disabled=${chat.loading} onClick=${older}>
        ${chat.loading ? 'Loading…' : 'Load older messages'}</button></div>`}
    ${chat && !chat.loaded && chat.loading && html`<p class="muted center" data-testid="timeline-loading">Loading…</p>`}
    ${chat && chat.error && html`<p class="error center" role="alert">${chat.error}
      <button type="button" class="link" onClick=${() => loadLatest(id)}>Try again</button></p>`}
    ${chat && chat.loaded && !messages.length && !(chat.uploads || []).length && html`<p class="muted center" data-testid="timeline-empty">No messages yet.</p>`}
    <ol class="messages" role="list" ref=${list}>${items}</ol>
  </div>`;
}

/** Unsent text per conversation, kept while switching chats. */
const drafts = new Map();
/** The composer grows with its text up to this height. */
const COMPOSER_MAX_PX = 200;

function Composer({ id, group }) {
  const member = useStore((s) => !group || !s.groups[id] || s.groups[id].member);
  const revoked = useStore((s) => s.revoked);
  const area = useRef(null);
  const fileInput = useRef(null);
  const [text, setText] = useState(drafts.get(id) || '');

  // The chat just opened takes the keyboard, unless the user is already typing in another
  // field (the search box): effects run a frame or more after the click that opened the
  // chat, and taking the focus then would send the rest of their typing here.
  useEffect(() => {
    const el = area.current;
    if (!el) return;
    const now = document.activeElement;
    const typing = now && now !== el && (now.matches('input, textarea, select') || now.isContentEditable);
    if (!typing) el.focus();
  }, [id]);

  useLayoutEffect(() => {
    const el = area.current;
    if (!el) return;
    el.style.height = 'auto';
    el.style.height = Math.min(el.scrollHeight, COMPOSER_MAX_PX) + 'px';
  }, [text]);

  if (revoked) return html`<div class="composer disabled muted">This device was revoked: it can no longer send.</div>`;
  if (!member) return html`<div class="composer disabled muted" data-testid="composer-disabled">You are not a member of this group any more.</div>`;

  const update = (v) => {
    setText(v);
    if (v) drafts.set(id, v);
    else drafts.delete(id);
  };

  const submit = (e) => {
    if (e) e.preventDefault();
    const t = text;
    if (!t.trim()) return;
    if (new TextEncoder().encode(t).length > 32 * 1024) {
      toast('A message can be at most 32 KiB.', 'error');
      return;
    }
    update('');
    sendText(id, t);
  };

  const onKeyDown = (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      submit();
    }
  };

  const onFiles = (e) => {
    const caption = text.trim();
    const files = Array.from(e.target.files || []);
    files.forEach((f, i) => sendFile(id, f, i === 0 && caption ? caption : undefined));
    if (files.length && caption) update('');
    e.target.value = '';
  };

  return html`<form class="composer" onSubmit=${submit} data-testid="composer-form">
    <input type="file" ref=${fileInput} class="visually-hidden" tabindex="-1" aria-hidden="true"
      multiple data-testid="file-input" onChange=${onFiles} />
    <button type="button" class="icon" aria-label="Attach a file" title="Attach a file" data-testid="attach-button"
      onClick=${() => fileInput.current && fileInput.current.click()}><img src="/ui/icons/clip.svg" alt="" width="20" height="20" /></button>
    <textarea ref=${area} rows="1" data-testid="composer" aria-label="Message" placeholder="Message"
      value=${text} onInput=${(e) => update(e.target.value)} onKeyDown=${onKeyDown}></textarea>
    <button type="submit" class="primary" data-testid="send-button" aria-label="Send" disabled=${!text.trim()}>Send</button>
  </form>`;
}
