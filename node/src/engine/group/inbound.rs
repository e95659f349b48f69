//! What this device receives for groups: sender keys (over Olm) and group messages (Megolm),
//! checked against the membership and stored; messages whose key or group is not known yet
//! wait in the stash and are tried again when they may be; notifications are batched.

use std::time::Instant;

use libp2p::PeerId;
use tern_crypto::{
    DeviceId, UserId,
    group::{GroupError, GroupId, GroupMessage, InboundSenderKey, SenderKeyDistribution},
};
use tern_store::{
    ConversationId, ConversationKind, CryptoUpdate, InboundGroupSession, Inserted, Message,
    MessageId, SenderKeyStore, Status,
};

use super::hex;
use crate::engine::Engine;
use crate::{
    consts::{MAX_GROUP_STASH, MAX_GROUP_STASH_PER_DEVICE, NOTIFY_INTERVAL},
    envelope::{Conversation, Envelope},
    error::NodeError,
    group::Action,
    types::*,
};

/// A stashed group message older than this is given up (and reported).
pub(crate) const STASH_MAX_AGE_MS: i64 = 7 * 24 * 3600 * 1000;

/// Batched notifications of one conversation.
#[derive(Debug)]
pub(crate) struct Notify {
    pub pending: u64,
    pub last: Option<Instant>,
}

/// What happened to a group ciphertext.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GroupOutcome {
    /// Stored, a duplicate, or refused for good.
    Done,
    /// Its key or group is not known yet.
    Wait,
}

impl Engine {
    /// A sender key received over a pairwise session from `user`'s `device`.
    pub(crate) fn on_sender_key(
        &mut self,
        user: &str,
        device: DeviceId,
        conversation: &Conversation,
        distribution: &[u8],
    ) -> Result<Option<InboundGroupSession>, NodeError> {
        let Conversation::Group { id } = conversation else {
            return Ok(None);
        };
        let dist = SenderKeyDistribution::from_bytes(distribution)?;
        if dist.group_id.as_bytes() != id.as_ref() || hex(dist.sender_user.as_bytes()) != user {
            tracing::warn!(contact = %user, "sender key for another group or user; dropped");
            return Ok(None);
        }
        let key = InboundSenderKey::from_distribution(&dist, &device)?;
        // A key held already is kept unless this copy reaches further back (a key sent
        // again on request, or twice, must not undo what the held one has read).
        if let Some(held) = self
            .store
            .transaction(|tx| tx.inbound_group_session(&key.session_id()))?
            && (held.sender_device != device.to_peer_id_string()
                || InboundSenderKey::from_pickle(&held.pickle)?.first_known_index()
                    <= key.first_known_index())
        {
            return Ok(None);
        }
        let pickle = key.pickle()?;
        Ok(Some(InboundGroupSession {
            session_id: key.session_id(),
            group_id: hex(id.as_slice()),
            sender_user: user.to_owned(),
            sender_device: device.to_peer_id_string(),
            pickle: pickle.to_vec(),
            received_at_ms: self.clock.now_ms(),
        }))
    }

    /// A group ciphertext from `sender` (mailbox depositor). Kept in the stash when its key
    /// or group is not known yet, or when storing it failed (it is tried again from there).
    /// Returns whether it is durably handled: `false` only when even the stash could not
    /// take it, so the mail must stay in the mailbox.
    pub(crate) fn on_group_message(&mut self, sender: PeerId, payload: &[u8]) -> bool {
        match self.process_group(&sender.to_string(), payload) {
            Ok(GroupOutcome::Done) => return true,
            Ok(GroupOutcome::Wait) => {}
            Err(e) => tracing::error!("storing a group message failed; it is kept to retry: {e}"),
        }
        // Only a device of a known user (a contact, a group member, this user) is given room
        // in the stash: anything else stays at the relay, which keeps it within that
        // mailbox's quota, and is read once the device is learned (lists are fetched again).
        // So a stranger can never fill the stash and keep a member's message out.
        if !self.people.device_owner.contains_key(&sender) {
            self.inbox.recovery.group_from_strangers += 1;
            self.want_device_lists();
            tracing::info!(%sender, "group message from a device of no known user; left at the relay");
            return false;
        }
        let now = self.clock.now_ms();
        match self.store.transaction(|tx| {
            tx.stash_group_message(
                &sender.to_string(),
                payload,
                now,
                MAX_GROUP_STASH,
                MAX_GROUP_STASH_PER_DEVICE,
            )
        }) {
            Ok(kept) => kept,
            Err(e) => {
                tracing::error!("keeping a group message for later failed: {e}");
                false
            }
        }
    }

    /// Decrypts, checks and stores one group message.
    fn process_group(&mut self, sender: &str, payload: &[u8]) -> Result<GroupOutcome, NodeError> {
        let msg = match GroupMessage::from_bytes(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%sender, "malformed group message dropped: {e}");
                return Ok(GroupOutcome::Done);
            }
        };
        if msg.sender_device.to_peer_id_string() != sender {
            tracing::warn!(%sender, "group message deposited by another device than its sender; dropped");
            return Ok(GroupOutcome::Done);
        }
        let Some(stored) = self
            .store
            .transaction(|tx| tx.inbound_group_session(&msg.session_id))?
        else {
            return Ok(GroupOutcome::Wait);
        };
        let Some(group) = GroupId::from_hex(&stored.group_id) else {
            return Ok(GroupOutcome::Wait);
        };
        let Ok(state) = self.state(&group) else {
            return Ok(GroupOutcome::Wait);
        };
        let Some(sender_user) = UserId::from_hex(&stored.sender_user).map(|u| *u.as_bytes()) else {
            return Ok(GroupOutcome::Done);
        };
        let member_now = state.is_member(&sender_user);
        if !member_now {
            let ever_added = self.groups.by_id.get(&group).is_some_and(|g| {
                g.ops.iter().any(|o| match &o.op.action {
                    Action::Create { members, .. } | Action::Add { members } => {
                        members.iter().any(|m| m.user.into_array() == sender_user)
                    }
                    _ => false,
                })
            });
            if !ever_added {
                // Added by an operation that has not reached this device yet (it comes from
                // an admin, the message from the new member): kept until it does.
                return Ok(GroupOutcome::Wait);
            }
            // No longer a member: shown only if it names a membership at which they were
            // one (sent before the removal), checked once it is open.
        }
        if DeviceId::from_peer_id_string(&stored.sender_device)
            .and_then(|d| self.revoked_owner(&d))
            .is_some()
        {
            tracing::warn!(%group, sender = %stored.sender_device, "group message from a revoked device refused");
            return Ok(GroupOutcome::Done);
        }
        let title = state.title.clone();
        let mut key = InboundSenderKey::from_pickle(&stored.pickle)?;
        let now = self.clock.now_ms();
        let device_key = stored.sender_device.clone();
        let mut late_refused = false;
        let result = self.store.transaction(|tx| -> Result<Option<Message>, NodeError> {
            let d = match key.decrypt(&msg, tx) {
                Ok(d) => d,
                Err(GroupError::Replay { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            // Only the kind of a decoding failure travels on: it is logged below.
            let env = Envelope::decode(&d.body)
                .map_err(|e| NodeError::invalid(format!("{} envelope", e.kind())))?;
            let bound = matches!(&env.conversation, Conversation::Group { id } if id.as_slice() == group.as_bytes())
                && env.sender_user.as_slice() == d.sender_user.as_bytes()
                && env.sender_device.as_slice() == d.sender_device.as_bytes();
            // A text, or a kind of content from a newer version (kept as unsupported).
            let Some(content) = crate::engine::receive::content_body(&env.body)? else {
                return Err(NodeError::invalid("a group message carries only text"));
            };
            if !bound {
                return Err(NodeError::invalid("group message envelope does not match its key"));
            }
            if !member_now
                && !self
                    .groups.by_id
                    .get(&group)
                    .is_some_and(|g| g.sent_while_member(&sender_user, &env.heads, now))
            {
                late_refused = true;
                return Ok(None);
            }
            let own = stored.sender_user == self.me.user_hex;
            let message = Message {
                id: MessageId(env.id.into_array()),
                conversation: ConversationId::from(group),
                sender_user: stored.sender_user.clone(),
                sender_device: device_key.clone(),
                lamport: env.lamport,
                seq: env.seq,
                sent_at_ms: env.sent_at_ms,
                received_at_ms: now,
                // Sent from this user's other device.
                own,
                status: if own { Status::Sent } else { Status::Received },
                body: content,
                edited_at_ms: None,
            };
            let pickle = key.pickle()?;
            let updated = InboundGroupSession {
                pickle: pickle.to_vec(),
                ..stored.clone()
            };
            tx.ensure_conversation(&message.conversation, ConversationKind::Group, Some(&title), now)?;
            let inserted = tx.record_incoming(&message, &[CryptoUpdate::InboundGroup(&updated)])?;
            Ok((inserted == Inserted::New).then_some(message))
        });
        if late_refused {
            tracing::warn!(%group, sender = %stored.sender_user, "group message from a removed member, sent after the removal; refused");
            self.emit(Event::Undecryptable {
                user_id: stored.sender_user.clone(),
                device_id: device_key,
                reason: "not_a_member".into(),
            });
            return Ok(GroupOutcome::Done);
        }
        let message = match result {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(GroupOutcome::Done),
            Err(e @ NodeError::Store(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(%group, "undecryptable group message: {e}");
                self.emit(Event::Undecryptable {
                    user_id: stored.sender_user.clone(),
                    device_id: device_key,
                    reason: "group_message".into(),
                });
                return Ok(GroupOutcome::Done);
            }
        };
        self.observe_lamport(&stored.group_id, message.lamport)?;
        self.on_media_message(&message);
        let shown = self.hold.arrived(&self.store, message, self.clock.now())?;
        if !shown.is_empty() {
            self.groups
                .notify
                .entry(group)
                .or_insert(Notify {
                    pending: 0,
                    last: None,
                })
                .pending += shown.len() as u64;
        }
        for message in shown {
            self.emit(Event::Message { message });
        }
        Ok(GroupOutcome::Done)
    }

    /// Retries stashed group messages: those of `from` when that device's key arrived, or
    /// all of them when the membership changed or members were looked up.
    pub(crate) fn retry_stash(&mut self, from: Option<&str>) {
        let stashed = match self.store.stashed_group_messages(from, MAX_GROUP_STASH) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("reading stashed group messages failed: {e}");
                return;
            }
        };
        let now = self.clock.now_ms();
        for s in stashed {
            let done = match self.process_group(&s.sender_device, &s.payload) {
                Ok(GroupOutcome::Done) => true,
                Ok(GroupOutcome::Wait) if now - s.received_at_ms > STASH_MAX_AGE_MS => {
                    let owner =
                        s.sender_device.parse::<PeerId>().ok().and_then(|p| {
                            self.people.device_owner.get(&p).map(ToString::to_string)
                        });
                    self.emit(Event::Undecryptable {
                        user_id: owner.unwrap_or_default(),
                        device_id: s.sender_device.clone(),
                        reason: "group_key_missing".into(),
                    });
                    true
                }
                Ok(GroupOutcome::Wait) => false,
                Err(e) => {
                    tracing::error!("retrying a stashed group message failed: {e}");
                    false
                }
            };
            if done && let Err(e) = self.store.transaction(|tx| tx.unstash_group_message(s.id)) {
                tracing::error!("removing a stashed group message failed: {e}");
            }
        }
    }

    /// Emits batched group notifications that are due.
    pub(crate) fn flush_notifications(&mut self) {
        let now = self.clock.now();
        let due: Vec<GroupId> = self
            .groups
            .notify
            .iter()
            .filter(|(_, n)| {
                n.pending > 0
                    && n.last
                        .is_none_or(|l| now.duration_since(l) >= NOTIFY_INTERVAL)
            })
            .map(|(g, _)| *g)
            .collect();
        for group in due {
            let Ok(info) = self.group_info(&group) else {
                continue;
            };
            if let Some(n) = self.groups.notify.get_mut(&group) {
                n.pending = 0;
                n.last = Some(now);
            }
            if info.unread == 0 {
                continue;
            }
            let text = if info.unread == 1 {
                format!("1 new message in {}", info.title)
            } else {
                format!("{} new messages in {}", info.unread, info.title)
            };
            self.emit(Event::Notification {
                conversation: group.into(),
                title: info.title,
                unread: info.unread,
                text,
            });
        }
    }
}
