//! What a message read says goes to the part it is for: texts to the conversation (and the
//! hold), receipts to the messages they name, resend requests to [`super::super::recover`],
//! device lists to `listsync`, history to `history`, group operations and sender keys to
//! `group`; copies of what this user's other devices sent are stored as their own.
//! Everything is stored in the transaction that saves the session state its reading moved.

use std::collections::HashMap;

use tern_crypto::{DeviceId, UserId, group::GroupId};
use tern_store::{
    Body as StoreBody, ConversationId, ConversationKind, CryptoUpdate, Inserted, Message,
    MessageId, Status,
};

use super::super::Engine;
use crate::{
    envelope::{Body, Conversation, Envelope, ReceiptKind},
    error::NodeError,
    types::Event,
};

/// A message read and checked: who sent it, what it says, and the session state its reading
/// moved (stored in the same transaction as what it says).
pub(super) struct Read<'a> {
    /// The sender's user id.
    pub user: &'a UserId,
    /// The sender's device.
    pub device: DeviceId,
    /// The sender's device as a peer id string.
    pub device_key: String,
    /// The envelope.
    pub env: Envelope,
    /// What it stores as a message, if it is one (a text, a file, an unsupported kind).
    pub content: Option<StoreBody>,
    /// The session state (and ledger entry) its reading moved.
    pub update: &'a [CryptoUpdate<'a>],
    /// The Olm account, when the message opened a new session.
    pub own_device: Option<tern_store::OwnDevice>,
    /// When it was read, ms.
    pub now: i64,
}

impl Engine {
    /// Stores what `read` says with the session state, and hands it to its part; delivered
    /// receipts owed for new texts are added to `receipts`.
    pub(super) fn route(
        &mut self,
        read: Read<'_>,
        receipts: &mut HashMap<UserId, Vec<MessageId>>,
    ) -> Result<(), NodeError> {
        let Read {
            user,
            device,
            device_key,
            env,
            content,
            update,
            own_device,
            now,
        } = read;
        let hex = user.to_string();
        if let (Conversation::Group { id }, Some(body)) = (&env.conversation, content.clone()) {
            self.on_group_copy(user, &device_key, id.into_array(), &env, body, |tx| {
                tx.apply_crypto(update, now)?;
                if let Some(d) = &own_device {
                    tx.save_own_device(d)?;
                }
                Ok(())
            })?;
            return Ok(());
        }
        let conv = ConversationId(hex.clone());
        if *user == self.me.user
            && let (Conversation::Direct { to }, Some(body)) = (&env.conversation, content.clone())
        {
            self.store_sync_copy(
                &env,
                &tern_crypto::hex::encode(to.as_slice()),
                body,
                &device_key,
                update,
                own_device.as_ref(),
            )?;
            return Ok(());
        }
        match env.body {
            // Its grant was taken above; nothing else to store.
            Body::Grant {} => {
                self.save_crypto(update, own_device.as_ref(), now)?;
            }
            Body::Text { .. } | Body::Unsupported { .. } => {
                let message = Message {
                    id: MessageId(env.id.into_array()),
                    conversation: conv.clone(),
                    sender_user: hex.clone(),
                    sender_device: device_key.clone(),
                    lamport: env.lamport,
                    seq: env.seq,
                    sent_at_ms: env.sent_at_ms,
                    received_at_ms: now,
                    own: false,
                    status: Status::Received,
                    body: content.ok_or_else(|| NodeError::invalid("no content"))?,
                    edited_at_ms: None,
                };
                let title = self.people.contacts[user].contact.display_name.clone();
                let inserted = self.store.transaction(|tx| -> Result<_, NodeError> {
                    tx.ensure_conversation(&conv, ConversationKind::Direct, Some(&title), now)?;
                    let inserted = tx.record_incoming(&message, update)?;
                    // Owed until delivered: a crash before then does not lose the receipt.
                    tx.owe_receipts(&hex, tern_store::ReceiptKind::Delivered, &[message.id], now)?;
                    if let Some(d) = &own_device {
                        tx.save_own_device(d)?;
                    }
                    Ok(inserted)
                })?;
                receipts.entry(*user).or_default().push(message.id);
                if inserted == Inserted::New {
                    self.observe_lamport(&hex, env.lamport)?;
                    self.on_media_message(&message);
                    let shown = self.hold.arrived(&self.store, message, self.clock.now())?;
                    for message in shown {
                        self.emit(Event::Message { message });
                    }
                }
            }
            Body::Receipt { kind, ids } => {
                let to = match kind {
                    ReceiptKind::Delivered => Status::Delivered,
                    ReceiptKind::Read => Status::Read,
                };
                // Only our own messages in the conversation with this contact.
                let valid: Vec<MessageId> = ids
                    .into_iter()
                    .map(|id| MessageId(id.into_array()))
                    .filter(|id| {
                        matches!(self.store.message(*id), Ok(Some(m)) if m.own && m.conversation == conv)
                    })
                    .collect();
                let moved = self.store.transaction(|tx| -> Result<_, NodeError> {
                    tx.apply_crypto(update, now)?;
                    if let Some(d) = &own_device {
                        tx.save_own_device(d)?;
                    }
                    let mut moved = Vec::new();
                    for id in valid {
                        if tx.advance_status(id, to)? {
                            moved.push(id.to_string());
                        }
                    }
                    Ok(moved)
                })?;
                if !moved.is_empty() {
                    self.emit(Event::Receipt {
                        conversation: (*user).into(),
                        ids: moved,
                        status: to.into(),
                    });
                }
            }
            Body::Resend {
                after_seq,
                up_to_seq,
                group,
            } => {
                self.save_crypto(update, own_device.as_ref(), now)?;
                // A failure to queue them is a storage fault: the request is stored as read,
                // so the receiver asks again (its gap is still there).
                let range = (after_seq, up_to_seq.unwrap_or(u64::MAX));
                let group = group.map(|g| GroupId::from_bytes(g.into_array()));
                if let Err(e) = self.resend_to(user, device, range, group) {
                    tracing::warn!(contact = %user, "sending texts again failed: {e}");
                }
            }
            Body::SentUpTo { from_seq, seq } => {
                self.save_crypto(update, own_device.as_ref(), now)?;
                self.on_sent_up_to(user, device, (from_seq, seq));
            }
            Body::KeyRequest { session } => {
                self.save_crypto(update, own_device.as_ref(), now)?;
                // A failure to queue it is a storage fault: the asking device asks again.
                if let Err(e) = self.answer_key_request(user, device, &session) {
                    tracing::warn!(contact = %user, "sending a sender key again failed: {e}");
                }
            }
            Body::DeviceList {
                list,
                stale,
                missed,
                relays,
            } => {
                self.on_device_list(user, &list, &stale, &missed, |tx| {
                    tx.apply_crypto(update, now)?;
                    if let Some(d) = &own_device {
                        tx.save_own_device(d)?;
                    }
                    Ok(())
                })?;
                self.take_relays(user, &relays, env.sent_at_ms);
            }
            Body::History {
                messages,
                sent,
                total,
            } => {
                self.on_history(&messages, (sent, total), |tx| {
                    tx.apply_crypto(update, now)?;
                    if let Some(d) = &own_device {
                        tx.save_own_device(d)?;
                    }
                    Ok(())
                })?;
            }
            Body::GroupOp { .. } | Body::GroupOps { .. } => {
                let raw: Vec<&[u8]> = match &env.body {
                    Body::GroupOp { op } => vec![op.as_slice()],
                    Body::GroupOps { ops } => ops
                        .iter()
                        .take(crate::consts::MAX_OPS_PER_ENVELOPE)
                        .map(|o| o.as_slice())
                        .collect(),
                    _ => Vec::new(),
                };
                let ops: Vec<(GroupId, crate::group::SignedOp)> = raw
                    .into_iter()
                    .filter_map(|b| Self::parse_group_op(&hex, &env, b))
                    .filter(|(group, _)| {
                        // Operations a group's graph can never take in are not kept either.
                        let held = self.groups.by_id.get(group).map_or(0, |g| g.ops.len());
                        let room = held < crate::consts::MAX_HELD_GROUP_OPS;
                        if !room {
                            tracing::warn!(%group, contact = %user, "group holds the most operations it keeps; one more dropped");
                        }
                        room
                    })
                    .collect();
                // The Olm message cannot be read twice: the operations are stored in the
                // transaction that advances the session, then taken in.
                let new = self
                    .store
                    .transaction(|tx| -> Result<Vec<bool>, NodeError> {
                        tx.apply_crypto(update, now)?;
                        if let Some(d) = &own_device {
                            tx.save_own_device(d)?;
                        }
                        let mut new = Vec::with_capacity(ops.len());
                        for (group, op) in &ops {
                            new.push(tx.save_group_op(
                                &group.to_string(),
                                &op.hash,
                                op.to_bytes(),
                                now,
                            )?);
                        }
                        Ok(new)
                    })?;
                for ((group, op), new) in ops.into_iter().zip(new) {
                    if new {
                        self.apply_group_op(group, op)?;
                    }
                }
            }
            Body::SenderKey {
                mut distribution,
                message,
            } => {
                let key = self.on_sender_key(&hex, device, &env.conversation, &distribution);
                // The key's bytes are a secret: wiped as soon as they are read.
                zeroize::Zeroize::zeroize(distribution.as_mut_slice());
                let inbound = match key {
                    Ok(k) => k,
                    Err(e) => {
                        tracing::warn!(contact = %user, "bad sender key dropped: {e}");
                        None
                    }
                };
                // The Olm message cannot be read twice: the group message it carries is kept
                // in the transaction that advances the session, then read from the stash
                // (which its sender's cap does not limit: it is already decrypted mail).
                self.store.transaction(|tx| -> Result<(), NodeError> {
                    let mut updates = update.to_vec();
                    if let Some(k) = &inbound {
                        updates.push(CryptoUpdate::InboundGroup(k));
                    }
                    tx.apply_crypto(&updates, now)?;
                    if let Some(d) = &own_device {
                        tx.save_own_device(d)?;
                    }
                    if let Some(m) = &message {
                        tx.stash_group_message(
                            &device_key,
                            m,
                            now,
                            crate::consts::MAX_GROUP_STASH,
                            crate::consts::MAX_GROUP_STASH,
                        )?;
                    }
                    Ok(())
                })?;
                if inbound.is_some() || message.is_some() {
                    self.retry_stash(Some(&device_key));
                }
            }
        }
        Ok(())
    }
}

impl Engine {
    /// Saves the session state a message moved (and the Olm account when it opened a new
    /// session) when nothing else is stored with it.
    pub(super) fn save_crypto(
        &mut self,
        update: &[CryptoUpdate<'_>],
        own_device: Option<&tern_store::OwnDevice>,
        now: i64,
    ) -> Result<(), NodeError> {
        self.store.transaction(|tx| -> Result<(), NodeError> {
            tx.apply_crypto(update, now)?;
            if let Some(d) = own_device {
                tx.save_own_device(d)?;
            }
            Ok(())
        })
    }

    /// A copy of a text this user sent from another device: stored as an own, sent message
    /// of the conversation with the addressee.
    pub(super) fn store_sync_copy(
        &mut self,
        env: &Envelope,
        contact: &str,
        body: StoreBody,
        device_key: &str,
        update: &[CryptoUpdate<'_>],
        own_device: Option<&tern_store::OwnDevice>,
    ) -> Result<(), NodeError> {
        let now = self.clock.now_ms();
        let conv = ConversationId(contact.to_owned());
        let message = Message {
            id: MessageId(env.id.into_array()),
            conversation: conv.clone(),
            sender_user: self.me.user_hex.clone(),
            sender_device: device_key.to_owned(),
            lamport: env.lamport,
            seq: env.seq,
            sent_at_ms: env.sent_at_ms,
            received_at_ms: now,
            own: true,
            status: Status::Sent,
            body,
            edited_at_ms: None,
        };
        let title = UserId::from_hex(contact)
            .and_then(|u| self.people.contacts.get(&u))
            .map(|c| c.contact.display_name.clone());
        let inserted = self.store.transaction(|tx| -> Result<_, NodeError> {
            tx.ensure_conversation(&conv, ConversationKind::Direct, title.as_deref(), now)?;
            let inserted = tx.record_incoming(&message, update)?;
            if let Some(d) = own_device {
                tx.save_own_device(d)?;
            }
            Ok(inserted)
        })?;
        if inserted == Inserted::New {
            self.observe_lamport(contact, env.lamport)?;
            self.on_media_message(&message);
            // The other device's own sequence runs in the same conversation.
            self.emit(Event::Message {
                message: super::super::message_info(&message),
            });
        }
        Ok(())
    }
}
