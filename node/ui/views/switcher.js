// Ctrl+K / Cmd+K: type to filter the conversations, arrows to choose, Enter to open.

import { html, useMemo, useState } from '../vendor/preact-htm.js';
import { getState } from '../store.js';
import { convName, openConversation } from '../actions.js';
import { sortedConvs } from './sidebar.js';
import { Modal } from './dialog.js';

/** Rows shown at most. */
const MAX_ROWS = 50;

export function Switcher() {
  const [q, setQ] = useState('');
  const [sel, setSel] = useState(0);
  const s = getState();
  const all = useMemo(() => sortedConvs(s).map((c) => ({ id: c.id, name: convName(s, c.id), group: c.group })), []);
  const needle = q.trim().toLowerCase();
  const rows = (needle ? all.filter((r) => r.name.toLowerCase().includes(needle)) : all).slice(0, MAX_ROWS);
  const at = Math.min(sel, Math.max(0, rows.length - 1));

  const onKeyDown = (e) => {
    if (e.key === 'ArrowDown') {
      e.preventDefault();
      setSel(Math.min(at + 1, rows.length - 1));
    } else if (e.key === 'ArrowUp') {
      e.preventDefault();
      setSel(Math.max(at - 1, 0));
    } else if (e.key === 'Enter') {
      e.preventDefault();
      if (rows[at]) openConversation(rows[at].id);
    }
  };

  return html`<${Modal} title="Go to conversation" testid="switcher">
    <input type="text" data-testid="switcher-input" aria-label="Conversation name" placeholder="Type a name"
      role="combobox" aria-expanded="true" aria-controls="switcher-list"
      aria-activedescendant=${rows[at] ? 'sw-' + rows[at].id : undefined}
      value=${q} onInput=${(e) => { setQ(e.target.value); setSel(0); }} onKeyDown=${onKeyDown} />
    <ul id="switcher-list" role="listbox" class="switcher-list" aria-label="Conversations">
      ${rows.map((r, i) => html`<li key=${r.id} id=${'sw-' + r.id} role="option" aria-selected=${i === at ? 'true' : 'false'}
        class=${i === at ? 'selected' : ''} data-testid=${'switcher-item-' + r.id}
        onMouseDown=${(e) => { e.preventDefault(); openConversation(r.id); }}>
        ${r.name}${r.group ? html` <span class="muted">group</span>` : ''}</li>`)}
      ${!rows.length && html`<li class="muted" role="option" aria-disabled="true">No match</li>`}
    </ul>
  <//>`;
}
