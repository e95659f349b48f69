// The open conversation: header, timeline (paged back on scroll), composer, attachments.

import { html, useEffect, useLayoutEffect, useRef, useState } from '../vendor/preact-htm.js';
import { useStore, setState, savePrefs, getState, toast, errorText } from '../store.js';
import {
  acceptIdentity, closeConversation, convName, dismissUpload, holdsFile, isGroup, loadLatest, loadOlder, noteAtBottom, retryUnsent,
  sendAsFile, sendFile, sendText,
} from '../actions.js';
import { MessageRow, UnsentRow, UploadRow } from './message.js';
import { dayKey, dayLabel, msgTime, presenceText } from '../format.js';
import { MAX_TEXT_BYTES, getDraft, setDraft } from '../outbox.js';
import { membershipView } from '../membership.js';

/** Within this many pixels of the top, older messages load; of the bottom, new ones stick. */
const LOAD_OLDER_PX = 200;
const STICK_PX = 48;
/** Room kept above the unread divider when a chat opens at it. */
const DIVIDER_MARGIN_PX = 8;
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
    <${UnsentBar} id=${id} />
    <${Composer} id=${id} group=${group} />
    ${dragging && html`<div class="drop-overlay" data-testid="drop-overlay" aria-hidden="true">Drop to send</div>`}
  </section>`;
}

function ChatHeader({ id, group }) {
  const name = useStore((s) => convName(s, id));
  // Without the node the page knows nothing of anyone's presence.
  const presence = useStore((s) => (s.conn === 'open' ? s.presence[id] : null));
  const g = useStore((s) => s.groups[id]);
  const me = useStore((s) => s.me);
  const messages = useStore((s) => s.chats[id] && s.chats[id].messages);
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
    ? g ? `${g.members.length} member${g.members.length === 1 ? '' : 's'}${g.member ? '' : ' · ' + departure(messages, me)}` : ''
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

/**
 * How this user stopped being a member, from the last membership note about them that is
 * loaded: "you left", "you were removed"; else, not knowing, "you are not a member".
 */
function departure(messages, me) {
  for (let i = (messages || []).length - 1; i >= 0; i--) {
    const m = messages[i];
    if (m.kind !== 'membership') continue;
    const v = membershipView(m, me);
    if (v.about === 'left') return 'you left';
    if (v.about === 'removed') return 'you were removed';
  }
  return 'you are not a member';
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
  const unsent = useStore((s) => s.unsent[id]);
  const unread = useStore((s) => (s.convs[id] && s.convs[id].unread) || 0);
  const atEnd = useStore((s) => s.atBottom);
  const me = useStore((s) => s.me);
  const scroller = useRef(null);
  const list = useRef(null);
  const atBottom = useRef(true);
  const restore = useRef(null); // {id, top}: keep this row in place across a prepend
  const initialDone = useRef(false);
  const unsentCount = useRef((unsent || []).length);
  const uploadCount = useRef(((chat && chat.uploads) || []).length);
  const [flash, setFlash] = useState(null);

  const messages = chat ? chat.messages : [];
  const pending = unsent || [];

  /** Whether the end of the timeline is in view; at the end, what came is read. */
  const setBottom = (at) => {
    atBottom.current = at;
    noteAtBottom(id, at);
  };

  const onScroll = () => {
    const el = scroller.current;
    if (!el) return;
    setBottom(el.scrollHeight - el.scrollTop - el.clientHeight < STICK_PX);
    if (el.scrollTop < LOAD_OLDER_PX) older();
  };

  const toEnd = () => {
    const el = scroller.current;
    if (!el) return;
    el.scrollTop = el.scrollHeight;
    setBottom(true);
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
      // The divider (the timeline is its rows' offset parent) shows whole, at the top.
      const divider = chat.anchor && !chat.target && list.current && list.current.querySelector('.unread-divider');
      if (divider) {
        el.scrollTop = Math.max(0, divider.offsetTop - DIVIDER_MARGIN_PX);
        setBottom(el.scrollHeight - el.scrollTop - el.clientHeight < STICK_PX);
      } else {
        toEnd();
      }
    } else if (restore.current) {
      const row = document.getElementById(restore.current.id);
      if (row) el.scrollTop = row.offsetTop - restore.current.top;
      restore.current = null;
    } else if (atBottom.current) {
      el.scrollTop = el.scrollHeight;
    }
    // What this person just sent is always shown, as are their new uploads.
    const uploads = (chat.uploads || []).length;
    if (pending.length > unsentCount.current || uploads > uploadCount.current) toEnd();
    unsentCount.current = pending.length;
    uploadCount.current = uploads;
    // A first page shorter than the view gives no scroll to page back with.
    if (el.scrollHeight <= el.clientHeight && chat.hasMore && !chat.loading) older();
  }, [chat && chat.messages, chat && chat.loaded, chat && chat.uploads, unsent]);

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
    setBottom(false);
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
        <span>${chat.anchorPartial ? 'Unread messages (more before these)' : 'Unread messages'}</span></li>`);
      prevSender = null;
    }
    const showSender = group && !m.own && m.kind !== 'membership' && prevSender !== m.sender;
    prevSender = m.kind === 'membership' ? null : m.sender;
    items.push(html`<${MessageRow} key=${m.id} m=${m} me=${me} showSender=${showSender} flash=${flash === m.id} />`);
  }
  for (const item of pending) {
    items.push(html`<${UnsentRow} key=${item.id} item=${item} chatId=${id} />`);
  }
  for (const tid of (chat && chat.uploads) || []) {
    items.push(html`<${UploadRow} key=${'u-' + tid} tid=${tid} onDismiss=${() => dismissUpload(id, tid)}
      onSendAsFile=${holdsFile(tid) ? () => sendAsFile(id, tid) : null} />`);
  }

  return html`<div class="timeline-wrap">
    <div class="timeline" ref=${scroller} onScroll=${onScroll} role="log" aria-live="polite"
      aria-relevant="additions" aria-label="Messages" data-testid="timeline" tabindex="0">
    ${chat && chat.loaded && chat.hasMore && html`<div class="older">
      <button type="button" class="link" data-testid="load-older" disabled=${chat.loading} onClick=${older}>
        ${chat.loading ? 'Loading…' : 'Load older messages'}</button></div>`}
    ${chat && !chat.loaded && chat.loading && html`<p class="muted center" data-testid="timeline-loading">Loading…</p>`}
    ${chat && chat.error && html`<p class="error center" role="alert">${chat.error}
      <button type="button" class="link" onClick=${() => loadLatest(id)}>Try again</button></p>`}
    ${chat && chat.loaded && !messages.length && !pending.length && !(chat.uploads || []).length && html`<p class="muted center" data-testid="timeline-empty">No messages yet.</p>`}
    <ol class="messages" role="list" ref=${list}>${items}</ol>
    </div>
    ${!atEnd && unread > 0 && html`<button type="button" class="new-messages" data-testid="new-messages"
      onClick=${toEnd}>${unread === 1 ? '1 new message' : `${unread > 999 ? '999+' : unread} new messages`} <span aria-hidden="true">↓</span></button>`}
  </div>`;
}

/** Texts of this chat the node refused or did not confirm: Retry all sends them again, in order. */
function UnsentBar({ id }) {
  const failed = useStore((s) => (s.unsent[id] || []).filter((x) => x.state === 'failed').length);
  if (!failed) return null;
  return html`<div class="unsent-bar" role="status" data-testid="unsent-bar">
    <span>${failed === 1 ? '1 message not sent' : `${failed} messages not sent`}</span>
    <button type="button" class="link" data-testid="retry-all" onClick=${() => retryUnsent(id)}>Retry all</button>
  </div>`;
}

/** The composer grows with its text up to this height. */
const COMPOSER_MAX_PX = 200;

function Composer({ id, group }) {
  const member = useStore((s) => !group || !s.groups[id] || s.groups[id].member);
  const revoked = useStore((s) => s.revoked);
  const area = useRef(null);
  const fileInput = useRef(null);
  const [text, setText] = useState(() => getDraft(id));

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
    setDraft(id, v);
  };

  const submit = (e) => {
    if (e) e.preventDefault();
    const t = text;
    if (!t.trim()) return;
    if (new TextEncoder().encode(t).length > MAX_TEXT_BYTES) {
      toast('A message can be at most 32 KiB.', 'error');
      return;
    }
    if (sendText(id, t)) update('');
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
