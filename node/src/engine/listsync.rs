//! Device lists that converge at once: Signal's "mismatched devices" flow, end to end.
//!
//! Every pairwise message says which version of the addressed user's device list it was
//! encrypted for, and how many entries that list had ([`ListVersions`]); lists only grow at
//! the end, so the entries past that many are the devices the message missed. Then:
//!
//! - A device that receives a text encrypted for an older version of its own user's list
//!   answers the sending device with the current signed list, the ids of such texts and the
//!   devices they missed (`Body::DeviceList`, gathered per sending device and sent on the
//!   next outbox tick). Any other message from an older version gets the list alone, once
//!   per version.
//! - The sender takes the list (checked against the pinned identity key, a valid successor)
//!   and owes each named own text to each missed device that is active in it, in the store
//!   in the transaction that reads the answer ([`tern_store::Tx::owe_resync`]). On the next
//!   tick it sets up sessions with those devices (claiming prekeys), encrypts the texts again
//!   for them and queues them in their lanes, settling the debt in the same transaction. The
//!   new device's receiver drops ids it already has.
//! - When this user's own list changes (a device linked or revoked), the device that made
//!   the change tells every contact, every group member and this user's other devices, each
//!   device it holds a session with ([`Engine::announce_list`]); the relays get it too.
//! - A message whose sender's own list is newer than the one held here makes this device
//!   fetch that list from the sender's relays ([`Engine::want_list_of`]).

use std::time::Duration;

use serde_bytes::{ByteArray, ByteBuf};
use tern_crypto::{DeviceId, UserId, group::GroupId};
use tern_store::MessageId;

use super::{Engine, Internal, relay_peer};
use crate::{
    consts::MAX_RECEIPT_IDS,
    envelope::{Body, Conversation, Envelope, ListMark, ListVersions},
    error::NodeError,
};

/// A user's device list is fetched for a newer `from` mark at most this often.
const LIST_WANT_GAP: Duration = Duration::from_secs(5);

/// A group text sent this long before a device's certificate was made is still sent to it
/// again when it is learned (the two users' clocks may differ).
const GROUP_COPY_SKEW: Duration = Duration::from_secs(300);

/// Owed answers read from the store per tick at most (the rest go on the next).
const MAX_STALE_PENDING: usize = 4 * MAX_RECEIPT_IDS;

fn mark(list: &tern_crypto::DeviceList) -> ListMark {
    ListMark {
        version: list.version,
        entries: u32::try_from(list.devices.len()).unwrap_or(u32::MAX),
    }
}

impl Engine {
    /// The list marks a message to `to` is encrypted with (`to`: `None` for a message to
    /// many users, such as a group message, which then carries the sender's mark only).
    pub(crate) fn list_versions(&self, to: Option<&UserId>) -> ListVersions {
        ListVersions {
            to: to
                .and_then(|u| self.known(u))
                .and_then(|s| s.list.as_ref())
                .map(|l| mark(l.list())),
            from: mark(self.me.keys.device_list.list()),
        }
    }

    /// This user's current signed device list as a message body, naming no texts.
    pub(crate) fn own_list_body(&self) -> Body {
        Body::DeviceList {
            list: ByteBuf::from(self.me.keys.device_list.as_bytes().to_vec()),
            stale: Vec::new(),
            missed: Vec::new(),
            relays: self.home_relay_addrs(),
        }
    }

    /// Looks at the list marks of a pairwise message from `device` of `user` (see the module
    /// documentation): answers a sender that used an older list of this user, and fetches a
    /// newer list of the sender's.
    pub(crate) fn check_list_marks(
        &mut self,
        user: &UserId,
        device: DeviceId,
        env: &Envelope,
    ) -> Result<(), NodeError> {
        let Some(marks) = env.lists else {
            return Ok(());
        };
        let me = *user == self.me.user;
        if self
            .known(user)
            .and_then(|s| s.list.as_ref())
            .is_some_and(|l| marks.from.version > l.list().version)
        {
            self.want_list_of(user);
        }
        // What the sender took this user's list to be: its own list, when it is one of this
        // user's devices.
        let seen = if me { Some(marks.from) } else { marks.to };
        let ours = self.me.keys.device_list.list();
        let Some(seen) = seen.filter(|s| s.version < ours.version) else {
            return Ok(());
        };
        let own_device = self.me.keys.device.device_id();
        let missed: Vec<DeviceId> = ours
            .devices
            .iter()
            .skip(usize::try_from(seen.entries).unwrap_or(usize::MAX))
            .filter(|e| e.is_active())
            .map(|e| e.device_id())
            .filter(|d| *d != device && *d != own_device)
            .collect();
        let version = ours.version;
        let text = matches!(
            (&env.conversation, &env.body),
            (Conversation::Direct { .. }, Body::Text { .. })
        );
        let key = (*user, device);
        // Texts that missed a device are always named, and owed in the store until the
        // answer is queued (a crash before then must not lose the text for the new device);
        // anything else gets the list once.
        if text && !missed.is_empty() {
            let owed = tern_store::OwedListAnswer {
                user: user.to_string(),
                device: device.to_peer_id_string(),
                message_id: MessageId(env.id.into_array()),
                seen_entries: seen.entries,
            };
            let now = self.clock.now_ms();
            // A failure keeps the message to be read again (it is not stored yet).
            self.store
                .transaction(|tx| tx.owe_list_answer(&owed, now))?;
            self.lists.answers_due = true;
            return Ok(());
        }
        if self.lists.list_answered.get(&key.1) != Some(&version) {
            self.lists.list_answers.insert(key);
        }
        Ok(())
    }

    /// Sends the answers owed since the last tick: to each sending device that used an older
    /// list of this user, the current list, with the texts it must send again and the devices
    /// they missed (owed in the store), each chunk settled in the transaction that queues it.
    pub(crate) fn flush_list_answers(&mut self) {
        let owed = if std::mem::take(&mut self.lists.answers_due) {
            match self.store.due_list_answers(MAX_STALE_PENDING as u32) {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!("reading owed device-list answers failed: {e}");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        if owed.len() >= MAX_STALE_PENDING {
            // More than one round's worth: the rest goes on the next tick.
            self.lists.answers_due = true;
        }
        let mut targets: Vec<(UserId, DeviceId)> = std::mem::take(&mut self.lists.list_answers)
            .into_iter()
            .collect();
        for o in &owed {
            let (Some(user), Some(device)) = (
                UserId::from_hex(&o.user),
                DeviceId::from_peer_id_string(&o.device),
            ) else {
                continue;
            };
            if !targets.contains(&(user, device)) {
                targets.push((user, device));
            }
        }
        if targets.is_empty() {
            return;
        }
        let list = ByteBuf::from(self.me.keys.device_list.as_bytes().to_vec());
        let ours = self.me.keys.device_list.list().clone();
        let own_device = self.me.keys.device.device_id();
        for (user, target) in targets {
            let device = target.to_peer_id_string();
            let mine: Vec<&tern_store::OwedListAnswer> =
                owed.iter().filter(|o| o.device == device).collect();
            let seen = mine
                .iter()
                .map(|o| o.seen_entries)
                .min()
                .unwrap_or(u32::MAX);
            let missed: Vec<ByteArray<32>> = ours
                .devices
                .iter()
                .skip(usize::try_from(seen).unwrap_or(usize::MAX))
                .filter(|e| e.is_active())
                .map(|e| e.device_id())
                .filter(|d| *d != target && *d != own_device)
                .map(|d| ByteArray::new(*d.as_bytes()))
                .collect();
            let ids: Vec<MessageId> = mine.iter().map(|o| o.message_id).collect();
            let mut chunks: Vec<&[MessageId]> = ids.chunks(MAX_RECEIPT_IDS).collect();
            if chunks.is_empty() {
                chunks.push(&[]);
            }
            for chunk in chunks {
                let body = Body::DeviceList {
                    list: list.clone(),
                    stale: if missed.is_empty() {
                        Vec::new()
                    } else {
                        chunk.iter().map(|i| ByteArray::new(i.0)).collect()
                    },
                    missed: missed.clone(),
                    relays: self.home_relay_addrs(),
                };
                let device_key = device.clone();
                if let Err(e) = self.send_control_to(&user, Some(target), body, |tx| {
                    tx.settle_list_answers(&device_key, chunk)
                }) {
                    tracing::warn!(contact = %user, "answering with the device list failed: {e}");
                    self.lists.answers_due = true;
                }
            }
            tracing::info!(contact = %user, texts = ids.len(), devices = missed.len(), "told a sender of the current device list");
            self.lists.list_answered.insert(target, ours.version);
        }
    }

    /// Tells every contact, group member and this user's other devices (each device with a
    /// session) of this user's current device list.
    pub(crate) fn announce_list(&mut self) {
        let mut users: Vec<UserId> = self
            .people
            .contacts
            .keys()
            .chain(self.people.peers.keys())
            .copied()
            .collect();
        users.sort();
        users.dedup();
        for user in users {
            let body = self.own_list_body();
            if let Err(e) = self.send_control_to(&user, None, body, |_| Ok(())) {
                tracing::warn!(contact = %user, "announcing the device list failed: {e}");
            }
        }
    }

    /// Tells this user's other devices of the own list, setting up sessions with them where
    /// needed (after this device added itself to a list they made: they hold no session with
    /// it yet, so [`Engine::announce_list`] alone would not reach them).
    pub(crate) fn announce_own(&mut self) {
        if !std::mem::take(&mut self.lists.announce_own_due) {
            return;
        }
        let me = self.me.user;
        let sessions = match self.sessions_reachable(&me) {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!("no session with this user's other devices yet: {e}");
                return;
            }
        };
        let body = self.own_list_body();
        if let Err(e) = self.send_control_with(&me, sessions, body, |_| Ok(())) {
            tracing::warn!("telling this user's other devices of the list failed: {e}");
        }
    }

    /// A device list from `device` of `user` (pairwise): taken if it is a valid successor
    /// signed by the pinned identity key; the texts it names are owed again to the devices
    /// they missed, in one transaction with the session state (`save`).
    pub(crate) fn on_device_list(
        &mut self,
        user: &UserId,
        list: &[u8],
        stale: &[ByteArray<16>],
        missed: &[ByteArray<32>],
        save: impl FnOnce(&mut tern_store::Tx<'_>) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        let hex = user.to_string();
        let mut owed = Vec::new();
        for id in stale {
            let id = MessageId(id.into_array());
            // Only own texts of a direct conversation with that user (or, from one of this
            // user's devices, of any direct conversation: sync copies).
            if let Some(m) = self.store.message(id)?
                && m.own
                && (*user == self.me.user || m.conversation.0 == hex)
                && m.body.is_user_content()
                && UserId::from_hex(&m.conversation.0)
                    .is_some_and(|c| self.people.contacts.contains_key(&c))
            {
                owed.push(id);
            }
        }
        let devices: Vec<String> = missed
            .iter()
            .map(|d| DeviceId::from_bytes(d.into_array()).to_peer_id_string())
            .collect();
        let now = self.clock.now_ms();
        self.store.transaction(|tx| -> Result<(), NodeError> {
            save(tx)?;
            if !owed.is_empty() && !devices.is_empty() {
                tx.owe_resync(&hex, &devices, &owed, now)?;
            }
            Ok(())
        })?;
        if !owed.is_empty() && !devices.is_empty() {
            self.lists.resync_due = true;
        }
        match self.take_list(user, list.to_vec()) {
            Ok(true) => self.lists_changed(),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(contact = %user, "device list sent by the contact refused: {e}")
            }
        }
        Ok(())
    }

    /// Devices of `user` this device learns of only now (device, its certificate's creation
    /// time): each is owed this device's own texts in the groups shared with `user` sent since
    /// shortly before it was linked ([`GROUP_COPY_SKEW`]), as pairwise copies. A group message
    /// is encrypted once for the member devices known when it is sent, and its sender key
    /// cannot be given out as of an earlier message later, so the copy goes over the pairwise
    /// session instead; the device drops ids it already has.
    pub(crate) fn owe_group_copies(
        &mut self,
        user: &UserId,
        added: &[(DeviceId, u64)],
    ) -> Result<(), NodeError> {
        let u = *user;
        let me = *self.me.user.as_bytes();
        let own_device = self.me.keys.device.device_id();
        let groups: Vec<GroupId> = self
            .groups
            .by_id
            .keys()
            .filter(|g| {
                self.state(g)
                    .is_ok_and(|s| s.is_member(u.as_bytes()) && s.is_member(&me))
            })
            .copied()
            .collect();
        let added: Vec<&(DeviceId, u64)> = added.iter().filter(|(d, _)| *d != own_device).collect();
        if added.is_empty() || groups.is_empty() {
            return Ok(());
        }
        // This device's recent texts in those groups: (id, sent at), read once.
        let mut sent: Vec<(MessageId, i64)> = Vec::new();
        for g in &groups {
            let recent = self.store.history(
                &tern_store::ConversationId::from(*g),
                tern_store::Page::Latest,
                Some(crate::consts::HISTORY_MAX),
            )?;
            sent.extend(
                recent
                    .iter()
                    .filter(|m| {
                        m.own && m.sender_device == self.me.device_hex && m.body.is_user_content()
                    })
                    .map(|m| (m.id, m.sent_at_ms)),
            );
        }
        let now = self.clock.now_ms();
        for (device, created_at) in added {
            let since = i64::try_from(created_at.saturating_sub(GROUP_COPY_SKEW.as_secs()))
                .unwrap_or(i64::MAX)
                .saturating_mul(1000);
            let ids: Vec<MessageId> = sent
                .iter()
                .filter(|(_, at)| *at >= since)
                .map(|(id, _)| *id)
                .collect();
            if ids.is_empty() {
                continue;
            }
            let key = [device.to_peer_id_string()];
            self.store
                .transaction(|tx| tx.owe_resync(&user.to_string(), &key, &ids, now))?;
            tracing::info!(contact = %user, count = ids.len(), "group texts owed to a device linked since they were sent");
            self.lists.resync_due = true;
        }
        Ok(())
    }

    /// Fetches `user`'s device list from their relays soon (a message showed a newer one),
    /// at most every [`LIST_WANT_GAP`] per user.
    pub(crate) fn want_list_of(&mut self, user: &UserId) {
        let now = self.clock.now();
        if self
            .lists
            .list_wanted
            .get(user)
            .is_some_and(|t| now.duration_since(*t) < LIST_WANT_GAP)
        {
            return;
        }
        let Some(state) = self.known(user) else {
            return;
        };
        // Connected relays first; with none, the others (dialled when asked).
        let (mut relays, down): (Vec<libp2p::PeerId>, Vec<libp2p::PeerId>) = state
            .relays
            .iter()
            .filter_map(relay_peer)
            .partition(|r| self.relays.relay_up.contains(r));
        relays.extend(down);
        if relays.is_empty() {
            return;
        }
        self.lists.list_wanted.insert(*user, now);
        self.fetch_lists(vec![(*user, relays)], |lists, _| {
            Internal::DeviceLists(lists)
        });
    }

    /// An own group text as a pairwise copy for `user`'s devices in `sessions`: the group
    /// envelope as it was sent, encrypted over each Olm session.
    pub(super) fn encrypt_group_copy(
        &self,
        user: &UserId,
        m: &tern_store::Message,
        sessions: &mut [(DeviceId, tern_crypto::session::PeerSessions)],
    ) -> Result<(Vec<tern_store::Delivery>, Vec<super::send::Pickled>), NodeError> {
        self.encrypt_own_group(user, m, crate::media::wire_body(&m.body)?, sessions)
    }

    /// The envelope of the own group message `m`, carrying `body`, encrypted over each Olm
    /// session in `sessions` (`user`'s devices). A sender key in `body` is wiped once
    /// encrypted.
    pub(super) fn encrypt_own_group(
        &self,
        user: &UserId,
        m: &tern_store::Message,
        body: Body,
        sessions: &mut [(DeviceId, tern_crypto::session::PeerSessions)],
    ) -> Result<(Vec<tern_store::Delivery>, Vec<super::send::Pickled>), NodeError> {
        let gid = GroupId::from_hex(&m.conversation.0)
            .ok_or_else(|| NodeError::UnknownGroup(m.conversation.0.clone()))?;
        let mut env = self.own_group_envelope(*gid.as_bytes(), m, body);
        let mut deliveries = Vec::new();
        let mut pickles = Vec::new();
        let encrypted = super::send::encrypt_each(
            sessions,
            &mut env,
            &self.grants,
            |_| *user,
            &mut deliveries,
            &mut pickles,
        );
        if let Body::SenderKey { distribution, .. } = env.body {
            zeroize::Zeroize::zeroize(&mut distribution.into_vec());
        }
        encrypted?;
        Ok((deliveries, pickles))
    }

    /// A group text `user`'s `device` sent again over the pairwise session (this device was
    /// linked after it was sent): stored like the group message it copies if `user` is a
    /// member of the group, with the session state (`save`) in one transaction either way.
    pub(crate) fn on_group_copy(
        &mut self,
        user: &UserId,
        device_key: &str,
        group: [u8; 16],
        env: &Envelope,
        body: tern_store::Body,
        save: impl FnOnce(&mut tern_store::Tx<'_>) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        let gid = GroupId::from_bytes(group);
        let member = self.state(&gid).is_ok_and(|s| s.is_member(user.as_bytes()));
        let title = self.state(&gid).map(|s| s.title.clone()).ok();
        let now = self.clock.now_ms();
        let own = *user == self.me.user;
        let message = tern_store::Message {
            id: MessageId(env.id.into_array()),
            conversation: gid.into(),
            sender_user: user.to_string(),
            sender_device: device_key.to_owned(),
            lamport: env.lamport,
            seq: env.seq,
            sent_at_ms: env.sent_at_ms,
            received_at_ms: now,
            own,
            status: if own {
                tern_store::Status::Sent
            } else {
                tern_store::Status::Received
            },
            body,
            edited_at_ms: None,
        };
        let inserted = self.store.transaction(|tx| -> Result<bool, NodeError> {
            save(tx)?;
            if !member {
                return Ok(false);
            }
            tx.ensure_conversation(
                &message.conversation,
                tern_store::ConversationKind::Group,
                title.as_deref(),
                now,
            )?;
            Ok(tx.record_incoming(&message, &[])? == tern_store::Inserted::New)
        })?;
        if !member {
            tracing::warn!(group = %gid, contact = %user, "a group copy from someone not a member here; dropped");
            return Ok(());
        }
        if inserted {
            self.observe_lamport(message.conversation.as_str(), message.lamport)?;
            self.on_media_message(&message);
            for shown in self.hold.arrived(&self.store, message, self.clock.now())? {
                self.emit(crate::types::Event::Message { message: shown });
            }
        }
        Ok(())
    }

    /// After any user's device list changed: who owns which device, who may see presence,
    /// and mail kept for devices not known before is read again.
    pub(crate) fn lists_changed(&mut self) {
        self.rebuild_device_owner();
        self.push_allow_list();
        self.fetch_home_mailboxes();
    }
}
