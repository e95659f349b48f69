// The dialog frame: Escape or the close button closes; focus moves into the dialog, stays
// inside it on Tab (the page behind is inert meanwhile, see app.js), and returns where it was.
// The dialog fits the viewport; its body scrolls.

import { html, useEffect, useRef } from '../vendor/preact-htm.js';
import { setState } from '../store.js';
import { Toasts } from './toasts.js';

export function closeModal() {
  setState({ modal: null });
}

const FOCUSABLE = 'a[href], button:not([disabled]), input:not([disabled]):not([tabindex="-1"]), textarea:not([disabled]), select:not([disabled]), [tabindex]:not([tabindex="-1"])';

/**
 * The element focused last outside any dialog: the one that opened a dialog. Kept here because
 * by the time a dialog mounts, the page behind it is already inert and has lost its focus.
 */
let lastOutside = null;
document.addEventListener('focusin', (e) => {
  if (e.target instanceof Element && !e.target.closest('.backdrop')) lastOutside = e.target;
});

function giveBack(el) {
  if (!el || !el.focus || !document.contains(el)) return;
  el.focus();
  // The page behind may still be inert this instant: try again once it is not, unless
  // something else (the composer of a chat just opened) took the focus meanwhile.
  if (document.activeElement !== el) {
    setTimeout(() => {
      const now = document.activeElement;
      if ((!now || now === document.body) && document.contains(el)) el.focus();
    }, 0);
  }
}

export function Modal({ title, testid, children, wide }) {
  const box = useRef(null);
  const titleId = 'dlg-' + testid;
  useEffect(() => {
    const opener = lastOutside;
    const first = box.current && (box.current.querySelector('[autofocus], input, textarea, select') || box.current.querySelector(FOCUSABLE));
    if (first) first.focus();
    else if (box.current) box.current.focus();
    return () => giveBack(opener);
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
      if (!box.current.contains(document.activeElement) || document.activeElement === box.current) {
        e.preventDefault();
        (e.shiftKey ? last : first).focus();
      } else if (e.shiftKey && document.activeElement === first) {
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
      data-testid=${testid} ref=${box} tabindex="-1" onKeyDown=${onKeyDown}>
      <header class="dialog-header">
        <h2 id=${titleId}>${title}</h2>
        <button type="button" class="icon" aria-label="Close" data-testid="dialog-close" onClick=${closeModal}>✕</button>
      </header>
      <div class="dialog-body">${children}</div>
      <${Toasts} inDialog=${true} />
    </div>
  </div>`;
}
