//! Receiving: decrypt, check, store in one transaction, acknowledge, emit, send receipts.

use std::collections::HashMap;

use libp2p::PeerId;
use tern_crypto::{Kind, UserId, session::SessionError};
use tern_relay::wire::{ErrorCode, mailbox};
use tern_store::{Body as StoreBody, CryptoUpdate, MessageId};

mod quarantine;
mod route;

use route::Read;

use super::{Engine, peer_device};
use crate::{
    consts::INBOUND_SESSIONS_PER_TOPUP_CHECK,
    envelope::{Body, Conversation, Envelope, ReceiptKind},
    error::NodeError,
    net::rpc,
    types::Event,
};

/// What to do with a ciphertext after processing it.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Stored (or a duplicate, or undecryptable and reported): acknowledge it.
    Ack,
    /// Not handled now (unknown sender, storage failure): leave it in the mailbox.
    Keep,
    /// Ahead of its chain: earlier messages from its sender have not been read yet. Left in
    /// the mailbox (drained again shortly) or refused on the direct path (the sender then
    /// uses the mailbox), for at most [`crate::consts::REORDER_WAIT`].
    Wait,
    /// Storing it failed: left in the mailbox; the device keys are reloaded from the store
    /// once the batch around it is settled, so memory never runs ahead of the disk.
    Failed,
}

/// The start of a stored unsupported message's data (a membership operation starts with its
/// format version, 1 or 2).
pub(crate) const UNSUPPORTED_MARK: &[u8] = b"\xF0tern/unsupported\0";

/// What a message with content stores: its text or file, or, for a kind of content from a
/// newer version, a placeholder that says so (shown as kind `unsupported`).
pub(crate) fn content_body(body: &Body) -> Result<Option<StoreBody>, NodeError> {
    Ok(match body {
        Body::Text { text, media } => Some(crate::media::store_body(text.clone(), media.clone())?),
        Body::Unsupported { kind } => {
            let mut data = UNSUPPORTED_MARK.to_vec();
            data.extend_from_slice(kind.as_bytes());
            Some(StoreBody::Structured {
                data,
                text: Some(format!(
                    "This message needs a newer version of Tern to show it ({kind})."
                )),
            })
        }
        _ => None,
    })
}

/// Whether a received ciphertext (mail from a relay, a direct message, quarantined mail) is a
/// group (Megolm) message rather than a pairwise one. The wire carries no other label, so
/// this reads the record kind in its header (`tern_crypto::codec`: version byte, then kind):
/// the one place the engine looks at a ciphertext's bytes to route it. What this device
/// sends is told apart by the kind its outbox row stores, never by its payload.
fn is_group_payload(payload: &[u8]) -> bool {
    payload.get(1) == Some(&(Kind::GroupMessage as u8))
}

impl Engine {
    /// A page of mail (fetched or pushed), in the relay's order. Its messages are stored in
    /// one batch (one sync to disk for the page, each message still all or nothing with its
    /// ratchet state); only after the batch commits is anything acknowledged, receipted or
    /// sent.
    pub(crate) fn on_mail(&mut self, relay: PeerId, envelopes: Vec<mailbox::Envelope>) {
        let mut acks = Vec::new();
        // Known users whose mail came without a grant: offered one once the batch is done.
        let mut offers = std::collections::BTreeSet::new();
        let mut receipts: HashMap<UserId, Vec<MessageId>> = HashMap::new();
        let batched = self.open_batch();
        let mut failed = false;
        for env in envelopes {
            if env.intro
                && let Some(user) = self.people.device_owner.get(&env.sender)
            {
                offers.insert(*user);
            }
            match self.process(env.sender, &env.ciphertext, &mut receipts) {
                Outcome::Ack => acks.push(env.id),
                Outcome::Wait => {
                    self.relays.refetch.insert(relay);
                }
                Outcome::Keep => {
                    // From a device of no known user: kept here, not at the relay, where
                    // it would pin the mailbox until its time to live runs out.
                    if !is_group_payload(&env.ciphertext)
                        && self.quarantine(env.sender, &env.ciphertext)
                    {
                        acks.push(env.id);
                    }
                }
                Outcome::Failed => {
                    // The rest of the page stays at the relay and comes again.
                    failed = true;
                    self.relays.refetch.insert(relay);
                    break;
                }
            }
        }
        if batched && let Err(e) = self.close_batch() {
            tracing::error!("storing a page of mail failed (it comes again): {e}");
            acks.clear();
            receipts.clear();
            self.inbox.lost.clear();
            failed = true;
            self.relays.refetch.insert(relay);
        }
        if failed {
            self.reload_device();
            // Membership taken in during a rolled-back batch must not stay in memory only.
            self.groups.by_id.clear();
            if let Err(e) = self.load_groups() {
                tracing::error!("reloading groups failed: {e}");
            }
        }
        self.owe_delivered(receipts);
        self.ask_resend();
        for user in offers {
            self.offer_grant(&user);
        }
        if !acks.is_empty() {
            let net = self.net.clone();
            tokio::spawn(async move {
                for chunk in acks.chunks(mailbox::MAX_ACK_IDS) {
                    if let Err(e) = rpc::ack_mail(&net, relay, chunk.to_vec()).await {
                        tracing::debug!(%relay, "mailbox ack failed (mail will come again): {e}");
                    }
                }
            });
        }
        self.maybe_top_up();
        // Lanes and fan-outs asked for while the batch was open start now.
        self.dispatch_due(false);
    }

    pub(crate) fn on_direct(&mut self, peer: PeerId, id: u64, ciphertext: Vec<u8>) {
        let mut receipts = HashMap::new();
        let outcome = self.process(peer, &ciphertext, &mut receipts);
        if outcome == Outcome::Failed {
            self.reload_device();
        }
        self.owe_delivered(receipts);
        self.ask_resend();
        let net = self.net.clone();
        tokio::spawn(async move {
            let refused = match outcome {
                Outcome::Ack => None,
                Outcome::Keep | Outcome::Wait | Outcome::Failed => Some(ErrorCode::Unavailable),
            };
            net.respond_direct(id, refused).await;
        });
        self.maybe_top_up();
    }

    /// Delivered receipts for what was just stored go on the next outbox tick, one per
    /// contact for everything stored meanwhile (they are owed in the store already, so a
    /// crash before then loses none): a burst of pushes costs a few receipts, not one each.
    fn owe_delivered(&mut self, receipts: HashMap<UserId, Vec<MessageId>>) {
        for (user, ids) in receipts {
            self.outbox
                .delivered_due
                .entry(user)
                .or_default()
                .extend(ids);
        }
    }

    /// Sends the delivered receipts gathered since the last tick.
    pub(crate) fn flush_delivered(&mut self) {
        let due = std::mem::take(&mut self.outbox.delivered_due);
        for (user, ids) in due {
            self.send_receipt(&user, ReceiptKind::Delivered, ids);
        }
    }

    fn maybe_top_up(&mut self) {
        if self.inbox.inbound_sessions < INBOUND_SESSIONS_PER_TOPUP_CHECK {
            return;
        }
        self.inbox.inbound_sessions = 0;
        // Publishing needs the engine's keys, so it runs on the next outbox tick of the
        // engine rather than in a task; here we only note it.
        self.relays.topup_due = true;
    }

    fn process(
        &mut self,
        sender: PeerId,
        ciphertext: &[u8],
        receipts: &mut HashMap<UserId, Vec<MessageId>>,
    ) -> Outcome {
        if is_group_payload(ciphertext) {
            // Stored, or kept in the stash when it cannot be read yet: acknowledged either
            // way, unless the store could take neither.
            return if self.on_group_message(sender, ciphertext) {
                Outcome::Ack
            } else {
                Outcome::Keep
            };
        }
        let Some(user) = self.people.device_owner.get(&sender).copied() else {
            if let Some(owner) = peer_device(&sender).and_then(|d| self.revoked_owner(&d)) {
                tracing::warn!(contact = %owner, %sender, "message from a revoked device refused");
                return Outcome::Ack;
            }
            // Perhaps a contact linked a new device: look at device lists again soon.
            self.want_device_lists();
            tracing::info!(%sender, "mail from a device of no known contact; kept until they are added");
            return Outcome::Keep;
        };
        match self.process_from(&user, sender, ciphertext, receipts) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!(contact = %user, "storing a received message failed: {e}");
                Outcome::Failed
            }
        }
    }

    fn process_from(
        &mut self,
        user: &UserId,
        sender: PeerId,
        ciphertext: &[u8],
        receipts: &mut HashMap<UserId, Vec<MessageId>>,
    ) -> Result<Outcome, NodeError> {
        let Some(device) = peer_device(&sender) else {
            return Ok(Outcome::Ack);
        };
        let Some(curve) = self.known(user).and_then(|c| c.curve_of(&device)) else {
            tracing::warn!(contact = %user, "message from a device that is not active; dropped");
            return Ok(Outcome::Ack);
        };
        let mut sessions = self.load_sessions(&device, curve)?;
        let device_key = device.to_peer_id_string();
        let digest = tern_crypto::session::message_digest(ciphertext);
        if self.store.pairwise_seen(&device_key, &digest)? {
            // A copy of a message read before (a redelivery): acknowledged, nothing changes.
            self.inbox.reorder.remove(&digest);
            return Ok(Outcome::Ack);
        }
        if self.must_wait(&sessions, ciphertext, digest) {
            return Ok(Outcome::Wait);
        }
        let decrypted = match sessions.decrypt(&mut self.me.keys.device, ciphertext) {
            Ok(d) => d,
            Err(SessionError::Duplicate(_)) => return Ok(Outcome::Ack),
            Err(e) => {
                // Not a copy of anything read here (the ledger says so): lost. The user is
                // told.
                let reason = match e {
                    SessionError::MessageKeyGone(_) => "message_key_gone",
                    _ => "cannot_decrypt",
                };
                tracing::warn!(contact = %user, reason, "undecryptable message: {e}");
                self.inbox.recovery.undecryptable += 1;
                self.emit(Event::Undecryptable {
                    user_id: user.to_string(),
                    device_id: sender.to_string(),
                    reason: reason.into(),
                });
                // Texts that came too late are asked for again. A message no session reads
                // would fail the same way again: resending would loop.
                if matches!(e, SessionError::MessageKeyGone(_)) {
                    self.note_lost(
                        super::state::LostFrom {
                            user: *user,
                            device,
                            group: None,
                        },
                        None,
                    );
                }
                return Ok(Outcome::Ack);
            }
        };
        if decrypted.new_session {
            self.inbox.inbound_sessions += 1;
        }
        let sid = sessions.current_session_id().unwrap_or_default();
        let pickle = sessions.pickle()?;
        let own_device = if decrypted.new_session {
            Some(self.me.keys.own_device_record(self.me.device_created_ms)?)
        } else {
            None
        };
        let now = self.clock.now_ms();
        let update = [
            CryptoUpdate::Session {
                peer_device: &device_key,
                session_id: &sid,
                pickle: &pickle,
            },
            CryptoUpdate::PairwiseSeen {
                peer_device: &device_key,
                digest: &digest,
            },
        ];
        let is_contact = self.people.contacts.contains_key(user);
        let env = match Envelope::decode(&decrypted.plaintext) {
            Ok(env)
                if env.sender_user.as_slice() == user.as_bytes()
                    && env.sender_device.as_slice() == device.as_bytes()
                    && match &env.conversation {
                        // Direct messages only from contacts; group members who are not
                        // contacts reach this device through their groups only.
                        Conversation::Direct { to } => {
                            (is_contact && to.as_slice() == self.me.user.as_bytes())
                                // A sync copy from one of this user's other devices.
                                || (*user == self.me.user && to.as_slice() != self.me.user.as_bytes())
                                // A device list, from anyone this device addresses.
                                || (matches!(env.body, Body::DeviceList { .. } | Body::Grant {})
                                    && to.as_slice() == self.me.user.as_bytes())
                                // History, from another device of this user.
                                || (matches!(env.body, Body::History { .. })
                                    && *user == self.me.user
                                    && to.as_slice() == self.me.user.as_bytes())
                                // A lost sender key or group text asked for, from a group
                                // member who need not be a contact, or another device of
                                // this user (the answer checks membership and shares).
                                || (matches!(
                                    env.body,
                                    Body::KeyRequest { .. } | Body::Resend { group: Some(_), .. }
                                ) && self.known(user).is_some()
                                    && to.as_slice() == self.me.user.as_bytes())
                        }
                        Conversation::Group { .. } => {
                            matches!(
                                env.body,
                                Body::GroupOp { .. }
                                    | Body::GroupOps { .. }
                                    | Body::SenderKey { .. }
                                    // A group text sent again to a device linked since.
                                    | Body::Text { .. }
                                    | Body::Unsupported { .. }
                            )
                        }
                    } =>
            {
                env
            }
            other => {
                // A text from a group member this user has not added: not kept (direct
                // texts come from contacts only), but counted, so status can say so; once
                // added, the sender's notice of what it sent brings it again.
                if let Ok(env) = &other
                    && !is_contact
                    && matches!(env.conversation, Conversation::Direct { to } if to.as_slice() == self.me.user.as_bytes())
                    && matches!(env.body, Body::Text { .. } | Body::Unsupported { .. })
                {
                    self.inbox.recovery.texts_from_non_contacts += 1;
                    tracing::info!(contact = %user, "a text from a group member not added as a contact; not kept");
                    self.save_crypto(&update, own_device.as_ref(), now)?;
                    return Ok(Outcome::Ack);
                }
                // Only the kind of failure is logged: a decoder's message could quote plaintext.
                let why = match other {
                    Ok(_) => "sender or addressee does not match",
                    Err(e) => e.kind(),
                };
                tracing::warn!(contact = %user, why, "dropping a message with a bad envelope");
                self.save_crypto(&update, own_device.as_ref(), now)?;
                return Ok(Outcome::Ack);
            }
        };
        if let Some(g) = env.grant {
            self.take_grant(&device_key, g.into_array());
        }
        self.check_list_marks(user, device, &env)?;
        let content = content_body(&env.body)?;
        self.route(
            Read {
                user,
                device,
                device_key: device_key.clone(),
                env,
                content,
                update: &update,
                own_device,
                now,
            },
            receipts,
        )?;
        Ok(Outcome::Ack)
    }
}

impl Engine {}

impl Engine {}

impl Engine {}

#[cfg(test)]
mod tests {
    use tern_store::{ConversationId, Message, Status};

    use super::*;

    /// Content of a kind from a newer version is stored (not dropped) and shown as an
    /// unsupported message that names it; a membership change is still a membership change.
    #[test]
    fn unsupported_content_is_stored_and_shown_as_such() {
        let body = content_body(&Body::Unsupported {
            kind: "Poll".into(),
        })
        .unwrap()
        .unwrap();
        let message = Message {
            id: MessageId([1; 16]),
            conversation: ConversationId("c".into()),
            sender_user: "u".into(),
            sender_device: "d".into(),
            lamport: 1,
            seq: 1,
            sent_at_ms: 0,
            received_at_ms: 0,
            own: false,
            status: Status::Received,
            body,
            edited_at_ms: None,
        };
        let info = super::super::message_info(&message);
        assert_eq!(info.kind, crate::types::MessageKind::Unsupported);
        let json = serde_json::to_value(&info).unwrap();
        assert_eq!(json["kind"], "unsupported");
        assert_eq!(json["status"], "received");
        assert!(info.text.contains("newer version") && info.text.contains("Poll"));
        let op = Message {
            body: StoreBody::Structured {
                data: vec![2, 0xa2],
                text: Some("x".into()),
            },
            ..message
        };
        let op = super::super::message_info(&op);
        assert_eq!(op.kind, crate::types::MessageKind::Membership);
        assert_eq!(serde_json::to_value(&op).unwrap()["kind"], "membership");
        assert!(content_body(&Body::Grant {}).unwrap().is_none());
    }

    #[test]
    fn group_payloads_are_told_apart_from_pairwise() {
        assert!(is_group_payload(&[1, Kind::GroupMessage as u8, 0]));
        assert!(!is_group_payload(&[1, Kind::PairwiseMessage as u8, 0]));
        assert!(!is_group_payload(&[]));
    }
}
