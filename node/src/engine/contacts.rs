//! Contacts, contact links, identity changes, safety numbers.

use std::collections::HashMap;
use tern_relay::rpc::Requests as _;

use tern_crypto::{IdentityPublicKey, SignedDeviceList, UserId, safety::SafetyNumber};
use tern_relay::wire::ErrorCode;
use tern_store::{Contact, ContactSaved};

use super::{ContactState, Engine, command::Reply, device_peer};
use crate::{
    consts::{LINK_LIST_FETCH_TIMEOUT, MAX_NAME_BYTES},
    error::NodeError,
    link::{ContactLink, Link, LinkError, ShortLink},
    types::*,
};

const PENDING_FILE: &str = "identity-changes.json";

/// Loads every contact from the store.
pub(crate) fn load_contacts(
    store: &tern_store::Store,
) -> Result<HashMap<UserId, ContactState>, NodeError> {
    let mut out = HashMap::new();
    for hex in store.contact_ids()? {
        let Some(id) = UserId::from_hex(&hex) else {
            tracing::warn!(contact = %hex, "a stored contact's id is not a user id; skipped");
            continue;
        };
        if let Some(c) = store.contact(&hex)? {
            let list = c
                .device_list
                .as_deref()
                .and_then(|b| SignedDeviceList::from_bytes(b).ok());
            let relays = c.relays.iter().filter_map(|r| r.parse().ok()).collect();
            out.insert(
                id,
                ContactState {
                    contact: c,
                    list,
                    relays,
                },
            );
        }
    }
    Ok(out)
}

impl Engine {
    pub(crate) fn load_pending_identity(&mut self) {
        let path = self.me.home.dir().join(PENDING_FILE);
        if let Ok(bytes) = std::fs::read(&path)
            && let Ok(map) = serde_json::from_slice(&bytes)
        {
            self.people.pending_identity = map;
        }
    }

    pub(crate) fn save_pending_identity(&self) -> Result<(), NodeError> {
        let bytes = serde_json::to_vec(&self.people.pending_identity)
            .map_err(|e| NodeError::record("pending identity keys", e))?;
        crate::home::write_atomic(&self.me.home.dir().join(PENDING_FILE), &bytes, true)?;
        Ok(())
    }

    /// Finds a contact by user id or name. A user id that is also another contact's name
    /// (one a contact's link offered, or one given before such names were refused) is
    /// ambiguous rather than taken as the id: the user may mean the one listed so.
    pub(crate) fn resolve(&self, contact: &str) -> Result<UserId, NodeError> {
        let by_id = UserId::from_hex(contact).filter(|id| self.people.contacts.contains_key(id));
        let lower = contact.to_lowercase();
        let mut matches: Vec<UserId> = self
            .people
            .contacts
            .iter()
            .filter(|(_, c)| c.contact.display_name.to_lowercase() == lower)
            .map(|(id, _)| *id)
            .collect();
        matches.extend(by_id.filter(|id| !matches.contains(id)));
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(NodeError::UnknownContact(contact.to_owned())),
            _ => Err(NodeError::AmbiguousContact(contact.to_owned())),
        }
    }

    /// Who owns each active device of every known user, and each revoked one.
    pub(crate) fn rebuild_device_owner(&mut self) {
        // A sender of quarantined mail may be known now.
        self.inbox.quarantine_due = true;
        self.people.device_owner.clear();
        self.people.revoked_devices.clear();
        for (id, c) in self.people.contacts.iter().chain(self.people.peers.iter()) {
            for (dev, _) in c.devices() {
                if let Some(p) = device_peer(&dev) {
                    self.people.device_owner.insert(p, *id);
                }
            }
            if let Some(list) = &c.list {
                for e in list.list().devices.iter().filter(|e| !e.is_active()) {
                    self.people.revoked_devices.insert(e.device_id(), *id);
                }
            }
        }
    }

    pub(super) fn contact_info(&self, id: &UserId) -> Option<ContactInfo> {
        self.people.contacts.get(id).map(|c| ContactInfo {
            user_id: *id,
            name: c.contact.display_name.clone(),
            verified: c.contact.verified,
            identity_change_pending: self.people.pending_identity.contains_key(id),
            devices: c.devices().len(),
            relays: c.contact.relays.clone(),
        })
    }

    /// Fills in the names of a message's sender (and of the sending device when it is
    /// another of this user's devices), so that nothing shows hex ids.
    pub(crate) fn name_message(&self, m: &mut MessageInfo) {
        if let Some(info) = &mut m.membership {
            self.name_membership(info);
        }
        if m.own {
            m.sender_name = Some(self.me.config.name.clone());
            if m.sender_device != self.me.device_hex {
                m.sender_device_name = self
                    .me
                    .keys
                    .device_list
                    .list()
                    .devices
                    .iter()
                    .find(|e| e.device_id().to_string() == m.sender_device)
                    .map(|e| e.certificate.certificate().name.clone());
            }
        } else {
            m.sender_name = UserId::from_hex(&m.sender)
                .and_then(|u| self.people.contacts.get(&u))
                .map(|c| c.contact.display_name.clone());
        }
    }

    /// [`Engine::name_message`] over a page.
    pub(crate) fn named(&self, mut page: Vec<MessageInfo>) -> Vec<MessageInfo> {
        for m in &mut page {
            self.name_message(m);
        }
        page
    }

    /// An event as sent to API clients: messages carry their sender's name.
    pub(crate) fn named_event(&self, mut ev: Event) -> Event {
        if let Event::Message { message } = &mut ev {
            self.name_message(message);
        }
        ev
    }

    /// The name to show for a conversation: a direct one is named after the contact as
    /// they are called now (the stored title is the name when it began).
    pub(crate) fn conversation_name(&self, id: &str, title: Option<&str>) -> Option<String> {
        UserId::from_hex(id)
            .and_then(|u| self.people.contacts.get(&u))
            .map(|c| c.contact.display_name.clone())
            .or_else(|| title.map(str::to_owned))
    }

    pub(crate) fn contact_list(&self) -> Vec<ContactInfo> {
        let mut out: Vec<ContactInfo> = self
            .people
            .contacts
            .keys()
            .filter_map(|id| self.contact_info(id))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name).then(a.user_id.cmp(&b.user_id)));
        out
    }

    pub(crate) fn contact_link(&self) -> Result<LinkInfo, NodeError> {
        let link = ContactLink::create(
            &self.me.keypair,
            &self.me.config.name,
            &self.relays.home_relays,
            &self.me.keys.device_list,
        )?;
        // The short form names the first home relay: the one this device publishes its
        // device list at first.
        let short = match self.relays.home_relays.first() {
            Some(relay) => match ShortLink::create(&self.me.keys.identity, self.me.user, relay) {
                Ok(short) => Some(short),
                Err(e) => {
                    tracing::warn!("no short contact link for relay {relay}: {e}");
                    None
                }
            },
            None => None,
        };
        Ok(LinkInfo { link, short })
    }

    /// Adds (or updates) a contact from a link and answers `reply`. A short link's device
    /// list is fetched from the relay it names in a task; the contact is saved when it
    /// comes, and the answer waits (bounded) for a home relay to take the new allow-list,
    /// also in a task. Nothing here waits on the network.
    pub(crate) fn add_contact(
        &mut self,
        link: String,
        name: Option<String>,
        accept_new_key: bool,
        reply: Reply<AddedContact>,
    ) {
        let checked = match name.as_deref().map(check_name).transpose() {
            Ok(checked) => checked,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let name = checked;
        let parsed = match self.check_add(&link, name.as_deref(), accept_new_key) {
            Ok(parsed) => parsed,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        match parsed {
            Link::Full(l) => self.save_link(*l, name, reply),
            // Only now the network: a short link's devices come from the relay it names.
            Link::Short(s) => {
                let relay = s.relay_peer();
                let fetch = fetch_link_list(self.net.clone(), s);
                self.off_task(reply, fetch, move |engine, fetched, reply| {
                    // Checked again: the contact may have changed while the list came.
                    let checked = engine
                        .check_add(&link, name.as_deref(), accept_new_key)
                        .and(fetched);
                    match checked {
                        Ok(l) => engine.save_link(l, name, reply),
                        Err(e) => {
                            engine.forget_relay_unless_used(relay);
                            let _ = reply.send(Err(e));
                        }
                    }
                });
            }
        }
    }

    /// What `contact add` checks, before anything goes to the network and again once it
    /// came back: the link ([`Self::check_link`]), and that the name given is not another
    /// contact's.
    fn check_add(
        &mut self,
        link: &str,
        name: Option<&str>,
        accept_new_key: bool,
    ) -> Result<Link, NodeError> {
        let parsed = self.check_link(link, accept_new_key)?;
        if let Some(n) = name {
            let user = match &parsed {
                Link::Full(l) => l.user_id,
                Link::Short(s) => s.user_id,
            };
            self.check_name_free(n, &user)?;
        }
        Ok(parsed)
    }

    /// What `contact add` checks of a link before anything goes to the network: it parses,
    /// is not this user's, and a changed identity key is accepted (else it is kept as
    /// pending and the add refused).
    fn check_link(&mut self, link: &str, accept_new_key: bool) -> Result<Link, NodeError> {
        let parsed = Link::parse(link)?;
        let (user_id, identity_key) = match &parsed {
            Link::Full(l) => (l.user_id, l.identity_key),
            Link::Short(s) => (s.user_id, s.identity_key),
        };
        if user_id == self.me.user {
            return Err(NodeError::OwnLink);
        }
        if let Some(existing) = self.people.contacts.get(&user_id)
            && existing.contact.identity_key != identity_key.as_bytes().to_vec()
            && !accept_new_key
        {
            tracing::warn!(contact = %user_id, "identity key changed; sending blocked until accepted");
            self.people
                .pending_identity
                .insert(user_id, link.trim().to_owned());
            self.save_pending_identity()?;
            self.emit(Event::IdentityChanged { user_id });
            return Err(NodeError::IdentityChanged(
                existing.contact.display_name.clone(),
            ));
        }
        Ok(parsed)
    }

    /// Drops the connection to a relay (a refused short link's, a removed relay's once its
    /// drain is over), unless the relay is one this node uses anyway.
    pub(super) fn forget_relay_unless_used(&self, relay: Option<libp2p::PeerId>) {
        if let Some(relay) = relay
            && !self.mailbox_relay_peers().contains(&relay)
            && !self
                .people
                .contacts
                .values()
                .any(|c| c.relay_peers().contains(&relay))
        {
            self.net.forget_relay_soon(relay);
        }
    }

    /// Saves the contact a checked link names, then answers `reply` once the home relays
    /// took the new allow-list (waited for in a task, bounded).
    fn save_link(&mut self, parsed: ContactLink, name: Option<String>, reply: Reply<AddedContact>) {
        let saved = match self.save_contact_link(&parsed, name) {
            Ok(saved) => saved,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let user_id = parsed.user_id;
        for addr in &parsed.relays {
            self.net.add_relay_soon(addr.clone(), false);
        }
        // A short link names one of the contact's relays; their record in the DHT names all
        // of them, so that what is sent to them from now on goes to every one.
        self.look_up_contact(&user_id);
        // A contact just added is about to be written to: the prekey claims for sessions
        // with their devices start now, alongside the allow-list, so that a first text
        // sent at once does not wait a round trip for them. What the result says (a
        // session with no device yet) matters only when something is sent. A revoked device
        // sends nothing, and takes no keys.
        if !self.me.revoked {
            let _ = self.sessions_reachable(&user_id);
        }
        // Waited for (bounded) before the answer: the new contact's devices may deposit
        // without a grant only once a home relay holds them in the allow-list, and a user
        // who adds a contact and quits at once must not leave that undone. Each home relay
        // is given the list again whenever it is set up.
        let allow_list = self.push_allow_list_now();
        self.off_task(reply, allow_list, move |engine, (), reply| {
            for relay in engine.relays.relay_up.clone() {
                engine.subscribe_presence(relay);
            }
            // Mail from this contact may have been waiting for us to know them.
            engine.fetch_home_mailboxes();
            let outcome = match saved {
                ContactSaved::Added => "added",
                ContactSaved::Updated => "updated",
                ContactSaved::IdentityChanged => "identity_changed",
            };
            let out = engine
                .contact_info(&user_id)
                .ok_or_else(|| NodeError::UnknownContact(user_id.to_string()))
                .map(|contact| AddedContact {
                    contact,
                    outcome: outcome.into(),
                });
            let _ = reply.send(out);
        });
    }

    /// Stores the contact a checked link names (keeping a newer stored device list), with
    /// its direct conversation, and takes it into the engine's maps.
    fn save_contact_link(
        &mut self,
        parsed: &ContactLink,
        name: Option<String>,
    ) -> Result<ContactSaved, NodeError> {
        let user_id = parsed.user_id;
        let id = user_id.to_string();
        let previous = self
            .people
            .contacts
            .get(&user_id)
            .map(|c| c.contact.clone());
        let display_name = name
            .or_else(|| previous.as_ref().map(|p| p.display_name.clone()))
            .unwrap_or_else(|| parsed.name.clone());
        let display_name = if display_name.is_empty() {
            id[..8].to_owned()
        } else {
            display_name
        };
        // Keep a newer stored list if the link carries an older one.
        let (list_bytes, version) = match previous.as_ref().and_then(|p| {
            p.device_list
                .clone()
                .filter(|_| p.identity_key == parsed.identity_key.as_bytes().to_vec())
                .map(|b| (b, p.device_list_version))
        }) {
            Some((b, v)) if v >= parsed.device_list.list().version => (b, v),
            _ => (
                parsed.device_list.as_bytes().to_vec(),
                parsed.device_list.list().version,
            ),
        };
        let contact = Contact {
            user_id: id.clone(),
            display_name: display_name.clone(),
            verified: previous.as_ref().is_some_and(|p| p.verified),
            identity_key: parsed.identity_key.as_bytes().to_vec(),
            device_list: Some(list_bytes.clone()),
            device_list_version: version,
            relays: parsed.relays.iter().map(ToString::to_string).collect(),
        };
        let now = self.clock.now_ms();
        let saved = self.store.transaction(|tx| -> Result<_, NodeError> {
            let saved = tx.save_contact(&contact, now)?;
            tx.ensure_conversation(
                &tern_store::ConversationId(id.clone()),
                tern_store::ConversationKind::Direct,
                Some(&display_name),
                now,
            )?;
            Ok(saved)
        })?;
        if saved == ContactSaved::IdentityChanged {
            tracing::warn!(contact = %id, "accepted a new identity key; verification cleared");
        }
        self.people.pending_identity.remove(&user_id);
        self.save_pending_identity()?;
        let stored = self.store.contact(&id)?.ok_or_else(|| {
            NodeError::Store(crate::error::StoreError::Missing("contact vanished"))
        })?;
        self.people.contacts.insert(
            user_id,
            ContactState {
                list: SignedDeviceList::from_bytes(&list_bytes).ok(),
                relays: parsed.relays.clone(),
                contact: stored,
            },
        );
        self.rebuild_device_owner();
        self.settle_relay_set(&user_id);
        Ok(saved)
    }

    /// Takes the new identity key a contact's link offered (kept when `contact add` refused
    /// it) and answers as `contact add` does.
    pub(crate) fn accept_identity(&mut self, contact: &str, reply: Reply<AddedContact>) {
        let link = self.resolve(contact).and_then(|id| {
            let link = self
                .people
                .pending_identity
                .get(&id)
                .cloned()
                .ok_or_else(|| {
                    NodeError::BadRequest(format!("no identity change is pending for {contact}"))
                })?;
            if link.is_empty() {
                return Err(NodeError::BadRequest(
                    "the new key was seen at a relay; add the contact's new link with \
                     `tern contact add LINK --accept-new-key`"
                        .into(),
                ));
            }
            Ok(link)
        });
        match link {
            Ok(link) => self.add_contact(link, None, true, reply),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn contact_keys(&self, id: &UserId) -> Result<(UserId, IdentityPublicKey), NodeError> {
        let c = self
            .people
            .contacts
            .get(id)
            .ok_or_else(|| NodeError::UnknownContact(id.to_string()))?;
        let user = *id;
        let key: [u8; 32] = c
            .contact
            .identity_key
            .as_slice()
            .try_into()
            .map_err(|_| NodeError::invalid("stored identity key has the wrong length"))?;
        Ok((user, IdentityPublicKey::from_bytes(key)))
    }

    fn safety_number(&self, id: &UserId) -> Result<SafetyNumber, NodeError> {
        let (user, key) = self.contact_keys(id)?;
        Ok(SafetyNumber::compute(
            &self.me.user,
            &self.me.keys.identity.public(),
            &user,
            &key,
        ))
    }

    pub(crate) fn safety(&self, contact: &str) -> Result<SafetyInfo, NodeError> {
        let id = self.resolve(contact)?;
        let sn = self.safety_number(&id)?;
        let c = &self.people.contacts[&id];
        Ok(SafetyInfo {
            user_id: id,
            name: c.contact.display_name.clone(),
            digits: sn.display(),
            qr: tern_crypto::hex::encode(&sn.qr_payload()),
            verified: c.contact.verified,
        })
    }

    /// `contact.rename`: the name this user sees for a contact (checked as in `contact
    /// add`; another contact's name, in any case, is refused so that names stay unique).
    pub(crate) fn rename_contact(
        &mut self,
        contact: &str,
        name: &str,
    ) -> Result<ContactInfo, NodeError> {
        let id = self.resolve(contact)?;
        let name = check_name(name)?;
        self.check_name_free(&name, &id)?;
        let mut c = self.people.contacts[&id].contact.clone();
        c.display_name = name;
        let now = self.clock.now_ms();
        self.store.transaction(|tx| tx.save_contact(&c, now))?;
        if let Some(state) = self.people.contacts.get_mut(&id) {
            state.contact.display_name = c.display_name;
        }
        self.contact_info(&id)
            .ok_or_else(|| NodeError::UnknownContact(id.to_string()))
    }

    /// Refuses `name` when a contact other than `user` is called so (in any case): a name
    /// given by this user must resolve to one contact.
    fn check_name_free(&self, name: &str, user: &UserId) -> Result<(), NodeError> {
        let lower = name.to_lowercase();
        match self
            .people
            .contacts
            .iter()
            .find(|(u, c)| *u != user && c.contact.display_name.to_lowercase() == lower)
        {
            Some((other, c)) => Err(NodeError::BadRequest(format!(
                "another contact is called {} ({other}): choose another name",
                c.contact.display_name
            ))),
            None => Ok(()),
        }
    }

    pub(crate) fn verify(
        &mut self,
        contact: &str,
        scanned: Option<&str>,
    ) -> Result<ContactInfo, NodeError> {
        let id = self.resolve(contact)?;
        if self.people.pending_identity.contains_key(&id) {
            return Err(NodeError::IdentityChanged(
                self.people.contacts[&id].contact.display_name.clone(),
            ));
        }
        if let Some(hex) = scanned {
            let bytes = tern_crypto::hex::decode(hex.trim())
                .ok_or_else(|| NodeError::BadRequest("scanned payload is not hex".into()))?;
            let sn = self.safety_number(&id)?;
            if !sn
                .matches_scanned(&bytes)
                .map_err(|e| NodeError::BadRequest(e.to_string()))?
            {
                return Err(NodeError::SafetyMismatch);
            }
        }
        let mut c = self.people.contacts[&id].contact.clone();
        c.verified = true;
        let now = self.clock.now_ms();
        self.store.transaction(|tx| tx.save_contact(&c, now))?;
        if let Some(state) = self.people.contacts.get_mut(&id) {
            state.contact.verified = true;
        }
        self.contact_info(&id)
            .ok_or_else(|| NodeError::UnknownContact(id.to_string()))
    }
}

/// Fetches the device list a short link points at, from the relay it names, and checks
/// it against the link's identity key. Bounded by [`LINK_LIST_FETCH_TIMEOUT`]; it runs in
/// the task of `contact add` ([`Engine::add_contact`]), off the engine.
async fn fetch_link_list(
    net: crate::net::Client,
    link: ShortLink,
) -> Result<ContactLink, NodeError> {
    let relay = link.relay.to_string();
    let unreachable = |reason: String| LinkError::RelayUnreachable {
        relay: relay.clone(),
        reason,
    };
    let peer = link
        .relay_peer()
        .ok_or_else(|| unreachable("no peer id".into()))?;
    net.add_relay(link.relay.clone(), false)
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let fetched = tokio::time::timeout(
        LINK_LIST_FETCH_TIMEOUT,
        net.at(peer).fetch_device_list(*link.user_id.as_bytes()),
    )
    .await;
    let bytes = match fetched {
        Err(_) => {
            return Err(unreachable(format!(
                "no answer within {} s",
                LINK_LIST_FETCH_TIMEOUT.as_secs()
            ))
            .into());
        }
        Ok(Err(e)) if e.code() == Some(ErrorCode::NotFound) => {
            return Err(LinkError::NoDeviceList { relay }.into());
        }
        Ok(Err(e)) => return Err(unreachable(e.to_string()).into()),
        Ok(Ok(bytes)) => bytes,
    };
    let device_list = link.accept_list(&bytes)?;
    Ok(ContactLink {
        user_id: link.user_id,
        identity_key: link.identity_key,
        name: String::new(),
        relays: vec![link.relay],
        device_list,
    })
}

/// A contact's name as given (`contact add --name`, `contact.rename`): trimmed, 1 to
/// [`MAX_NAME_BYTES`] bytes, no control, reordering or invisible characters
/// ([`crate::text::is_hidden_or_control`]: it is shown in terminals and lists, and two names
/// that look the same would be two contacts).
/// Nor may it be a user id: commands take a contact's user id or name, and the id wins, so
/// a contact named with another's id would have that other's messages sent as its own.
fn check_name(name: &str) -> Result<String, NodeError> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > MAX_NAME_BYTES
        || name.chars().any(crate::text::is_hidden_or_control)
    {
        return Err(NodeError::BadRequest(format!(
            "a name must be 1 to {MAX_NAME_BYTES} bytes of visible text (no control, \
             reordering or invisible characters)"
        )));
    }
    if UserId::from_hex(name).is_some() {
        return Err(NodeError::BadRequest(format!(
            "{name} is a user id (32 hex digits), which commands take as one: choose a name"
        )));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tern_crypto::UserId;

    /// The file of offered identity keys was written keyed by hex user ids before the
    /// engine held typed ids: it reads as it is, and is written the same way.
    #[test]
    fn the_pending_identity_file_keeps_its_form() {
        let hex = "00112233445566778899aabbccddeeff";
        let old = format!(r#"{{"{hex}":"tern:abc"}}"#);
        let map: HashMap<UserId, String> = serde_json::from_str(&old).unwrap();
        assert_eq!(map[&UserId::from_hex(hex).unwrap()], "tern:abc");
        assert_eq!(serde_json::to_string(&map).unwrap(), old);
        assert!(serde_json::from_str::<HashMap<UserId, String>>(r#"{"bob":""}"#).is_err());
    }
}
