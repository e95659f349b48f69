// The left column: who I am, the menu, global search, and the conversation list.

import { html, Component, useEffect, useMemo, useRef, useState } from '../vendor/preact-htm.js';
import { useStore, setState, getState, errorText } from '../store.js';
import { call, convName, openConversation } from '../actions.js';
import { listTime } from '../format.js';
import { snippetParts } from '../timeline.js';

/** Conversations by activity, newest first. */
export function sortedConvs(s) {
  return Object.values(s.convs).sort((a, b) => (b.last_activity - a.last_activity) || (a.id < b.id ? -1 : 1));
}

export function Sidebar() {
  const me = useStore((s) => s.me);
  const [query, setQuery] = useState('');
  const open = (kind) => setState({ modal: { kind } });
  return html`<aside class="sidebar" aria-label="Conversations and menu">
    <header class="side-header">
      <div class="me" data-testid="me-name">${me ? me.name : ''}</div>
      <nav class="menu" aria-label="Menu">
        <button type="button" class="icon" data-testid="open-contacts" aria-label="Contacts: add a contact, your link"
          title="Contacts: add a contact, your link"
          onClick=${() => open('contacts')}><img src="/ui/icons/contact-add.svg" alt="" width="20" height="20" /></button>
        <button type="button" class="icon" data-testid="open-group-create" aria-label="New group" title="New group"
          onClick=${() => open('group-create')}><img src="/ui/icons/group.svg" alt="" width="20" height="20" /></button>
        <button type="button" class="icon" data-testid="open-devices" aria-label="Devices" title="Devices"
          onClick=${() => open('devices')}><img src="/ui/icons/devices.svg" alt="" width="20" height="20" /></button>
        <button type="button" class="icon" data-testid="open-settings" aria-label="Settings" title="Settings"
          onClick=${() => open('settings')}><img src="/ui/icons/settings.svg" alt="" width="20" height="20" /></button>
      </nav>
    </header>
    <div class="search-box" role="search">
      <input type="search" data-testid="search" aria-label="Search all messages" placeholder="Search messages"
        value=${query} onInput=${(e) => setQuery(e.target.value)}
        onKeyDown=${(e) => { if (e.key === 'Escape') setQuery(''); }} />
    </div>
    ${query.trim() ? html`<${SearchResults} query=${query.trim()} onDone=${() => setQuery('')} />` : html`<${ConvList} />`}
  </aside>`;
}

function ConvList() {
  const convs = useStore((s) => s.convs);
  const openId = useStore((s) => s.openId);
  const presence = useStore((s) => s.presence);
  // Without the node the page knows nothing of anyone's presence: every dot is unknown.
  const online = useStore((s) => s.conn === 'open');
  const muted = useStore((s) => s.prefs.muted);
  const list = useMemo(() => sortedConvs(getState()), [convs]);
  if (!list.length) {
    return html`<div class="pad" data-testid="conv-empty">
      <p class="muted">No conversations yet.</p>
      <p><button type="button" data-testid="conv-empty-add-contact" onClick=${() => setState({ modal: { kind: 'contacts' } })}>
        Add a contact</button></p>
    </div>`;
  }
  return html`<ul class="conv-list" role="list" aria-label="Conversations" data-testid="conv-list">
    ${list.map((c) => html`<${ConvItem} key=${c.id} c=${c} active=${c.id === openId}
      p=${c.group || !online ? null : presence[c.id]} muted=${!!muted[c.id]} />`)}
  </ul>`;
}

class ConvItem extends Component {
  shouldComponentUpdate(n) {
    const p = this.props;
    return n.c !== p.c || n.active !== p.active || n.p !== p.p || n.muted !== p.muted;
  }

  render({ c, active, p, muted }) {
    const name = convName(getState(), c.id);
    return html`<li role="listitem">
      <button type="button" class=${'conv' + (active ? ' active' : '') + (c.unread ? ' has-unread' : '')}
        data-testid=${'conv-' + c.id} aria-current=${active ? 'true' : undefined}
        aria-label=${`${name}${c.group ? ' (group)' : ''}${c.unread ? `, ${c.unread} unread` : ''}`}
        onClick=${() => openConversation(c.id)}>
        <span class=${'avatar' + (c.group ? ' group' : '')} aria-hidden="true">${initials(name)}
          ${!c.group && html`<span class=${'dot ' + ((p && p.state) || 'unknown')} data-testid=${'presence-' + c.id}
            data-state=${(p && p.state) || 'unknown'}></span>`}
        </span>
        <span class="conv-main">
          <span class="conv-top">
            <span class="conv-name">${name}</span>
            ${muted && html`<img class="inline-icon" src="/ui/icons/bell-off.svg" alt="muted" width="14" height="14" />`}
            <time class="conv-time muted">${listTime(c.last_activity)}</time>
          </span>
          <span class="conv-bottom">
            <span class="preview muted" data-testid=${'preview-' + c.id}>${c.last_text || ''}</span>
            ${c.unread > 0 && html`<span class="badge" data-testid=${'unread-' + c.id}>${c.unread > 999 ? '999+' : c.unread}</span>`}
          </span>
        </span>
      </button>
    </li>`;
  }
}

function initials(name) {
  const parts = String(name || '?').trim().split(/\s+/).filter(Boolean);
  const chars = parts.slice(0, 2).map((w) => Array.from(w)[0] || '');
  return chars.join('').toUpperCase() || '?';
}

/** Wait after typing before searching. */
const SEARCH_DELAY_MS = 250;

function SearchResults({ query, onDone }) {
  const [res, setRes] = useState({ query: null, hits: [], error: null });
  const seq = useRef(0);
  useEffect(() => {
    const mine = ++seq.current;
    const t = setTimeout(async () => {
      try {
        const hits = await call('search', { query });
        if (mine === seq.current) setRes({ query, hits: hits || [], error: null });
      } catch (e) {
        if (mine === seq.current) setRes({ query, hits: [], error: errorText(e) });
      }
    }, SEARCH_DELAY_MS);
    return () => clearTimeout(t);
  }, [query]);
  const s = getState();
  return html`<div class="search-results" data-testid="search-results" aria-live="polite">
    ${res.query !== query && html`<p class="muted pad">Searching…</p>`}
    ${res.error && html`<p class="error pad" role="alert">${res.error}</p>`}
    ${res.query === query && !res.error && !res.hits.length && html`<p class="muted pad" data-testid="search-empty">No messages match.</p>`}
    <ul role="list" aria-label="Search results">
      ${res.hits.map((h) => html`<li role="listitem" key=${h.conversation + h.id}>
        <button type="button" class="hit" data-testid=${'search-hit-' + h.id}
          onClick=${() => { onDone(); openConversation(h.conversation, h.id); }}>
          <span class="conv-name">${convName(s, h.conversation)}</span>
          <span class="snippet">${snippetParts(h.snippet).map((p) => (p.hit ? html`<mark>${p.text}</mark>` : p.text))}</span>
        </button>
      </li>`)}
    </ul>
  </div>`;
}
