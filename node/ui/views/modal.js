// Dialogs: one at a time, named by state.modal.kind.

import { html } from '../vendor/preact-htm.js';
import { useStore } from '../store.js';
import { Switcher } from './switcher.js';
import { GroupCreate, GroupInfo } from './groups.js';
import { Contacts, Safety } from './contacts.js';
import { Devices } from './devices.js';
import { Settings } from './settings.js';

export function ModalHost() {
  const modal = useStore((s) => s.modal);
  if (!modal) return null;
  switch (modal.kind) {
    case 'switcher':
      return html`<${Switcher} />`;
    case 'group-create':
      return html`<${GroupCreate} />`;
    case 'group-info':
      return html`<${GroupInfo} id=${modal.id} />`;
    case 'contacts':
      return html`<${Contacts} />`;
    case 'safety':
      return html`<${Safety} id=${modal.id} />`;
    case 'devices':
      return html`<${Devices} />`;
    case 'settings':
      return html`<${Settings} />`;
    default:
      return null;
  }
}

