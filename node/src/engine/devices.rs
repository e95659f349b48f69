//! This user's devices: linking a new one, the own device list, and keeping every known
//! user's device list current from their relays.

use libp2p::PeerId;
use serde_bytes::ByteBuf;
use tern_crypto::{
    DeviceCertificate, SignedDeviceCertificate, SignedDeviceList, UserId, provision,
};
use tern_relay::rpc::Requests as _;
use tern_store::Contact;

use super::{
    ContactState, Engine, Internal, command::Reply, device_peer, link_record::LinkRecord,
    relay_peer,
};
use crate::{
    device_link::{
        Bundle, BundleContact, BundleMessage, LINK_VERSION, LinkWords, Request,
        confirm::Confirmation,
    },
    error::NodeError,
    net::hedge::{self, HEDGE_AFTER},
    types::DeviceInfo,
};

/// Recent history moved to a newly linked device: this many conversations...
const HISTORY_CONVERSATIONS: u32 = 50;
/// ...and this many newest messages of each (fewer when they do not fit the record).
const HISTORY_PER_CONVERSATION: u32 = 100;

/// The provisioning record must fit one mailbox message: a relay's default ciphertext cap is
/// 64 KiB, and sealing adds under 100 bytes (key, nonce, tag, header).
const MAX_BUNDLE_BYTES: usize = 60 * 1024;

/// Makes the engine's message from fetched lists (user, signed list) and whether any
/// fetch failed.
type ListsDone = fn(Vec<(UserId, Vec<u8>)>, bool) -> Internal;

/// Device lists fetched at the same time.
const LIST_FETCHES_AT_ONCE: usize = 16;

/// Device lists are fetched again at most this often when mail from an unknown device
/// asks for it.
const REFRESH_MIN_GAP: std::time::Duration = std::time::Duration::from_secs(5);

impl Engine {
    /// Whether this user has other active devices.
    pub(crate) fn own_other_devices(&self) -> bool {
        let me = self.me.keys.device.device_id();
        self.me
            .keys
            .device_list
            .list()
            .active()
            .any(|e| e.device_id() != me)
    }

    /// Makes this user reachable like any other known user (own other devices get sync
    /// copies through the same paths as contacts' devices).
    pub(crate) fn refresh_me(&mut self) {
        let list = self.me.keys.device_list.clone();
        let state = ContactState {
            contact: Contact {
                user_id: self.me.user_hex.clone(),
                display_name: self.me.config.name.clone(),
                verified: true,
                identity_key: self.me.keys.identity.public().as_bytes().to_vec(),
                device_list: Some(list.as_bytes().to_vec()),
                device_list_version: list.list().version,
                relays: self.home_relay_addrs(),
            },
            list: Some(list),
            relays: self.relays.home_relays.clone(),
        };
        self.people.peers.insert(self.me.user, state);
        self.rebuild_device_owner();
    }

    /// A device this one linked answered `record` (the confirmation mailbox of the record
    /// sent), or the wait for it ended: noted for `device.list`, and told to subscribers. A
    /// confirmation of any record sent it counts; the end of a wait only for the latest
    /// record, while that is still waiting (the same code added again sends a new record).
    pub(crate) fn on_link_answered(
        &mut self,
        device: tern_crypto::DeviceId,
        record: PeerId,
        confirmed: bool,
    ) {
        use crate::types::LinkState;
        let link = if confirmed {
            LinkState::Confirmed
        } else {
            match self.me.link_states.get(&device) {
                Some((LinkState::Waiting, latest)) if *latest == record => LinkState::Unconfirmed,
                _ => return,
            }
        };
        if self.me.link_states.get(&device).map(|(l, _)| *l) == Some(link) {
            return;
        }
        self.me.link_states.insert(device, (link, record));
        self.emit(crate::types::Event::DeviceLink {
            device_id: device,
            link,
        });
    }

    /// The user's devices.
    pub(crate) fn devices(&self) -> Vec<DeviceInfo> {
        let me = self.me.keys.device.device_id();
        self.me
            .keys
            .device_list
            .list()
            .active()
            .map(|e| {
                let c = e.certificate.certificate();
                DeviceInfo {
                    device_id: e.device_id(),
                    name: c.name.clone(),
                    this_device: e.device_id() == me,
                    created_at: c.created_at,
                    words: None,
                    link: self.me.link_states.get(&e.device_id()).map(|(l, _)| *l),
                }
            })
            .collect()
    }

    /// Links a new device from the code it shows: certifies it, publishes the next device
    /// list, and deposits the provisioning record (identity, contacts, groups) for it. The
    /// answer carries the record's link words, which the new device shows too: its user
    /// applies the record there only if they match.
    ///
    /// The list's publication and the deposit run in a task ([`Engine::off_task`]); the
    /// answer comes once the record is deposited.
    pub(crate) fn device_add(&mut self, code: &str, reply: Reply<DeviceInfo>) {
        match self.device_record(code) {
            Ok(record) => self.deposit_record(record, reply),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    /// What `device add` does before the network: the code checked, the device certified
    /// and listed (the list stored), the provisioning record sealed.
    fn device_record(&mut self, code: &str) -> Result<LinkRecord, NodeError> {
        self.check_not_revoked()?;
        let req = Request::parse(code).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        let id = req.device_id();
        let peer = device_peer(&id)
            .ok_or_else(|| NodeError::BadRequest("the code's device id is not a key".into()))?;
        let now_secs = self.clock.now_secs();
        let list = self.me.keys.device_list.list().clone();
        let provision_key = req.provision.into_array();
        if id == self.me.keys.device.device_id() {
            return Err(NodeError::BadRequest(
                "that code names this device itself".into(),
            ));
        }
        let mut listed = false;
        let certificate = match list.entry(&id) {
            // Added by this run from the same code (the record may not have arrived): send it
            // again. Any other code naming a listed device is refused: it would get the
            // identity secret without a device being added.
            Some(e) if e.is_active() => {
                if self.me.linked.get(&id) != Some(&provision_key) {
                    return Err(NodeError::BadRequest(
                        "that device is already linked; to link a device again, run `tern device link` on it for a new code".into(),
                    ));
                }
                e.certificate.clone()
            }
            Some(_) => {
                return Err(NodeError::BadRequest(
                    "that device was removed from this user; a removed device cannot come back"
                        .into(),
                ));
            }
            None => {
                let certificate = SignedDeviceCertificate::sign(
                    &self.me.keys.identity,
                    DeviceCertificate {
                        user_id: self.me.user,
                        identity_key: self.me.keys.identity.public(),
                        device_id: id,
                        curve25519: req.curve25519.into_array(),
                        ed25519: req.ed25519.into_array(),
                        name: req.name.clone(),
                        created_at: now_secs,
                    },
                )
                .map_err(NodeError::from)?;
                let next = list.with_device(certificate.clone(), now_secs)?;
                let signed = next.sign(&self.me.keys.identity)?;
                // The list is stored before anything leaves: a crash after the deposit can
                // never leave a device this one does not list.
                self.store
                    .transaction(|tx| tx.save_own_device_list(next.version, signed.as_bytes()))?;
                self.me.keys.device_list = signed;
                self.refresh_me();
                listed = true;
                certificate
            }
        };
        let mut bundle = self.bundle(&certificate)?;
        bundle.history = self.recent_history()?;
        let encode = |b: &Bundle| b.encode().map_err(|e| NodeError::BadRequest(e.to_string()));
        let mut plain = encode(&bundle)?;
        // Too big: less history first (the least recently active conversations go), then
        // no groups.
        while plain.len() > MAX_BUNDLE_BYTES && !bundle.history.is_empty() {
            let drop = bundle.history.len() - bundle.history.len() / 2;
            bundle.history.drain(..drop);
            plain = encode(&bundle)?;
        }
        if plain.len() > MAX_BUNDLE_BYTES {
            tracing::warn!(
                "groups do not fit the provisioning record; the new device learns them as members write"
            );
            bundle.group_ops.clear();
            plain = encode(&bundle)?;
        }
        if plain.len() > MAX_BUNDLE_BYTES {
            return Err(NodeError::BadRequest(format!(
                "the contacts take {} bytes, over the {MAX_BUNDLE_BYTES}-byte provisioning limit",
                plain.len()
            )));
        }
        self.me.linked.insert(id, provision_key);
        let (sealed, check) =
            provision::seal_to_checked(&provision_key, &plain).map_err(NodeError::from)?;
        // Shown only once the record is deposited: whoever reads them off this screen can
        // no longer make a record that reaches the new device before this one.
        let words = LinkWords::derive(
            &check,
            &provision_key,
            &id,
            self.me.keys.identity.public().as_bytes(),
        );
        let confirmation = Confirmation::derive(&check, &id)?;
        drop(check);
        Ok(LinkRecord {
            device: id,
            peer,
            relays: req.relay_addrs(),
            sealed,
            confirmation,
            info: DeviceInfo {
                device_id: id,
                name: certificate.certificate().name.clone(),
                this_device: false,
                created_at: certificate.certificate().created_at,
                words: Some(words.to_string()),
                link: Some(crate::types::LinkState::Waiting),
            },
            listed,
        })
    }

    /// The provisioning record without history: the identity secret, name, home relays,
    /// `certificate`, the own signed device list, the contacts and the groups' signed
    /// membership operations. A linked device gets it with recent history added; an identity
    /// backup is this with the certificate of the device that made it.
    pub(crate) fn bundle(
        &self,
        certificate: &SignedDeviceCertificate,
    ) -> Result<Bundle, NodeError> {
        Ok(Bundle {
            v: LINK_VERSION,
            identity: ByteBuf::from(
                self.me
                    .keys
                    .identity
                    .to_secret_bytes()
                    .map_err(NodeError::from)?
                    .to_vec(),
            ),
            name: self.me.config.name.clone(),
            relays: self.home_relay_addrs(),
            certificate: ByteBuf::from(certificate.to_bytes().map_err(NodeError::from)?),
            device_list: ByteBuf::from(self.me.keys.device_list.as_bytes().to_vec()),
            contacts: self
                .people
                .contacts
                .values()
                .map(|c| BundleContact {
                    user_id: c.contact.user_id.clone(),
                    name: c.contact.display_name.clone(),
                    verified: c.contact.verified,
                    identity_key: ByteBuf::from(c.contact.identity_key.clone()),
                    device_list: c.contact.device_list.clone().map(ByteBuf::from),
                    relays: c.contact.relays.clone(),
                })
                .collect(),
            group_ops: self
                .store
                .group_ops()?
                .into_iter()
                .map(|(g, op)| (g, ByteBuf::from(op)))
                .collect(),
            history: Vec::new(),
        })
    }

    /// What an identity backup holds (see [`crate::backup`]): [`Engine::bundle`] with this
    /// device's certificate. Sealing it (Argon2id) is left to the caller, off the engine.
    pub(crate) fn backup_bundle(&self) -> Result<Bundle, NodeError> {
        self.bundle(&self.me.keys.certificate)
    }

    /// The newest messages of the most recently active conversations, oldest first, for a
    /// newly linked device.
    fn recent_history(&self) -> Result<Vec<BundleMessage>, NodeError> {
        let page = self.store.conversations(None, HISTORY_CONVERSATIONS)?;
        let mut out = Vec::new();
        for c in page.conversations.iter().rev() {
            for m in self.store.history(
                &c.id,
                tern_store::Page::Latest,
                Some(HISTORY_PER_CONVERSATION),
            )? {
                out.push(super::history::bundle_message(&m, c.kind, c.title.clone()));
            }
        }
        Ok(out)
    }

    /// Asks for device lists to be fetched again soon (mail from an unknown device): at
    /// most every [`REFRESH_MIN_GAP`].
    pub(crate) fn want_device_lists(&mut self) {
        self.lists.lists_due = true;
    }

    /// Fetches the device list of every known user (contacts, group members, this user)
    /// from a connected relay of theirs, and takes each valid successor: a newly linked
    /// device is then addressed, a removed one no more. Mail kept for unknown devices is
    /// fetched again afterwards.
    pub(crate) fn refresh_device_lists(&mut self) {
        if !self.lists.lists_due
            || self
                .lists
                .lists_fetched
                .is_some_and(|t| t.elapsed() < REFRESH_MIN_GAP)
        {
            return;
        }
        self.lists.lists_due = false;
        self.lists.lists_fetched = Some(self.clock.now());
        // Fetched in a task, a few at a time, so a big group never stalls the engine; the
        // results come back as `Internal::DeviceLists`.
        let targets: Vec<(UserId, Vec<PeerId>)> = self
            .people
            .contacts
            .iter()
            .chain(self.people.peers.iter())
            .filter_map(|(user, state)| {
                let relays: Vec<PeerId> = state
                    .relay_peers()
                    .into_iter()
                    .filter(|r| self.relays.relay_up.contains(r))
                    .collect();
                (!relays.is_empty()).then_some((*user, relays))
            })
            .collect();
        if targets.is_empty() {
            return;
        }
        self.fetch_lists(targets, |lists, _| Internal::DeviceLists(lists));
    }

    /// Fetches the signed device lists of `targets` (user, relays of theirs to ask, in
    /// order: hedged, so a hung one holds up nothing, see [`crate::net::hedge`]) in a task,
    /// [`LIST_FETCHES_AT_ONCE`] users at a time, and hands the engine what came back with
    /// whether any fetch failed (`done` makes the message).
    pub(crate) fn fetch_lists(&self, targets: Vec<(UserId, Vec<PeerId>)>, done: ListsDone) {
        let net = self.net.clone();
        let internal = self.internal.clone();
        tokio::spawn(async move {
            let mut lists = Vec::new();
            let mut failed = false;
            for chunk in targets.chunks(LIST_FETCHES_AT_ONCE) {
                let fetched = futures::future::join_all(chunk.iter().map(|(user, relays)| {
                    let net = &net;
                    async move {
                        let answer = hedge::first_ok(
                            relays.iter().copied(),
                            HEDGE_AFTER,
                            |relay| async move {
                                net.at(relay).fetch_device_list(*user.as_bytes()).await
                            },
                        )
                        .await;
                        (*user, answer)
                    }
                }))
                .await;
                for (user, r) in fetched {
                    match r {
                        Some(Ok(bytes)) => lists.push((user, bytes)),
                        Some(Err(e)) => {
                            failed = true;
                            tracing::debug!(%user, "device list not fetched: {e}");
                        }
                        None => failed = true,
                    }
                }
            }
            let _ = internal.send(done(lists, failed)).await;
        });
    }

    /// Device lists fetched by [`Engine::refresh_device_lists`]: each valid successor is
    /// taken.
    pub(crate) fn on_device_lists(&mut self, lists: Vec<(UserId, Vec<u8>)>) {
        let mut changed = false;
        for (user, bytes) in lists {
            match self.take_list(&user, bytes) {
                Ok(c) => changed |= c,
                Err(e) => tracing::warn!(%user, "fetched device list refused: {e}"),
            }
        }
        if changed {
            self.lists_changed();
        }
    }

    /// This user's list as another device signed it, without this device: a restore from a
    /// backup made before that list, or devices linked on two devices at once. This device
    /// adds itself (and any device it lists that the other does not) on top of it, signs the
    /// successor, publishes and announces it. Returns whether the own list changed.
    fn rebase_own_list(&mut self, theirs: &SignedDeviceList) -> Result<bool, NodeError> {
        if self.me.revoked {
            return Ok(false);
        }
        let now_secs = self.clock.now_secs();
        let mine = self.me.keys.device_list.list().clone();
        let mut merged = theirs.list().clone();
        for e in mine.active() {
            if merged.entry(&e.device_id()).is_none() {
                merged = merged.with_device(e.certificate.clone(), now_secs)?;
            }
        }
        // Past both versions, so every holder of either takes it as a successor.
        merged.version = merged.version.max(mine.version.saturating_add(1));
        let signed = merged.sign(&self.me.keys.identity)?;
        self.store
            .transaction(|tx| tx.save_own_device_list(merged.version, signed.as_bytes()))?;
        tracing::info!(
            version = merged.version,
            "this device was missing from this user's list at a relay; added itself on top of it"
        );
        self.me.keys.device_list = signed;
        self.refresh_me();
        // Relays that fail are set up again below anyway.
        tokio::spawn(self.publish_own_list());
        self.announce_list();
        // Relays that refused this device's prekeys (it was not in the list they held) take
        // them now.
        self.relays
            .setup_pending
            .extend(self.relays.home_relays.iter().filter_map(relay_peer));
        self.relays.setup_soon = true;
        self.lists.announce_own_due = true;
        Ok(true)
    }

    /// Takes a fetched device list of `user` if the pinned identity key signed it and it is
    /// a valid successor of the one held; returns whether it was taken.
    pub(crate) fn take_list(&mut self, user: &UserId, bytes: Vec<u8>) -> Result<bool, NodeError> {
        let Some(state) = self.known(user).cloned() else {
            return Ok(false);
        };
        let next = SignedDeviceList::from_bytes(&bytes)?;
        let key: [u8; 32] = state
            .contact
            .identity_key
            .as_slice()
            .try_into()
            .map_err(|_| NodeError::invalid("stored identity key has the wrong length"))?;
        if next
            .check_identity(&tern_crypto::IdentityPublicKey::from_bytes(key))
            .is_err()
        {
            // Signed by another identity key: a reinstall, or someone posing as the contact.
            // Never taken silently: sending is blocked until the user accepts a new link.
            if self.people.contacts.contains_key(user)
                && !self.people.pending_identity.contains_key(user)
            {
                tracing::warn!(%user, "a relay holds a device list under a different identity key");
                self.people.pending_identity.insert(*user, String::new());
                self.save_pending_identity()?;
                self.emit(crate::types::Event::IdentityChanged { user_id: *user });
            }
            return Ok(false);
        }
        if *user == self.me.user
            && next
                .list()
                .entry(&self.me.keys.device.device_id())
                .is_none()
        {
            return self.rebase_own_list(&next);
        }
        if let Some(current) = &state.list {
            if next.list().version <= current.list().version {
                return Ok(false);
            }
            current.list().check_successor(next.list())?;
        }
        // Devices active in the list held and revoked in this one.
        let revoked: Vec<tern_crypto::DeviceId> = state
            .list
            .as_ref()
            .map(|current| {
                current
                    .list()
                    .active()
                    .map(|e| e.device_id())
                    .filter(|d| next.list().entry(d).is_some_and(|e| !e.is_active()))
                    .collect()
            })
            .unwrap_or_default();
        // Devices active in this list that the list held did not have: what was sent to the
        // user's groups since they were linked did not reach them.
        let added: Vec<(tern_crypto::DeviceId, u64)> = state
            .list
            .as_ref()
            .map(|current| {
                next.list()
                    .active()
                    .filter(|e| current.list().entry(&e.device_id()).is_none())
                    .map(|e| (e.device_id(), e.certificate.certificate().created_at))
                    .collect()
            })
            .unwrap_or_default();
        if *user == self.me.user {
            self.store
                .transaction(|tx| tx.save_own_device_list(next.list().version, next.as_bytes()))?;
            self.me.keys.device_list = next;
            self.refresh_me();
            if !revoked.is_empty() {
                self.on_devices_revoked(user, &revoked)?;
            }
            self.owe_group_copies(user, &added)?;
            return Ok(true);
        }
        let mut contact = state.contact.clone();
        contact.device_list = Some(bytes.clone());
        contact.device_list_version = next.list().version;
        let new_state = ContactState {
            contact: contact.clone(),
            list: Some(next),
            relays: state.relays.clone(),
        };
        if self.people.contacts.contains_key(user) {
            let now = self.clock.now_ms();
            self.store
                .transaction(|tx| tx.save_contact(&contact, now))?;
            self.people.contacts.insert(*user, new_state);
        } else {
            self.store
                .transaction(|tx| tx.save_group_peer(&user.to_string(), &bytes))?;
            self.people.peers.insert(*user, new_state);
        }
        if !revoked.is_empty() {
            self.on_devices_revoked(user, &revoked)?;
        }
        self.owe_group_copies(user, &added)?;
        Ok(true)
    }
}
