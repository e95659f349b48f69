// Contacts: add one from a link, show one's own link and its QR code, list contacts, and
// compare / verify safety numbers.

import { html, useEffect, useState } from '../vendor/preact-htm.js';
import { useStore, setState, getState, toast, errorText } from '../store.js';
import { acceptIdentity, call, openConversation, scheduleRefresh } from '../actions.js';
import { utf8Base64 } from '../format.js';
import { Modal } from './dialog.js';

/** A QR code made by the node (`qr {text}` → SVG), shown as an image, never as markup. */
export function Qr({ text, label, testid }) {
  const [src, setSrc] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    let live = true;
    setSrc(null);
    call('qr', { text })
      .then((r) => live && setSrc('data:image/svg+xml;base64,' + utf8Base64(r.svg)))
      .catch((e) => live && setError(errorText(e)));
    return () => {
      live = false;
    };
  }, [text]);
  if (error) return html`<p class="muted">QR code unavailable: ${error}</p>`;
  if (!src) return html`<div class="qr placeholder" aria-busy="true"></div>`;
  return html`<img class="qr" src=${src} alt=${label} data-testid=${testid} />`;
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    toast('Copied.');
  } catch {
    toast('Could not copy: select the text and copy it.', 'error');
  }
}

function AddContact() {
  const [link, setLink] = useState('');
  const [name, setName] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [changed, setChanged] = useState(null); // Contact whose new key waits
  const [unnamed, setUnnamed] = useState(null); // Contact added without a name

  const submit = async (e) => {
    e.preventDefault();
    // A link copied from wrapped text carries line breaks and spaces; a link has none.
    const clean = link.replace(/\s+/g, '');
    if (!clean) return;
    setBusy(true);
    setError(null);
    setChanged(null);
    setUnnamed(null);
    try {
      const params = { link: clean };
      if (name.trim()) params.name = name.trim();
      const res = await call('contact.add', params);
      setState((s) => ({ contacts: Object.assign({}, s.contacts, { [res.contact.user_id]: res.contact }) }));
      if (res.outcome === 'identity_changed') {
        setChanged(res.contact);
        setState((s) => ({ identityPending: Object.assign({}, s.identityPending, { [res.contact.user_id]: true }) }));
      } else {
        toast(res.outcome === 'updated' ? `${res.contact.name} updated.` : `${res.contact.name} added.`);
        // A short link carries no name: the node then names them by their user id.
        if (res.outcome === 'added' && !params.name && res.contact.name === res.contact.user_id.slice(0, 8)) {
          setUnnamed(res.contact);
        }
        setLink('');
        setName('');
        scheduleRefresh(false);
      }
    } catch (err) {
      setError(errorText(err));
    }
    setBusy(false);
  };

  const accept = async () => {
    setBusy(true);
    try {
      const res = await acceptIdentity(changed.user_id);
      toast(`New identity key for ${res.contact.name} accepted.`);
      setChanged(null);
      setLink('');
      setName('');
    } catch (err) {
      setError(errorText(err));
    }
    setBusy(false);
  };

  return html`<form class="stack" onSubmit=${submit} data-testid="contact-add-form">
    <h3>Add a contact</h3>
    <label><span>Their link (<code>tern:</code> or <code>TERN:</code>)</span>
      <textarea data-testid="contact-add-link" rows="3" required value=${link} onInput=${(e) => setLink(e.target.value)}></textarea></label>
    <label><span>Name (optional)</span>
      <input type="text" data-testid="contact-add-name" value=${name} onInput=${(e) => setName(e.target.value)} /></label>
    ${error && html`<p class="error" role="alert" data-testid="contact-add-error">${error}</p>`}
    ${unnamed && html`<p class="notice" role="status" data-testid="contact-add-unnamed">
      Their link carries no name, so they are listed as <strong>${unnamed.name}</strong>: use Rename
      in the list below to give them one.</p>`}
    ${changed && html`<div class="warning" role="alert" data-testid="contact-identity-changed">
      <strong>${changed.name}'s identity key is different from the one you had.</strong>${' '}
      This happens when they reinstall Tern — or when someone is impersonating them. Until you
      accept, nothing is sent to them. Compare safety numbers with them in person if you can.
      <div class="row-end"><button type="button" class="danger" data-testid="contact-accept" disabled=${busy} onClick=${accept}>
        Accept the new key</button></div>
    </div>`}
    <div class="row-end"><button type="submit" class="primary" data-testid="contact-add-submit" disabled=${busy}>
      ${busy ? 'Adding…' : 'Add contact'}</button></div>
  </form>`;
}

function MyLink() {
  const [info, setInfo] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => {
    call('contact.link').then(setInfo, (e) => setError(errorText(e)));
  }, []);
  return html`<section class="stack" data-testid="my-link">
    <h3>Your link</h3>
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${!info && !error && html`<p class="muted">Loading…</p>`}
    ${info && html`<div class="stack">
      <${Qr} text=${info.short || info.link} label="QR code of your contact link" testid="my-link-qr" />
      ${info.short && html`<div class="copy-row"><code class="wrap" data-testid="my-link-short">${info.short}</code>
        <button type="button" onClick=${() => copy(info.short)}>Copy short link</button></div>`}
      <div class="copy-row"><code class="wrap" data-testid="my-link-long">${info.link}</code>
        <button type="button" data-testid="my-link-copy" onClick=${() => copy(info.link)}>Copy link</button></div>
    </div>`}
  </section>`;
}

export function Contacts() {
  const contacts = useStore((s) => s.contacts);
  const pending = useStore((s) => s.identityPending);
  const list = Object.values(contacts).sort((a, b) => a.name.localeCompare(b.name));
  return html`<${Modal} title="Contacts" testid="contacts" wide=${true}>
    <div class="columns">
      <${MyLink} />
      <div class="stack">
        <${AddContact} />
        <section>
        <h3>Your contacts</h3>
        ${!list.length && html`<p class="muted">None yet.</p>`}
        <ul class="contacts" role="list" aria-label="Contacts" data-testid="contact-list">
          ${list.map((c) => html`<${ContactRow} key=${c.user_id} c=${c} pending=${!!pending[c.user_id]} />`)}
        </ul>
        </section>
      </div>
    </div>
  <//>`;
}

function ContactRow({ c, pending }) {
  const [renaming, setRenaming] = useState(false);
  const [name, setName] = useState(c.name);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);

  const start = () => {
    setName(c.name);
    setError(null);
    setRenaming(true);
  };
  const save = async (e) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      const next = await call('contact.rename', { contact: c.user_id, name });
      setState((s) => ({ contacts: Object.assign({}, s.contacts, { [next.user_id]: next }) }));
      scheduleRefresh(false);
      setRenaming(false);
      toast(`Renamed to ${next.name}.`);
    } catch (err) {
      setError(errorText(err));
    }
    setBusy(false);
  };

  return html`<li role="listitem" data-testid=${'contact-' + c.user_id} data-verified=${c.verified ? 'true' : 'false'}>
    ${renaming
      ? html`<form class="inline rename" onSubmit=${save} data-testid=${'contact-rename-form-' + c.user_id}>
          <label>New name for ${c.name}
            <input type="text" data-testid=${'contact-rename-input-' + c.user_id} value=${name} autofocus
              onInput=${(e) => setName(e.target.value)}
              onKeyDown=${(e) => { if (e.key === 'Escape') { e.stopPropagation(); setRenaming(false); } }} /></label>
          <button type="button" onClick=${() => setRenaming(false)}>Cancel</button>
          <button type="submit" class="primary" data-testid=${'contact-rename-save-' + c.user_id} disabled=${busy}>Save</button>
        </form>`
      : html`<span class="contact-name">${c.name}
          ${c.verified && html` <span class="verified" role="img" aria-label="verified" title="Verified">✔</span>`}
          ${pending && html` <span class="tag danger">key changed</span>`}</span>
        <span class="contact-actions">
          <button type="button" data-testid=${'contact-message-' + c.user_id} onClick=${() => openConversation(c.user_id)}>Message</button>
          <button type="button" data-testid=${'contact-rename-' + c.user_id} aria-label=${'Rename ' + c.name} onClick=${start}>Rename</button>
          <button type="button" data-testid=${'contact-safety-' + c.user_id}
            onClick=${() => setState({ modal: { kind: 'safety', id: c.user_id } })}>Safety number</button>
        </span>`}
    ${error && html`<p class="error full" role="alert" data-testid=${'contact-rename-error-' + c.user_id}>${error}</p>`}
  </li>`;
}

export function Safety({ id }) {
  const [info, setInfo] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const pending = useStore((s) => !!s.identityPending[id]);

  useEffect(() => {
    call('safety_number', { contact: id }).then(setInfo, (e) => setError(errorText(e)));
  }, [id]);

  const verify = async () => {
    setBusy(true);
    setError(null);
    try {
      const c = await call('verify', { contact: id });
      setState((s) => ({ contacts: Object.assign({}, s.contacts, { [c.user_id]: c }) }));
      setInfo(Object.assign({}, info, { verified: true }));
      toast(`${c.name} is verified.`);
    } catch (e) {
      setError(errorText(e));
    }
    setBusy(false);
  };

  const name = (info && info.name) || (getState().contacts[id] || {}).name || id.slice(0, 8);
  return html`<${Modal} title=${'Safety number with ' + name} testid="safety">
    ${error && html`<p class="error" role="alert">${error}</p>`}
    ${!info && !error && html`<p class="muted">Loading…</p>`}
    ${info && html`<div class="stack center">
      <p>Compare these numbers with ${name}, in person or on a call. If they match, nobody is
        between you.</p>
      <pre class="digits" data-testid="safety-digits" aria-label="Safety number">${info.digits}</pre>
      <${Qr} text=${info.qr} label=${'QR code of the safety number with ' + name} testid="safety-qr" />
      ${pending && html`<p class="warning" role="alert">Their identity key changed and is not accepted yet.</p>`}
      ${info.verified
        ? html`<p data-testid="safety-verified"><span class="verified" aria-hidden="true">✔</span> Verified</p>`
        : html`<button type="button" class="primary" data-testid="safety-verify" disabled=${busy || pending} onClick=${verify}>
            The numbers match: mark verified</button>`}
    </div>`}
  <//>`;
}
