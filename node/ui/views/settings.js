// Settings: what desktop notifications show.

import { html, useState } from '../vendor/preact-htm.js';
import { useStore, setState, getState, savePrefs } from '../store.js';
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
    ${me && html`<section class="stack">
      <h3>This device</h3>
      <p>Name: ${me.name}</p>
      <p class="muted">User id <code class="wrap">${me.user_id}</code></p>
      <p class="muted">Fingerprint <code class="wrap">${me.fingerprint}</code></p>
    </section>`}
  <//>`;
}
