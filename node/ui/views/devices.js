// This user's devices: list, link a new one by its code, revoke one.

import { html, useEffect, useState } from '../vendor/preact-htm.js';
import { toast, errorText } from '../store.js';
import { call } from '../actions.js';
import { Modal } from './dialog.js';

const dateFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium' });

/** A link made here, as `device.list` gives it (docs/api.md, `Device.link`). */
const LINK_TEXT = {
  waiting: 'waiting for it to confirm',
  confirmed: 'confirmed',
  unconfirmed: 'not confirmed: revoke it if it is not yours',
};

export function Devices() {
  const [list, setList] = useState(null);
  const [code, setCode] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [confirm, setConfirm] = useState(null); // device_id to revoke
  const [sent, setSent] = useState(null); // {name, words} of the record just sent

  const load = () => call('device.list').then(setList, (e) => setError(errorText(e)));
  useEffect(() => {
    load();
  }, []);

  const add = async (e) => {
    e.preventDefault();
    if (!code.trim()) return;
    setBusy(true);
    setError(null);
    try {
      const d = await call('device.add', { code: code.trim() });
      setSent({ name: d.name, words: d.words });
      setCode('');
      await load();
    } catch (err) {
      setError(errorText(err));
    }
    setBusy(false);
  };

  const revoke = async (id) => {
    setBusy(true);
    setError(null);
    try {
      const d = await call('device.revoke', { device: id });
      toast(`${d.name || 'The device'} is revoked.`);
      setConfirm(null);
      await load();
    } catch (err) {
      setError(errorText(err));
    }
    setBusy(false);
  };

  return html`<${Modal} title="Devices" testid="devices">
    ${error && html`<p class="error" role="alert" data-testid="device-error">${error}</p>`}
    ${!list && !error && html`<p class="muted">Loading…</p>`}
    ${list && html`<ul class="devices" role="list" aria-label="Devices" data-testid="device-list">
      ${list.map((d) => html`<li role="listitem" key=${d.device_id} data-testid=${'device-' + d.device_id}>
        <span><strong>${d.name || d.device_id.slice(0, 8)}</strong>${d.this_device ? ' (this device)' : ''}
          <span class="muted"> · linked ${d.created_at ? dateFmt.format(new Date(d.created_at * 1000)) : ''}</span>
          ${d.link && html`<span class=${d.link === 'unconfirmed' ? 'error' : 'muted'} data-testid=${'device-link-' + d.device_id}
            data-link=${d.link}> · ${LINK_TEXT[d.link]}</span>`}</span>
        ${!d.this_device && (confirm === d.device_id
          ? html`<span class="confirm">Revoke for good?
              <button type="button" onClick=${() => setConfirm(null)}>Cancel</button>
              <button type="button" class="danger" data-testid=${'device-revoke-confirm-' + d.device_id} disabled=${busy}
                onClick=${() => revoke(d.device_id)}>Revoke</button></span>`
          : html`<button type="button" class="danger" data-testid=${'device-revoke-' + d.device_id}
              aria-label=${'Revoke ' + (d.name || d.device_id)} onClick=${() => setConfirm(d.device_id)}>Revoke</button>`)}
      </li>`)}
    </ul>`}
    ${sent && html`<div class="stack" role="status" data-testid="device-add-words">
      <h3>Confirm on ${sent.name || 'the new device'}</h3>
      <p>It must show these words:</p>
      <p><strong data-testid="device-add-words-text">${sent.words}</strong></p>
      <p class="muted">Confirm there only if the words are the same. If it shows other words, someone else
        used its code: answer no there.</p>
      <div class="row-end"><button type="button" onClick=${() => setSent(null)}>Done</button></div>
    </div>`}
    <form class="stack" onSubmit=${add} data-testid="device-add-form">
      <h3>Link a new device</h3>
      <p class="muted">On the new device run <code>tern device link</code> and paste the <code>tern-device:</code>${' '}code it shows.</p>
      <label>Code
        <input type="text" data-testid="device-add-code" value=${code} onInput=${(e) => setCode(e.target.value)} /></label>
      <div class="row-end"><button type="submit" class="primary" data-testid="device-add-submit" disabled=${busy || !code.trim()}>
        Link device</button></div>
    </form>
  <//>`;
}
