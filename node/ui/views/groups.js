// Group dialogs: create one, and see / change its members.

import { html, useState } from '../vendor/preact-htm.js';
import { useStore, setState, toast, errorText } from '../store.js';
import { call, openConversation, putGroup } from '../actions.js';
import { Modal, closeModal } from './dialog.js';

function contactsSorted(s) {
  return Object.values(s.contacts).sort((a, b) => a.name.localeCompare(b.name));
}

export function GroupCreate() {
  const contacts = useStore((s) => s.contacts);
  const [title, setTitle] = useState('');
  const [picked, setPicked] = useState({});
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);

  const submit = async (e) => {
    e.preventDefault();
    const t = title.trim();
    if (!t) return setError('Give the group a title.');
    if (new TextEncoder().encode(t).length > 128) return setError('The title can be at most 128 bytes.');
    setBusy(true);
    setError(null);
    try {
      const g = await call('group_create', { title: t, members: Object.keys(picked).filter((k) => picked[k]) });
      putGroup(g);
      toast(`Group “${g.title}” created.`);
      openConversation(g.id);
    } catch (err) {
      setError(errorText(err));
      setBusy(false);
    }
  };

  const list = contactsSorted({ contacts });
  return html`<${Modal} title="New group" testid="group-create">
    <form onSubmit=${submit} data-testid="group-create-form" class="stack">
      <label>Title
        <input type="text" data-testid="group-title" required maxlength="128" value=${title}
          onInput=${(e) => setTitle(e.target.value)} /></label>
      <fieldset>
        <legend>Members</legend>
        ${!list.length && html`<p class="muted">No contacts yet: you can add members later.</p>`}
        ${list.map((c) => html`<label class="check" key=${c.user_id}>
          <input type="checkbox" data-testid=${'group-create-member-' + c.user_id} checked=${!!picked[c.user_id]}
            onChange=${(e) => setPicked(Object.assign({}, picked, { [c.user_id]: e.target.checked }))} />
          ${c.name}</label>`)}
      </fieldset>
      ${error && html`<p class="error" role="alert" data-testid="group-create-error">${error}</p>`}
      <div class="row-end">
        <button type="button" onClick=${closeModal}>Cancel</button>
        <button type="submit" class="primary" data-testid="group-create-submit" disabled=${busy}>Create group</button>
      </div>
    </form>
  <//>`;
}

export function GroupInfo({ id }) {
  const g = useStore((s) => s.groups[id]);
  const contacts = useStore((s) => s.contacts);
  const me = useStore((s) => s.me);
  const [add, setAdd] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [confirmLeave, setConfirmLeave] = useState(false);

  if (!g) {
    return html`<${Modal} title="Group" testid="group-info"><p class="muted">Loading…</p><//>`;
  }

  const run = async (method, params, done) => {
    setBusy(true);
    setError(null);
    try {
      const next = await call(method, Object.assign({ group: id }, params));
      putGroup(next);
      if (done) done(next);
    } catch (e) {
      setError(errorText(e));
    }
    setBusy(false);
  };

  const inGroup = new Set(g.members.map((m) => m.user_id));
  const candidates = contactsSorted({ contacts }).filter((c) => !inGroup.has(c.user_id));
  const myId = me && me.user_id;

  return html`<${Modal} title=${g.title} testid="group-info">
    <p class="muted">${g.members.length} member${g.members.length === 1 ? '' : 's'}${g.member ? '' : ' · you are not a member'}${g.admin ? ' · you are an admin' : ''}</p>
    <ul class="members" role="list" aria-label="Members" data-testid="group-members">
      ${g.members.map((m) => html`<li role="listitem" key=${m.user_id} data-testid=${'group-member-' + m.user_id}
          data-admin=${m.admin ? 'true' : 'false'}>
        <span>${m.name || m.user_id.slice(0, 8)}${m.user_id === myId ? ' (you)' : ''}</span>
        ${m.admin && html`<span class="tag" title="Admin"><span aria-hidden="true">★</span> admin</span>`}
        ${g.admin && g.member && m.user_id !== myId && html`<button type="button" class="link danger" disabled=${busy}
          data-testid=${'group-remove-' + m.user_id} aria-label=${'Remove ' + (m.name || m.user_id)}
          onClick=${() => run('group_remove', { members: [m.user_id] }, () => toast('Member removed.'))}>Remove</button>`}
      </li>`)}
    </ul>
    ${g.admin && g.member && html`<form class="inline" data-testid="group-add-form"
        onSubmit=${(e) => { e.preventDefault(); if (add) run('group_add', { members: [add] }, () => { setAdd(''); toast('Member added.'); }); }}>
      <label>Add a contact
        <select data-testid="group-add-select" value=${add} onChange=${(e) => setAdd(e.target.value)}>
          <option value="">Choose…</option>
          ${candidates.map((c) => html`<option value=${c.user_id} key=${c.user_id}>${c.name}</option>`)}
        </select></label>
      <button type="submit" data-testid="group-add-submit" disabled=${busy || !add}>Add</button>
    </form>`}
    ${error && html`<p class="error" role="alert" data-testid="group-error">${error}</p>`}
    ${g.member && html`<div class="row-end">
      ${!confirmLeave
        ? html`<button type="button" class="danger" data-testid="group-leave" onClick=${() => setConfirmLeave(true)}>Leave group</button>`
        : html`<span>Leave “${g.title}”? You will get no more of its messages.</span>
          <button type="button" onClick=${() => setConfirmLeave(false)}>Cancel</button>
          <button type="button" class="danger" data-testid="group-leave-confirm" disabled=${busy}
            onClick=${() => run('group_leave', {}, () => { toast('You left the group.'); setState({ modal: null }); })}>Leave</button>`}
    </div>`}
  <//>`;
}
