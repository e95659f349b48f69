//! The whole history, moved to a newly linked device.
//!
//! The provisioning record carries only the newest messages (it must fit one mailbox
//! message), so the device that links another also owes it everything it holds, up to the
//! newest message at that moment (`history_owed` in the store, written when the device is
//! added). Once the new device is up and a session with it can be had, the history goes in
//! chunks (`Body::History`, at most [`HISTORY_CHUNK_BYTES`] of messages each) over the
//! pairwise session, queued in the new device's lane in the order the messages were stored,
//! each chunk in one transaction with the ratchet state and the moved mark: a crash of
//! either device resumes where it stopped. At most [`HISTORY_LANE_WINDOW`] chunks wait in
//! the lane at once, so a long history never crowds out what is sent meanwhile, and the
//! new device is usable from the start: chunks are mail like any other. The new device
//! stores each message it does not hold yet and reports progress (`history` events and
//! `status.history`).

use serde_bytes::{ByteArray, ByteBuf};
use tern_crypto::DeviceId;
use tern_store::{ConversationKind, Message};

use super::{Engine, send::random_id};
use crate::{
    device_link::BundleMessage,
    envelope::{Body, Conversation, Envelope, MAX_HISTORY_CHUNK_MESSAGES},
    error::NodeError,
    types::{Event, HistoryInfo, HistorySending},
};

/// Plaintext messages in one chunk stop growing past this (a relay takes 64 KiB of
/// ciphertext; one text is at most 32 KiB).
const HISTORY_CHUNK_BYTES: usize = 40 * 1024;
/// Chunks waiting in the new device's lane at most.
const HISTORY_LANE_WINDOW: usize = 16;
/// Messages read from the store for one chunk at most.
const HISTORY_READ: u32 = 500;

/// A stored message as a history chunk carries it.
pub(crate) fn bundle_message(
    m: &Message,
    kind: ConversationKind,
    title: Option<String>,
) -> BundleMessage {
    let media = matches!(m.body, tern_store::Body::Media { .. });
    let (text, data) = match &m.body {
        tern_store::Body::Text(t) => (Some(t.clone()), None),
        tern_store::Body::Media { data, text } => {
            (Some(text.clone()), Some(ByteBuf::from(data.clone())))
        }
        tern_store::Body::Structured { data, text } => {
            (text.clone(), Some(ByteBuf::from(data.clone())))
        }
    };
    BundleMessage {
        id: ByteArray::new(m.id.0),
        conversation: m.conversation.0.clone(),
        group: kind == ConversationKind::Group,
        title,
        sender_user: m.sender_user.clone(),
        sender_device: m.sender_device.clone(),
        lamport: m.lamport,
        seq: m.seq,
        sent_at_ms: m.sent_at_ms,
        own: m.own,
        status: crate::types::MessageStatus::from(m.status)
            .as_str()
            .to_owned(),
        text,
        data,
        media,
    }
}

impl Engine {
    /// Owes `device` (just linked) the whole history held now.
    pub(crate) fn owe_history(&mut self, device: &str) -> Result<(), NodeError> {
        let now = self.clock.now_ms();
        self.store.transaction(|tx| tx.owe_history(device, now))?;
        self.handover.history_due = true;
        Ok(())
    }

    /// Queues the next chunks of history owed to linked devices, as far as their lanes have
    /// room. A device that cannot be reached yet (not up, no prekey) is tried again after a
    /// backoff.
    pub(crate) fn export_history(&mut self) {
        if !self.handover.history_due
            || self
                .handover
                .history_retry
                .is_some_and(|t| t > self.clock.now())
        {
            return;
        }
        let owed = match self.store.history_owed() {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("reading owed history failed: {e}");
                return;
            }
        };
        if owed.is_empty() {
            self.handover.history_due = false;
            return;
        }
        let mut failed = false;
        for o in owed {
            if let Err(e) = self.export_to(&o) {
                tracing::debug!(device = %o.device, "history not sent yet: {e}");
                failed = true;
            }
        }
        if failed {
            self.handover.history_attempts = self.handover.history_attempts.saturating_add(1);
            self.handover.history_retry =
                Some(self.clock.now() + super::send::backoff(self.handover.history_attempts));
        } else {
            self.handover.history_attempts = 0;
            self.handover.history_retry = None;
        }
    }

    fn export_to(&mut self, owed: &tern_store::HistoryOwed) -> Result<(), NodeError> {
        let Some(target) = DeviceId::from_peer_id_string(&owed.device) else {
            self.store
                .transaction(|tx| tx.settle_history(&owed.device))?;
            return Ok(());
        };
        if !self
            .me
            .keys
            .device_list
            .list()
            .active()
            .any(|e| e.device_id() == target)
        {
            // Revoked since: nothing more goes to it.
            self.store
                .transaction(|tx| tx.settle_history(&owed.device))?;
            return Ok(());
        }
        let queued = usize::try_from(self.store.lane_depth(&owed.device)?).unwrap_or(usize::MAX);
        if queued >= HISTORY_LANE_WINDOW {
            return Ok(());
        }
        let me = self.me.user;
        // The session with the new device, set up (its prekey claimed) only the first time:
        // other own devices are not asked for on every round.
        let curve = self
            .me
            .keys
            .device_list
            .list()
            .active_certificate(&target)
            .map(|c| c.curve25519)
            .ok_or_else(|| NodeError::invalid("the new device has no certificate"))?;
        let held = self.load_sessions(&target, curve)?;
        let mut sessions: Vec<_> = if held.has_session() {
            vec![(target, held)]
        } else {
            self.sessions_reachable(&me)?
                .0
                .into_iter()
                .filter(|(d, _)| *d == target)
                .collect()
        };
        if sessions.is_empty() {
            return Err(NodeError::unreachable("no session with the new device yet"));
        }
        let (mut after, mut sent) = (owed.after_row, owed.sent);
        let mut titles: std::collections::HashMap<String, (ConversationKind, Option<String>)> =
            std::collections::HashMap::new();
        for _ in queued..HISTORY_LANE_WINDOW {
            let batch = self
                .store
                .messages_between(after, owed.last_row, HISTORY_READ)?;
            if batch.is_empty() {
                self.store
                    .transaction(|tx| tx.settle_history(&owed.device))?;
                return Ok(());
            }
            let mut chunk = Vec::new();
            let mut size = 0;
            let mut last = after;
            for (row, m) in &batch {
                if !titles.contains_key(&m.conversation.0) {
                    let c = self.store.conversation(&m.conversation)?;
                    titles.insert(
                        m.conversation.0.clone(),
                        c.map(|c| (c.kind, c.title))
                            .unwrap_or((ConversationKind::Direct, None)),
                    );
                }
                let (kind, title) = titles[&m.conversation.0].clone();
                let item = bundle_message(m, kind, title);
                let len = item.text.as_ref().map_or(0, String::len)
                    + item.data.as_ref().map_or(0, |d| d.len())
                    + 200;
                if !chunk.is_empty()
                    && (size + len > HISTORY_CHUNK_BYTES
                        || chunk.len() >= MAX_HISTORY_CHUNK_MESSAGES)
                {
                    break;
                }
                size += len;
                chunk.push(item);
                last = *row;
            }
            sent += chunk.len() as u64;
            let env = Envelope {
                id: ByteArray::new(random_id()?),
                conversation: Conversation::Direct {
                    to: ByteArray::new(*self.me.user.as_bytes()),
                },
                sender_user: ByteArray::new(*self.me.user.as_bytes()),
                sender_device: ByteArray::new(*self.me.keys.device.device_id().as_bytes()),
                lamport: 0,
                seq: 0,
                sent_at_ms: self.clock.now_ms(),
                body: Body::History {
                    messages: chunk,
                    sent,
                    total: owed.total,
                },
                lists: Some(self.list_versions(Some(&me))),
                grant: None,
                heads: Vec::new(),
            };
            let mut env = env;
            let mut deliveries = Vec::new();
            let mut pickles = Vec::new();
            super::send::encrypt_each(
                &mut sessions,
                &mut env,
                &self.grants,
                |_| me,
                &mut deliveries,
                &mut pickles,
            )?;
            let updates = super::send::crypto_updates(&pickles);
            let now = self.clock.now_ms();
            let device = owed.device.clone();
            self.store.transaction(|tx| -> Result<(), NodeError> {
                tx.apply_crypto(&updates, now)?;
                tx.queue_control(&deliveries, now)?;
                tx.history_progress(&device, last, sent)?;
                Ok(())
            })?;
            self.kick_lanes_for(&deliveries);
            after = last;
            if after >= owed.last_row {
                tracing::info!(device = %owed.device, sent, "the whole history is queued for the new device");
                return Ok(());
            }
        }
        Ok(())
    }

    /// A chunk of history from another device of this user: each message not held yet is
    /// stored, with the session state (`update`), in one transaction.
    pub(crate) fn on_history(
        &mut self,
        messages: &[BundleMessage],
        (sent, total): (u64, u64),
        save: impl FnOnce(&mut tern_store::Tx<'_>) -> Result<(), NodeError>,
    ) -> Result<(), NodeError> {
        let now = self.clock.now_ms();
        self.store.transaction(|tx| -> Result<(), NodeError> {
            save(tx)?;
            for m in messages {
                let message = crate::device_link::moved_message(m, now, tx)?;
                tx.insert_message(&message)?;
            }
            Ok(())
        })?;
        self.handover.history_in = (sent.max(self.handover.history_in.0), total);
        self.emit(Event::History {
            received: self.handover.history_in.0,
            total,
        });
        Ok(())
    }

    /// What `status` shows of moving history.
    pub(crate) fn history_info(&self) -> Result<HistoryInfo, NodeError> {
        Ok(HistoryInfo {
            received: self.handover.history_in.0,
            total: self.handover.history_in.1,
            sending: self
                .store
                .history_owed()?
                .into_iter()
                .map(|o| HistorySending {
                    device_id: o.device,
                    sent: o.sent,
                    total: o.total,
                })
                .collect(),
        })
    }
}
