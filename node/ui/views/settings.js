// Settings: what desktop notifications show, and where this device is woken while it is not
// running (its push endpoint).

import { html, useEffect, useState } from '../vendor/preact-htm.js';
import { useStore, setState, getState, savePrefs, errorText, toast } from '../store.js';
import { call, signOut } from '../actions.js';
import { askPermission, notificationsSupported } from '../notify.js';
import { Modal } from './dialog.js';

const CHOICES = [
  ['content', 'Name and message'],
  ['name', 'Name only'],
  ['none', 'No notifications'],
];

export function Settings() {
  const notify = useStore((s) => s.prefs.notify);
  const me = useStore((s) => s.me);
  const [perm, setPerm] = useState(notificationsSupported() ? Notification.permission : 'unsupported');

  const choose = async (v) => {
    const prefs = Object.assign({}, getState().prefs, { notify: v });
    savePrefs(prefs);
    setState({ prefs });
    if (v !== 'none') setPerm(await askPermission());
  };

  return html`<${Modal} title="Settings" testid="settings">
    <fieldset data-testid="notify-setting">
      <legend>Desktop notifications</legend>
      ${CHOICES.map(([v, label]) => html`<label class="check" key=${v}>
        <input type="radio" name="notify" value=${v} checked=${notify === v} data-testid=${'notify-' + v}
          onChange=${() => choose(v)} /> ${label}</label>`)}
      ${perm === 'denied' && html`<p class="warning">The browser blocks notifications for this page; allow them in its site settings.</p>`}
      ${perm === 'default' && notify !== 'none' && html`<button type="button" onClick=${async () => setPerm(await askPermission())}>
        Allow notifications</button>`}
      ${perm === 'unsupported' && html`<p class="muted">This browser has no notifications.</p>`}
      <p class="muted">Shown when this page is hidden or another chat is open. Mute a single chat with the bell in its header.</p>
    </fieldset>
    <${PushSetting} />
    ${me && html`<section class="stack">
      <h3>This device</h3>
      <p>Name: ${me.name}</p>
      <p class="muted">User id <code class="wrap">${me.user_id}</code></p>
      <p class="muted">Fingerprint <code class="wrap">${me.fingerprint}</code></p>
    </section>`}
    <${SignOut} />
  <//>`;
}

/** Ends this page's session (`ui.sign_out`): opening Tern again takes a new `tern ui`. */
function SignOut() {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const run = async () => {
    setBusy(true);
    setError(null);
    try {
      await signOut();
    } catch (e) {
      setError(errorText(e));
      setBusy(false);
    }
  };
  return html`<section class="stack" data-testid="sign-out-setting">
    <h3>This page</h3>
    <p class="muted">Signing out ends this page's session: the node keeps running, and only a new
      <code>tern ui</code> opens Tern here again. Other pages stay signed in. Texts this page has not
      sent yet, and drafts, are dropped.</p>
    ${error && html`<p class="error" role="alert" data-testid="sign-out-error">${error}</p>`}
    <div class="row-end"><button type="button" class="danger" data-testid="sign-out" disabled=${busy} onClick=${run}>
      Sign out of this page</button></div>
  </section>`;
}

/** How a home relay holds the endpoint, in words (`PushRelayInfo.state`, docs/api.md). */
const RELAY_STATE = {
  registered: 'holds it',
  refused: 'refused it',
  pending: 'not reached yet',
  failed: 'could not be reached; tried again',
  cleared: 'dropped it',
  none: '—',
};

/** The push endpoint (`push.status`, `push.set`, `push.clear`): a UnifiedPush-style URL the
 * home relays call, with no content, when mail waits for this device while it is offline. */
function PushSetting() {
  const [push, setPush] = useState(null);
  const [url, setUrl] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);

  useEffect(() => {
    call('push.status').then(setPush, (e) => setError(errorText(e)));
  }, []);

  const run = async (method, params, done) => {
    setBusy(true);
    setError(null);
    try {
      setPush(await call(method, params));
      toast(done);
      setUrl('');
    } catch (e) {
      setError(errorText(e));
    }
    setBusy(false);
  };
  const set = (e) => {
    e.preventDefault();
    if (url.trim()) run('push.set', { url: url.trim() }, 'Wake-ups are set.');
  };

  return html`<fieldset data-testid="push-setting">
    <legend>Wake-ups while this device is offline</legend>
    <p class="muted">Your home relays call this address (a UnifiedPush endpoint) when messages wait for
      this device, with no content: only that something is waiting.</p>
    ${error && html`<p class="error" role="alert" data-testid="push-error">${error}</p>`}
    ${push && (push.url
      ? html`<p data-testid="push-current">Set: <code class="wrap">${push.host}</code></p>`
      : html`<p class="muted" data-testid="push-current">None set.</p>`)}
    ${push?.url && push.relays.length > 0 && html`<ul class="muted" data-testid="push-relays">
      ${push.relays.map((r) => html`<li key=${r.addr} data-testid="push-relay" data-state=${r.state}>
        ${r.connected ? 'Relay' : 'Relay (offline)'} ${RELAY_STATE[r.state] ?? r.state}${r.code ? ` (${r.code})` : ''}</li>`)}
    </ul>`}
    <form class="inline" onSubmit=${set}>
      <label>Endpoint URL
        <input type="url" data-testid="push-url" placeholder="https://…" value=${url}
          onInput=${(e) => setUrl(e.target.value)} /></label>
      <button type="submit" class="primary" data-testid="push-set" disabled=${busy || !url.trim()}>Set</button>
    </form>
    ${push?.url && html`<button type="button" data-testid="push-clear" disabled=${busy}
      onClick=${() => run('push.clear', undefined, 'Wake-ups are off.')}>Turn off</button>`}
  </fieldset>`;
}
