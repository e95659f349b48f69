// The dialog frame: Escape or the close button closes; focus moves into the dialog, stays
// inside it on Tab, and returns where it was.

import { html, useEffect, useRef } from '../vendor/preact-htm.js';
import { setState } from '../store.js';

export function closeModal() {
  setState({ modal: null });
}

const FOCUSABLE = 'a[href], button:not([disabled]), input:not([disabled]):not([tabindex="-1"]), textarea:not([disabled]), select:not([disabled]), [tabindex]:not([tabindex="-1"])';

export function Modal({ title, testid, children, wide }) {
  const box = useRef(null);
  const titleId = 'dlg-' + testid;
  useEffect(() => {
    const before = document.activeElement;
    const first = box.current && (box.current.querySelector('[autofocus], input, textarea, select') || box.current.querySelector(FOCUSABLE));
    if (first) first.focus();
    return () => {
      if (before && before.focus && document.contains(before)) before.focus();
    };
  }, []);
  const onKeyDown = (e) => {
    if (e.key === 'Escape') {
      e.stopPropagation();
      closeModal();
    } else if (e.key === 'Tab' && box.current) {
      const items = Array.from(box.current.querySelectorAll(FOCUSABLE));
      if (!items.length) return;
      const first = items[0];
      const last = items[items.length - 1];
      if (e.shiftKey && document.activeElement === first) {
        e.preventDefault();
        last.focus();
      } else if (!e.shiftKey && document.activeElement === last) {
        e.preventDefault();
        first.focus();
      }
    }
  };
  return html`<div class="backdrop" onMouseDown=${(e) => { if (e.target === e.currentTarget) closeModal(); }}>
    <div class=${'dialog' + (wide ? ' wide' : '')} role="dialog" aria-modal="true" aria-labelledby=${titleId}
      data-testid=${testid} ref=${box} onKeyDown=${onKeyDown}>
      <header class="dialog-header">
        <h2 id=${titleId}>${title}</h2>
        <button type="button" class="icon" aria-label="Close" data-testid="dialog-close" onClick=${closeModal}>✕</button>
      </header>
      <div class="dialog-body">${children}</div>
    </div>
  </div>`;
}
