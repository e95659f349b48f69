//! What this device sends to a group: texts and files encrypted once with its sender key and
//! queued as one fan-out (delivered by `engine::fanout`, one deposit per relay for every device
//! that has the key; the key itself goes over Olm to those that lack it), messages owed to
//! members who could not be reached, and the pairwise sends to every device of some members
//! that operations and owed messages use.

use std::collections::HashSet;

use serde_bytes::{ByteArray, ByteBuf};
use tern_crypto::{
    UserId,
    group::{GroupId, OutboundSenderKey, RotationPolicy},
};
use tern_store::{
    Body as StoreBody, ConversationKind, CryptoUpdate, Message, MessageId, OutboundGroupSession,
    SenderKeyStore, SentKey, Status,
};

use crate::engine::{Engine, message_info, send, state::OwedSweep};
use crate::{
    envelope::{Body, Conversation, Envelope},
    error::NodeError,
    types::*,
};

/// Pages of owed group messages one [`Engine::deliver_owed`] call reads at most.
const OWED_PAGES_PER_CALL: usize = 8;

impl Engine {
    /// Encrypts `env` for every device of each of `users` and queues it as outbox rows of
    /// the stored message `id`, with every ratchet state, in one transaction that also
    /// settles what was owed to them (`settle`). Returns the users who could not be reached
    /// (no device list or no session to be had).
    pub(super) fn send_pairwise(
        &mut self,
        users: &[UserId],
        id: MessageId,
        env: &mut Envelope,
        settle: &[MessageId],
        shares: Option<&str>,
    ) -> Result<Vec<(UserId, NodeError)>, NodeError> {
        let mut failed = Vec::new();
        let mut deliveries = Vec::new();
        let mut pickles = Vec::new();
        for user in users {
            if let Err(e) = self.ensure_peer(user) {
                failed.push((*user, e));
                continue;
            }
            let mut sessions = match self.sessions_for(user) {
                Ok(s) => s,
                Err(e) => {
                    failed.push((*user, e));
                    continue;
                }
            };
            send::encrypt_each(
                &mut sessions,
                env,
                &self.grants,
                |_| *user,
                &mut deliveries,
                &mut pickles,
            )?;
        }
        let updates = send::crypto_updates(&pickles);
        let now = self.clock.now_ms();
        // The key as it went with this message, for a device that loses it and asks again.
        let kept = shares.and_then(|sid| sent_key(sid, id, env));
        let queued: Vec<String> = users
            .iter()
            .filter(|u| !failed.iter().any(|(f, _)| f == *u))
            .map(ToString::to_string)
            .collect();
        // A pack whose first operation is still queued for a device fails as a whole and
        // stays owed (sent again later) rather than being dropped behind the queued one.
        self.store.transaction(|tx| -> Result<(), NodeError> {
            tx.apply_crypto(&updates, now)?;
            tx.add_outbox_rows_new(id, &deliveries, now)?;
            // The devices given the sender key with it need not be given it again.
            if let Some(sid) = shares {
                let devices: Vec<String> = deliveries
                    .iter()
                    .map(|d| d.recipient_device.clone())
                    .collect();
                if let Some(kept) = &kept {
                    tx.keep_sent_key(kept, now)?;
                }
                tx.share_sender_key(sid, &devices, kept.as_ref().map(|k| k.message_id))?;
            }
            for user in &queued {
                for owed in settle {
                    tx.settle_owed_group_message(*owed, user)?;
                }
            }
            Ok(())
        })?;
        self.kick_lanes_for(&deliveries);
        Ok(failed)
    }

    /// The outbound sender key for a group: the stored one while it fits the membership and
    /// the rotation policy, else a new one.
    fn outbound_key(
        &mut self,
        gid: GroupId,
        epoch: u64,
    ) -> Result<(OutboundSenderKey, bool), NodeError> {
        let now_secs = self.clock.now_secs();
        let group = gid.to_string();
        if let Some((sid, key_epoch)) = self.store.group_sender_key(&group)?
            && key_epoch == epoch
            && let Some(stored) = self
                .store
                .transaction(|tx| tx.outbound_group_session(&group))?
            && stored.session_id == sid
        {
            let key = OutboundSenderKey::from_pickle(&stored.pickle)?;
            if key
                .rotation_due(&RotationPolicy::default(), now_secs)
                .is_none()
            {
                return Ok((key, false));
            }
        }
        Ok((
            OutboundSenderKey::new(gid, self.me.keys.device.device_id(), now_secs),
            true,
        ))
    }

    /// Sends a text to a group; under a client's key, as [`Engine::send_text_once`] does.
    pub(crate) fn group_send_once(
        &mut self,
        group: &str,
        text: String,
        client: Option<&str>,
    ) -> Result<MessageInfo, NodeError> {
        super::super::send::check_text(&text)?;
        if let Some(key) = client {
            // Looked up before the name is: a group retitled since the first try is the same.
            let conv = self.resolve_group(group).ok().map(|g| g.to_string());
            if let Some(sent) = self.sent_under(key, conv.as_deref(), &text)? {
                return Ok(sent);
            }
        }
        self.group_send(group, None, tern_store::Body::Text(text), client)
    }

    /// Sends a text or a file (its caption checked by the caller) to a group, under `id` when
    /// one was chosen before, remembering the client's key `client` with it.
    pub(crate) fn group_send(
        &mut self,
        group: &str,
        id: Option<MessageId>,
        body: tern_store::Body,
        client: Option<&str>,
    ) -> Result<MessageInfo, NodeError> {
        self.check_not_revoked()?;
        let gid = self.resolve_group(group)?;
        let group = gid.to_string();
        let state = self.state(&gid)?.clone();
        let me = *self.me.user.as_bytes();
        if !state.is_member(&me) {
            return Err(NodeError::NotMember(state.title));
        }
        // Every member's devices must be known to address them.
        let mut users: Vec<UserId> = state
            .members
            .keys()
            .filter(|u| **u != me)
            .map(|u| UserId::from_bytes(*u))
            .collect();
        // This user's other devices get the message too.
        if self.own_other_devices() {
            users.push(self.me.user);
        }
        // Members who cannot be reached now are owed the message (with the key as of it).
        let mut owed: Vec<UserId> = Vec::new();
        for u in &users {
            if let Err(e) = self.ensure_peer(u) {
                tracing::info!(%group, member = %u, "member not reachable now; the message waits for them: {e}");
                owed.push(*u);
            }
        }
        let (mut key, fresh) = self.outbound_key(gid, state.epoch)?;
        let sid = key.session_id();
        let shared: HashSet<String> = if fresh {
            HashSet::new()
        } else {
            self.store.sender_key_shares(&sid)?.into_iter().collect()
        };
        let (lamport, seq) = self.conv_state(&group)?;
        let (lamport, seq) = (lamport + 1, seq + 1);
        let now = self.clock.now_ms();
        let id = match id {
            Some(id) => id,
            None => MessageId(send::random_id()?),
        };
        let env = Envelope {
            id: ByteArray::new(id.0),
            conversation: Conversation::Group {
                id: ByteArray::new(state.id),
            },
            sender_user: ByteArray::new(me),
            sender_device: ByteArray::new(*self.me.keys.device.device_id().as_bytes()),
            lists: Some(self.list_versions(None)),
            grant: None,
            heads: state.heads.iter().map(|h| ByteArray::new(*h)).collect(),
            lamport,
            seq,
            sent_at_ms: now,
            body: crate::media::wire_body(&body)?,
        };
        let plain = zeroize::Zeroizing::new(env.encode()?);
        let distribution = key.distribution(self.me.user).to_bytes()?;
        let ciphertext = key.encrypt(&plain)?;
        // Devices that have the key share one ciphertext; the others get it with the key.
        let mut fan: Vec<(String, String)> = Vec::new();
        let mut need: Vec<UserId> = Vec::new();
        for u in &users {
            let Some(c) = self.known(u) else { continue };
            if owed.contains(u) {
                continue;
            }
            let devices = c.devices();
            let mut missing = false;
            let own_device = self.me.keys.device.device_id();
            for (d, _) in devices.into_iter().filter(|(d, _)| *d != own_device) {
                let dev = d.to_peer_id_string();
                if shared.contains(&dev) {
                    fan.push((u.to_string(), dev));
                } else {
                    missing = true;
                }
            }
            if missing {
                need.push(*u);
            }
        }
        let mut key_env = Envelope {
            body: Body::SenderKey {
                distribution: ByteBuf::from(distribution.to_vec()),
                message: Some(ByteBuf::from(ciphertext.clone())),
            },
            ..env.clone()
        };
        let mut deliveries = Vec::new();
        let mut pickles = Vec::new();
        let mut newly: Vec<String> = Vec::new();
        for u in &need {
            let mut sessions = match self.sessions_for(u) {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(%group, member = %u, "no session now; the message waits for them: {e}");
                    owed.push(*u);
                    continue;
                }
            };
            sessions.retain(|(d, _)| !shared.contains(&d.to_peer_id_string()));
            let first = deliveries.len();
            send::encrypt_each(
                &mut sessions,
                &mut key_env,
                &self.grants,
                |_| *u,
                &mut deliveries,
                &mut pickles,
            )?;
            newly.extend(
                deliveries[first..]
                    .iter()
                    .map(|d| d.recipient_device.clone()),
            );
        }
        if let Body::SenderKey { distribution, .. } = key_env.body {
            zeroize::Zeroize::zeroize(&mut distribution.into_vec());
        }
        let message = self.own_text(id, &group, (lamport, seq), now, body);
        let key_pickle = key.pickle()?;
        let outbound = OutboundGroupSession {
            group_id: group.clone(),
            session_id: sid.clone(),
            pickle: key_pickle.to_vec(),
            message_count: u64::from(key.message_index()),
            created_at_ms: now,
        };
        let mut updates = send::crypto_updates(&pickles);
        updates.push(CryptoUpdate::OutboundGroup(&outbound));
        let title = state.title.clone();
        let epoch = state.epoch;
        self.store.transaction(|tx| -> Result<(), NodeError> {
            tx.ensure_conversation(
                &message.conversation,
                ConversationKind::Group,
                Some(&title),
                now,
            )?;
            tx.record_outgoing_fanout(&message, &updates, &deliveries, &ciphertext, &fan, now)?;
            if let Some(client) = client {
                tx.remember_client_id(client, message.id, now)?;
            }
            tx.set_group_sender_key(&group, &sid, epoch)?;
            tx.note_group_message_key(id, &sid)?;
            if !newly.is_empty() {
                tx.keep_sent_key(
                    &SentKey {
                        session_id: sid.clone(),
                        message_id: id,
                        group_id: group.clone(),
                        distribution: distribution.clone(),
                        ciphertext: ciphertext.clone(),
                    },
                    now,
                )?;
            }
            tx.share_sender_key(&sid, &newly, Some(id))?;
            for u in &owed {
                tx.owe_group_message(id, &u.to_string(), &distribution, &ciphertext, now)?;
            }
            Ok(())
        })?;
        if !owed.is_empty() {
            self.groups.owed_due = true;
        }
        self.counters.lamport.insert(group.as_str().into(), lamport);
        self.counters.seq.insert(group.as_str().into(), seq);
        let info = message_info(&message);
        self.emit(Event::Message {
            message: info.clone(),
        });
        // A message with no other member device is sent at once.
        if deliveries.is_empty() && fan.is_empty() && owed.is_empty() {
            self.store
                .transaction(|tx| tx.advance_status(id, Status::Sent))?;
        }
        self.kick_lanes_for(&deliveries);
        self.start_fanout(id, ciphertext, fan, 0);
        Ok(info)
    }

    /// Sends owed group messages to members who can be reached now: over Olm, with the
    /// sender key as of each message, queued in the outbox. One call sends at most
    /// [`OUTBOX_BATCH`](crate::consts::OUTBOX_BATCH) of them and reads past the rows of
    /// members who cannot be reached; a pass that stops there goes on at the next outbox
    /// tick, and one that reaches the end starts again only when something may have changed
    /// (`owed_due`: a session set up, a member looked up, a relay up, a heartbeat).
    pub(crate) fn deliver_owed(&mut self) {
        use crate::consts::OUTBOX_BATCH;
        let mut sweep = match self.groups.owed_sweep.take() {
            Some(sweep) => sweep,
            None if std::mem::take(&mut self.groups.owed_due) => OwedSweep::default(),
            None => return,
        };
        let mut sent = 0u32;
        // Reading is cheap next to encrypting, but bounded too: a pass over many rows of
        // unreachable members goes on at the next tick rather than holding the engine.
        for _ in 0..OWED_PAGES_PER_CALL {
            let page = match self
                .store
                .owed_group_messages(sweep.after.as_ref(), OUTBOX_BATCH)
            {
                Ok(o) => o,
                Err(e) => {
                    tracing::error!("reading owed group messages failed: {e}");
                    // Tried again from the start at the next heartbeat.
                    return;
                }
            };
            let full = page.len() == OUTBOX_BATCH as usize;
            for o in page {
                sweep.after = Some(o.position.clone());
                if sweep.unreachable.contains(&o.user_id) {
                    continue;
                }
                match self.deliver_owed_one(&o) {
                    Ok(()) => sent += 1,
                    Err(e) => {
                        tracing::debug!(member = %o.user_id, "owed group message still waits: {e}");
                        sweep.unreachable.insert(o.user_id.clone());
                    }
                }
                if sent == OUTBOX_BATCH {
                    self.groups.owed_sweep = Some(sweep);
                    return;
                }
            }
            if !full {
                // The end: what is left waits for a reason to look again.
                return;
            }
        }
        self.groups.owed_sweep = Some(sweep);
    }

    fn deliver_owed_one(&mut self, o: &tern_store::OwedGroupMessage) -> Result<(), NodeError> {
        let Some(m) = self.store.message(o.message_id)? else {
            return Ok(());
        };
        let gid = GroupId::from_hex(&m.conversation.0)
            .ok_or_else(|| NodeError::UnknownGroup(m.conversation.0.clone()))?;
        // An operation: sent as it is (a removed member is told of its removal).
        let is_op = o.distribution.is_empty();
        let user = UserId::from_hex(&o.user_id)
            .ok_or_else(|| NodeError::UnknownContact(o.user_id.clone()))?;
        // A member removed meanwhile is owed no message any more.
        if !is_op && !self.state(&gid)?.is_member(user.as_bytes()) {
            self.store
                .transaction(|tx| tx.settle_owed_group_message(o.message_id, &o.user_id))?;
            return Ok(());
        }
        self.ensure_peer(&user)?;
        // The sender key the message carries, as of the message: its devices hold it after.
        let shares = if is_op {
            None
        } else {
            Some(tern_crypto::group::SenderKeyDistribution::from_bytes(&o.distribution)?.session_id)
        };
        let body = if is_op {
            // The operation is the stored membership message itself.
            let StoreBody::Structured { data, .. } = &m.body else {
                return Err(NodeError::Store(crate::error::StoreError::Missing(
                    "an owed operation is not stored",
                )));
            };
            Body::GroupOp {
                op: ByteBuf::from(data.clone()),
            }
        } else {
            Body::SenderKey {
                distribution: ByteBuf::from(o.distribution.to_vec()),
                message: Some(ByteBuf::from(o.ciphertext.clone())),
            }
        };
        let mut env = self.own_group_envelope(*gid.as_bytes(), &m, body);
        let sent = self.send_pairwise(
            std::slice::from_ref(&user),
            o.message_id,
            &mut env,
            &[o.message_id],
            shares.as_deref(),
        );
        if let Body::SenderKey { distribution, .. } = env.body {
            zeroize::Zeroize::zeroize(&mut distribution.into_vec());
        }
        match sent?.pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// The envelope of a stored own message of group `gid`, as it was sent, carrying `body`.
    pub(crate) fn own_group_envelope(&self, gid: [u8; 16], m: &Message, body: Body) -> Envelope {
        Envelope {
            id: ByteArray::new(m.id.0),
            conversation: Conversation::Group {
                id: ByteArray::new(gid),
            },
            sender_user: ByteArray::new(*self.me.user.as_bytes()),
            sender_device: ByteArray::new(*self.me.keys.device.device_id().as_bytes()),
            lists: Some(self.list_versions(None)),
            grant: None,
            heads: Vec::new(),
            lamport: m.lamport,
            seq: m.seq,
            sent_at_ms: m.sent_at_ms,
            body,
        }
    }
}

/// The sender key `session_id` as `env` (a [`Body::SenderKey`] of a group, with the group
/// message `id`) carries it.
fn sent_key(session_id: &str, id: MessageId, env: &Envelope) -> Option<SentKey> {
    let (
        Conversation::Group { id: group },
        Body::SenderKey {
            distribution,
            message: Some(ciphertext),
        },
    ) = (&env.conversation, &env.body)
    else {
        return None;
    };
    Some(SentKey {
        session_id: session_id.to_owned(),
        message_id: id,
        group_id: tern_crypto::hex::encode(group.as_slice()),
        distribution: zeroize::Zeroizing::new(distribution.to_vec()),
        ciphertext: ciphertext.to_vec(),
    })
}
