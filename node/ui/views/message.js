// One row of the timeline. Rows are class components that render again only when their
// Message object (or how it is shown) changes, so an event touches one row, not the list.
// Message text is always a text child: Preact escapes it, nothing is parsed as markup.

import { html, Component, useEffect, useRef, useState } from '../vendor/preact-htm.js';
import { useStore, errorText } from '../store.js';
import { call, dismissUnsent, fetchAuthed, retryUnsent } from '../actions.js';
import { STATUS_ICON, STATUS_LABEL, bytes, clock, msgTime, transferProblem } from '../format.js';
import { membershipView } from '../membership.js';

export class MessageRow extends Component {
  shouldComponentUpdate(next) {
    const p = this.props;
    return next.m !== p.m || next.showSender !== p.showSender || next.flash !== p.flash ||
      (next.m.kind === 'membership' && next.me !== p.me);
  }

  render({ m, showSender, flash, me }) {
    if (m.kind === 'membership') {
      return html`<li role="listitem" class=${'note' + (flash ? ' flash' : '')} data-testid=${'msg-' + m.id}
        data-kind="membership" id=${'m-' + m.id}>
        ${m.gap_before && html`<div class="gap">Some earlier messages may be missing</div>`}
        <span class="note-text">${membershipView(m, me).text}</span> <time class="muted">${clock(msgTime(m))}</time>
      </li>`;
    }
    const cls = 'msg ' + (m.own ? 'own' : 'theirs') + (flash ? ' flash' : '');
    return html`<li role="listitem" class=${cls} data-testid=${'msg-' + m.id} data-status=${m.status}
      data-kind=${m.kind} id=${'m-' + m.id}>
      ${m.gap_before && html`<div class="gap" data-testid=${'gap-' + m.id}>Some earlier messages may be missing</div>`}
      <div class="bubble">
        ${showSender && html`<div class="sender">${m.sender_name || m.sender.slice(0, 8)}</div>`}
        ${m.media && html`<${FilePart} m=${m} />`}
        ${m.text && html`<div class="text">${m.text}</div>`}
        <div class="meta">
          ${m.own && m.sender_device_name && html`<span class="muted">from ${m.sender_device_name} · </span>`}
          <time datetime=${new Date(msgTime(m)).toISOString()}>${clock(msgTime(m))}</time>
          ${m.own && html`<span class=${'status st-' + m.status} data-testid=${'status-' + m.id}
            role="img"
            aria-label=${STATUS_LABEL[m.status] || m.status} title=${STATUS_LABEL[m.status] || m.status}>${STATUS_ICON[m.status] || ''}</span>`}
        </div>
      </div>
    </li>`;
  }
}

/** What an unsent text (outbox.js) is waiting for, in words. */
const UNSENT_NOTE = {
  queued: 'Waiting for the node',
};

/** A text the node has not taken yet: waiting, under way, or failed (Retry / Dismiss). */
export class UnsentRow extends Component {
  shouldComponentUpdate(next) {
    return next.item !== this.props.item;
  }

  render({ item, chatId }) {
    const status = item.state === 'failed' ? 'failed' : 'pending';
    const note = item.state === 'failed' ? null : UNSENT_NOTE[item.state];
    return html`<li role="listitem" class="msg own" data-testid=${'msg-' + item.id} data-status=${status}
      data-unsent=${item.state} data-kind="text" id=${'m-' + item.id}>
      <div class="bubble">
        <div class="text">${item.text}</div>
        <div class="meta">
          ${note && html`<span class="muted">${note} · </span>`}
          <time datetime=${new Date(item.at).toISOString()}>${clock(item.at)}</time>
          <span class=${'status st-' + status} data-testid=${'status-' + item.id} role="img"
            aria-label=${STATUS_LABEL[status]} title=${STATUS_LABEL[status]}>${STATUS_ICON[status]}</span>
        </div>
        ${item.state === 'failed' && html`<div class="failed-actions">
          <span class="error">${item.error || 'Not sent'}</span>
          <button type="button" class="link" data-testid=${'retry-' + item.id} onClick=${() => retryUnsent(chatId, item.id)}>Retry</button>
          <button type="button" class="link" data-testid=${'dismiss-' + item.id} onClick=${() => dismissUnsent(chatId, item.id)}>Dismiss</button>
        </div>`}
        ${item.state === 'queued' && html`<div class="failed-actions">
          <button type="button" class="link" data-testid=${'dismiss-' + item.id} onClick=${() => dismissUnsent(chatId, item.id)}>Don't send</button>
        </div>`}
      </div>
    </li>`;
  }
}

/** Object URLs of fetched files, by message id, for this page's life. */
const blobUrls = new Map();
/** Images at most this large are fetched on sight; larger ones wait for a click. */
const AUTO_FETCH_MAX = 25 * 1024 * 1024;

async function fetchBlobUrl(id) {
  if (blobUrls.has(id)) return blobUrls.get(id);
  const res = await fetchAuthed('/files/' + encodeURIComponent(id));
  if (!res.ok) throw new Error(`HTTP ${res.status}`);
  const url = URL.createObjectURL(await res.blob());
  blobUrls.set(id, url);
  return url;
}

function saveUrl(url, name) {
  const a = document.createElement('a');
  a.href = url;
  a.download = name || 'file';
  a.rel = 'noopener';
  document.body.appendChild(a);
  a.click();
  a.remove();
}

const ACTIVE = new Set(['queued', 'uploading', 'downloading', 'verifying', 'paused']);

function FilePart({ m }) {
  const media = m.media;
  const isImage = /^image\//.test(media.mime || '');
  const transfer = useStore((s) => s.transfers[m.id]);
  const [url, setUrl] = useState(blobUrls.get(m.id) || null);
  const [want, setWant] = useState(null); // null | 'show' | 'save'
  const [error, setError] = useState(null);
  const ref = useRef(null);

  // Asks the node to have the file; when it is here, fetches it.
  const ensure = async (purpose) => {
    setError(null);
    setWant(purpose);
    try {
      const t = await call('file.get', { message: m.id });
      if (t && t.state === 'done') await finish(purpose);
    } catch (e) {
      setError(errorText(e));
      setWant(null);
    }
  };

  const finish = async (purpose) => {
    try {
      const u = await fetchBlobUrl(m.id);
      setUrl(u);
      if (purpose === 'save') saveUrl(u, media.name);
      setWant(null);
    } catch (e) {
      setError(errorText(e));
      setWant(null);
    }
  };

  // A download this row asked for finished: fetch it.
  useEffect(() => {
    if (!want || !transfer) return;
    if (transfer.state === 'done') finish(want);
    else if (transfer.state === 'failed') {
      setError(transferProblem(transfer, 'down'));
      setWant(null);
    }
  }, [transfer && transfer.state]);

  // Images show in full once scrolled into view.
  useEffect(() => {
    if (!isImage || url || media.size > AUTO_FETCH_MAX || !ref.current) return;
    if (typeof IntersectionObserver === 'undefined') {
      ensure('show');
      return;
    }
    const io = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting)) {
        io.disconnect();
        ensure('show');
      }
    });
    io.observe(ref.current);
    return () => io.disconnect();
  }, [m.id]);

  const active = transfer && ACTIVE.has(transfer.state) && transfer.direction === 'down';
  const pct = transfer && transfer.total ? Math.floor((100 * transfer.bytes) / transfer.total) : 0;
  const thumb = media.thumbnail ? 'data:image/jpeg;base64,' + media.thumbnail : null;
  const expired = media.expires_at && media.expires_at < Date.now() && !url;

  return html`<div class="file" ref=${ref} data-testid=${'file-' + m.id}>
    ${isImage && url && html`<img class="full" src=${url} alt=${media.name} data-testid=${'image-' + m.id} />`}
    ${isImage && !url && thumb && html`<img class="thumb" src=${thumb} alt=${'Preview of ' + media.name}
      width=${media.width || undefined} height=${media.height || undefined} data-testid=${'thumb-' + m.id} />`}
    ${!isImage && thumb && html`<img class="thumb small" src=${thumb} alt="" />`}
    <div class="file-info">
      <span class="file-name">${media.name}</span>
      <span class="muted"> · ${bytes(media.size)}</span>
    </div>
    ${active && html`<div class="progress-line">
      <progress max="100" value=${pct} aria-label=${'Downloading ' + media.name}></progress>
      <span class="muted">${transfer.state === 'paused' ? `paused (${transfer.code || 'network'})` : pct + '%'}</span>
    </div>`}
    ${error && html`<div class="error" role="alert">${error}</div>`}
    ${expired && html`<div class="muted">No longer on the relay</div>`}
    <div class="file-actions">
      ${!url && !active && !want && html`<button type="button" data-testid=${'download-' + m.id}
        onClick=${() => ensure(isImage ? 'show' : 'save')}>Download</button>`}
      ${url && html`<button type="button" data-testid=${'save-' + m.id} onClick=${() => saveUrl(url, media.name)}>Save</button>`}
    </div>
  </div>`;
}

/** An upload of this page that has no message yet. */
export function UploadRow({ tid, onDismiss, onSendAsFile }) {
  const t = useStore((s) => s.transfers[tid]);
  if (!t) return null;
  const pct = t.total ? Math.floor((100 * t.bytes) / t.total) : 0;
  const label = t.local ? (t.state === 'failed' ? 'Failed' : 'Handing to the node…') : t.state;
  return html`<li role="listitem" class="msg own upload" data-testid=${'upload-' + tid} data-state=${t.state}>
    <div class="bubble">
      <div class="file-info"><span class="file-name">${t.name}</span></div>
      ${t.state !== 'failed' && html`<div class="progress-line">
        <progress max="100" value=${pct} aria-label=${'Sending ' + t.name}></progress>
        <span class="muted">${label}${t.state === 'uploading' ? ` ${pct}%` : ''}${t.state === 'paused' && t.code ? ` (${t.code})` : ''}</span>
      </div>`}
      ${t.state === 'failed' && html`<div class="error" data-testid=${'upload-error-' + tid}>${transferProblem(t, 'up')}
        ${t.code === 'bad_image' && onSendAsFile && html`<button type="button" class="link" data-testid=${'upload-as-file-' + tid}
          title="Sends the bytes as they are: not scaled, and not stripped of the photo's metadata (place, time, camera)"
          onClick=${onSendAsFile}>Send as a file</button>`}
        <button type="button" class="link" onClick=${onDismiss}>Dismiss</button></div>`}
    </div>
  </li>`;
}
