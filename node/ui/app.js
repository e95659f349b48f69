// Tern web UI: the entry point. Starts the session, renders the shell, and owns the
// page-wide keyboard shortcuts.

import { html, render } from './vendor/preact-htm.js';
import { useStore, getState, setState } from './store.js';
import { start, openConversation } from './actions.js';
import { Sidebar, sortedConvs } from './views/sidebar.js';
import { Chat } from './views/chat.js';
import { ModalHost } from './views/modal.js';
import { Toasts } from './views/toasts.js';

function App() {
  const phase = useStore((s) => s.phase);
  if (phase === 'starting') return html`<p class="boot" role="status">Starting…</p>`;
  if (phase === 'no-session') {
    return html`<main class="screen" data-testid="no-session">
      <h1>Tern</h1>
      <p>Open Tern with <code>tern ui</code>.</p>
      <p class="muted">For your safety this page only works when opened by the <code>tern ui</code> command on this computer.</p>
    </main>`;
  }
  if (phase === 'expired') {
    const signedOut = getState().ended === 'signed-out';
    return html`<main class="screen" data-testid="session-expired" data-ended=${signedOut ? 'signed-out' : 'expired'} role="alert">
      <h1>Tern</h1>
      <p>${signedOut ? 'You signed out of this page' : 'This link was used or expired'} — run <code>tern ui</code> again.</p>
    </main>`;
  }
  if (phase === 'error') {
    return html`<main class="screen" data-testid="start-error" role="alert">
      <h1>Tern</h1>
      <p>Could not start: ${getState().phaseError}</p>
      <p>Is the node running? Run <code>tern ui</code> again.</p>
    </main>`;
  }
  return html`<${Shell} />`;
}

/** While a dialog is open, everything behind it is inert: no focus, no clicks, no reading. */
function Shell() {
  const modal = useStore((s) => !!s.modal);
  const chatOpen = useStore((s) => !!s.openId);
  return html`<div class="shell">
    <div class="behind" inert=${modal}>
      <${Banners} />
      <div class=${'layout' + (chatOpen ? ' chat-open' : '')}>
        <${Sidebar} />
        <${Chat} />
      </div>
      <${Toasts} />
    </div>
    <${ModalHost} />
  </div>`;
}

function Banners() {
  const conn = useStore((s) => s.conn);
  const long = useStore((s) => s.offlineLong);
  const revoked = useStore((s) => s.revoked);
  return html`${conn === 'offline' && html`<div class="banner offline" role="alert" data-testid="offline-banner">
      Node offline — reconnecting…
      ${long && html`<span class="hint" data-testid="offline-hint">If the node was restarted, it may listen on
        another port now: run <code>tern ui</code> again to open it there.</span>`}</div>`}
    ${conn === 'connecting' && html`<div class="banner connecting" role="status" data-testid="connecting-banner">
      Connecting to the node…</div>`}
    ${revoked && html`<div class="banner danger" role="alert" data-testid="revoked-banner">
      Another of your devices revoked this one: it can no longer send.</div>`}`;
}

/** Alt+↑ / Alt+↓: the conversation above or below the open one in the list. */
function step(delta) {
  const s = getState();
  const list = sortedConvs(s);
  if (!list.length) return;
  const at = list.findIndex((c) => c.id === s.openId);
  const next = at < 0 ? (delta > 0 ? 0 : list.length - 1) : Math.min(list.length - 1, Math.max(0, at + delta));
  if (list[next] && list[next].id !== s.openId) openConversation(list[next].id);
}

document.addEventListener('keydown', (e) => {
  if (getState().phase !== 'ready') return;
  if ((e.ctrlKey || e.metaKey) && !e.altKey && !e.shiftKey && (e.key === 'k' || e.key === 'K')) {
    e.preventDefault();
    setState({ modal: getState().modal && getState().modal.kind === 'switcher' ? null : { kind: 'switcher' } });
  } else if (e.altKey && !e.ctrlKey && !e.metaKey && (e.key === 'ArrowUp' || e.key === 'ArrowDown')) {
    if (getState().modal) return;
    e.preventDefault();
    step(e.key === 'ArrowUp' ? -1 : 1);
  } else if (e.key === 'Escape' && getState().modal) {
    setState({ modal: null });
  }
});

// The chat open before a reload opens again.
try {
  const open = sessionStorage.getItem('tern.open');
  if (open && /^[0-9a-f]{32}$/i.test(open)) setState({ openId: open });
} catch {
  /* storage disabled */
}

// A new `tern ui` link opened over this page (same document, new hash): start again with it.
window.addEventListener('hashchange', () => {
  if (/^#(.*&)?c=/.test(location.hash)) location.reload();
});

render(html`<${App} />`, document.getElementById('app'));
start();
