// Short notices. They never lie over anything: with no dialog open they take a strip of their
// own under the layout (the layout gets shorter while one shows); with a dialog open they show
// in the dialog's own footer, above the backdrop that dims the rest.

import { html } from '../vendor/preact-htm.js';
import { useStore } from '../store.js';

export function Toasts({ inDialog }) {
  const toasts = useStore((s) => s.toasts);
  const modal = useStore((s) => !!s.modal);
  if (modal !== !!inDialog) return null;
  return html`<div class=${'toasts' + (inDialog ? ' in-dialog' : '') + (toasts.length ? '' : ' empty')}
      aria-live="polite" data-testid="toasts">
    ${toasts.map((t) => html`<div key=${t.id} class=${'toast ' + t.kind} role=${t.kind === 'error' ? 'alert' : 'status'}>${t.text}</div>`)}
  </div>`;
}
