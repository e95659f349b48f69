//! The two atomic steps of messaging, and the outbox they feed.
//!
//! Receiving: the message, the session state that decrypted it and the unread count, in one
//! transaction. Sending: the message, the ratchet state that encrypted it and one outbox row
//! per recipient device, in one transaction, committed before anything goes on the wire. A
//! crash before the commit leaves none of it; after, all of it.

use rusqlite::{OptionalExtension, params};

use crate::consts::{MAX_BLOB_BYTES, MAX_PAGE_SIZE};
use crate::error::{Context, ReadError, WriteError};
use crate::messages::{MESSAGE_COLUMNS, RawMessage, check_len, decode, message_id, raw};
use crate::outbox::RowKind;
use crate::sessions::CryptoUpdate;
use crate::store::{Store, Tx};
use crate::types::{
    ConversationId, ConversationKind, Delivery, DueReceipt, Inserted, Message, MessageId,
    OutboxEntry, ReceiptKind, Status,
};

impl Tx<'_> {
    /// Records a decrypted incoming message with the crypto state it moved.
    ///
    /// A message id already stored changes neither the message nor the unread count and
    /// reports [`Inserted::Duplicate`]; the crypto updates are written all the same, because
    /// the decryption already moved the in-memory ratchet and the stored state must follow it.
    pub fn record_incoming(
        &mut self,
        message: &Message,
        updates: &[CryptoUpdate<'_>],
    ) -> Result<Inserted, WriteError> {
        const OP: &str = "record incoming message";
        let inserted = self.insert_message_row(OP, message)?;
        if let Some((conv, _)) = inserted
            && !message.own
            && message.status == Status::Received
        {
            self.bump_unread(OP, conv)?;
        }
        self.apply_crypto(updates, message.received_at_ms)?;
        Ok(if inserted.is_some() {
            Inserted::New
        } else {
            Inserted::Duplicate
        })
    }

    /// Records an outgoing message with the ratchet state that encrypted it and one outbox
    /// row per recipient device, due at `first_attempt_ms`.
    ///
    /// A repeated id reports [`Inserted::Duplicate`] and adds no outbox rows; the crypto
    /// updates are still written, so a ratchet that moved is never stored behind.
    pub fn record_outgoing(
        &mut self,
        message: &Message,
        updates: &[CryptoUpdate<'_>],
        deliveries: &[Delivery],
        first_attempt_ms: i64,
    ) -> Result<Inserted, WriteError> {
        const OP: &str = "record outgoing message";
        let inserted = self.insert_message_row(OP, message)?;
        self.apply_crypto(updates, message.received_at_ms)?;
        let Some((_, rowid)) = inserted else {
            return Ok(Inserted::Duplicate);
        };
        self.insert_outbox_rows(
            OP,
            RowKind::Pairwise,
            Some(rowid),
            deliveries,
            first_attempt_ms,
            message.received_at_ms,
        )?;
        Ok(Inserted::New)
    }

    /// Records an outgoing message that fans out: like [`Tx::record_outgoing`], plus one
    /// `shared` payload stored once for all of `shared_recipients` (user, device), whose
    /// outbox rows refer to it. [`Store::due_deliveries`] returns each of those rows with the
    /// shared payload.
    pub fn record_outgoing_fanout(
        &mut self,
        message: &Message,
        updates: &[CryptoUpdate<'_>],
        deliveries: &[Delivery],
        shared: &[u8],
        shared_recipients: &[(String, String)],
        first_attempt_ms: i64,
    ) -> Result<Inserted, WriteError> {
        const OP: &str = "record outgoing group message";
        let inserted = self.record_outgoing(message, updates, deliveries, first_attempt_ms)?;
        if inserted == Inserted::Duplicate || shared_recipients.is_empty() {
            return Ok(inserted);
        }
        check_len(OP, "shared payload", shared.len(), MAX_BLOB_BYTES)?;
        let rowid = self.message_rowid(OP, message.id)?;
        self.tx
            .prepare_cached("INSERT INTO outbox_shared (message, payload) VALUES (?1, ?2)")
            .and_then(|mut s| s.execute(params![rowid, shared]))
            .write_ctx(OP)?;
        let rows: Vec<Delivery> = shared_recipients
            .iter()
            .map(|(user, device)| Delivery {
                recipient_user: user.clone(),
                recipient_device: device.clone(),
                payload: Vec::new(),
            })
            .collect();
        self.insert_outbox_rows(
            OP,
            RowKind::Fanout,
            Some(rowid),
            &rows,
            first_attempt_ms,
            message.received_at_ms,
        )?;
        Ok(Inserted::New)
    }

    /// Adds outbox rows to a message already stored (a membership operation that is also
    /// sent to members who join later). Rows already there stay as they are.
    pub fn add_outbox_rows(
        &mut self,
        id: MessageId,
        deliveries: &[Delivery],
        first_attempt_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "add outbox rows";
        let rowid = self.message_rowid(OP, id)?;
        self.insert_outbox_rows(
            OP,
            RowKind::Pairwise,
            Some(rowid),
            deliveries,
            first_attempt_ms,
            first_attempt_ms,
        )?;
        Ok(())
    }

    /// Like [`Tx::add_outbox_rows`], but a row already queued for the same message and
    /// device is an error instead of being kept: the new ciphertext would be dropped while the
    /// ratchet that made it moved on (the caller then sends it later, when that row went).
    pub fn add_outbox_rows_new(
        &mut self,
        id: MessageId,
        deliveries: &[Delivery],
        first_attempt_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "add new outbox rows";
        let rowid = self.message_rowid(OP, id)?;
        let kept = self.insert_outbox_rows(
            OP,
            RowKind::Pairwise,
            Some(rowid),
            deliveries,
            first_attempt_ms,
            first_attempt_ms,
        )?;
        if kept > 0 {
            // The transaction rolls back: nothing of it, the ratchet state included, stays.
            return Err(WriteError::OutOfRange {
                op: OP,
                field: "recipient_device",
                reason: "a row of this message is still queued for that device",
            });
        }
        Ok(())
    }

    /// Removes an acknowledged outbox row. When the last row of a pending message goes, the
    /// message becomes [`Status::Sent`]. Returns the rows still waiting for that message.
    pub fn ack_delivery(
        &mut self,
        id: MessageId,
        recipient_device: &str,
    ) -> Result<u64, WriteError> {
        self.ack_deliveries(id, &[recipient_device.to_owned()])
    }

    /// Removes the acknowledged outbox rows of one message for several devices (a group
    /// fan-out); like [`Tx::ack_delivery`], the last row going makes the message
    /// [`Status::Sent`]. Returns the rows still waiting for that message.
    pub fn ack_deliveries(
        &mut self,
        id: MessageId,
        recipient_devices: &[String],
    ) -> Result<u64, WriteError> {
        const OP: &str = "acknowledge deliveries";
        let rowid = self.message_rowid(OP, id)?;
        {
            let mut stmt = self
                .tx
                .prepare_cached("DELETE FROM outbox WHERE message = ?1 AND recipient_device = ?2")
                .write_ctx(OP)?;
            for device in recipient_devices {
                stmt.execute(params![rowid, device]).write_ctx(OP)?;
            }
        }
        Ok(self.settle_if_sent(OP, rowid, id)?.remaining)
    }

    /// After rows of the message at `rowid` went or were taken by a relay: when none is
    /// left, its shared payload goes; when every row left was taken by at least one relay
    /// (each recipient device's copy is held by a mailbox or the device), it becomes
    /// [`Status::Sent`], while the rows wait for their other relays.
    pub(crate) fn settle_if_sent(
        &mut self,
        op: &'static str,
        rowid: i64,
        id: MessageId,
    ) -> Result<Settled, WriteError> {
        let (remaining, untaken): (i64, i64) = self
            .tx
            .prepare_cached(
                "SELECT count(*), coalesce(sum(NOT EXISTS (SELECT 1 FROM outbox_relays r \
                 WHERE r.row = o.id AND r.taken = 1)), 0) FROM outbox o WHERE o.message = ?1",
            )
            .and_then(|mut s| s.query_row([rowid], |r| Ok((r.get(0)?, r.get(1)?))))
            .write_ctx(op)?;
        if remaining == 0 {
            // No row is left to send a shared payload: it goes with the last one.
            self.tx
                .prepare_cached("DELETE FROM outbox_shared WHERE message = ?1")
                .and_then(|mut s| s.execute([rowid]))
                .write_ctx(op)?;
        }
        let sent_now = untaken == 0 && self.advance_status(id, Status::Sent)?;
        Ok(Settled {
            remaining: u64::try_from(remaining).unwrap_or(0),
            sent_now,
        })
    }

    /// Counts an attempt on an outbox row and sets when it is due next.
    pub fn reschedule_delivery(
        &mut self,
        id: MessageId,
        recipient_device: &str,
        next_attempt_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "reschedule delivery";
        let rowid = self.message_rowid(OP, id)?;
        self.tx
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?3 WHERE message = ?1 AND recipient_device = ?2",
            )
            .and_then(|mut s| s.execute(params![rowid, recipient_device, next_attempt_ms]))
            .write_ctx(OP)?;
        Ok(())
    }

    /// Makes every group fan-out row for `recipient_device` due by `now_ms` (the device came
    /// online and drains its mailboxes: what waits for it goes now, not after its backoff).
    /// Its attempts stay counted. Returns how many rows were moved up.
    pub fn fanout_due_now(
        &mut self,
        recipient_device: &str,
        now_ms: i64,
    ) -> Result<usize, WriteError> {
        self.tx
            .prepare_cached(
                "UPDATE outbox SET next_attempt_ms = ?2 \
                 WHERE kind = 1 /* Fanout */ AND recipient_device = ?1 AND next_attempt_ms > ?2",
            )
            .and_then(|mut s| s.execute(params![recipient_device, now_ms]))
            .write_ctx("move up fan-out rows")
    }

    /// Encrypts later: gives a message stored [`Status::Pending`] with no outbox rows (stored
    /// before it could be encrypted, see [`Store::awaiting_encryption`]) its ratchet state
    /// and one outbox row per recipient device, in this transaction.
    ///
    /// Returns `false`, writing nothing, when the message is not awaiting encryption any
    /// more (it already has outbox rows or moved past pending): the caller must then drop
    /// the ciphertexts and the ratchet state that made them, so nothing is encrypted twice.
    pub fn add_deliveries(
        &mut self,
        id: MessageId,
        updates: &[CryptoUpdate<'_>],
        deliveries: &[Delivery],
        first_attempt_ms: i64,
    ) -> Result<bool, WriteError> {
        const OP: &str = "add deliveries";
        let rowid = self.message_rowid(OP, id)?;
        let waiting: bool = self
            .tx
            .prepare_cached(
                "SELECT own = 1 AND status = ?2 AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.message = ?1) \
                 FROM messages WHERE rowid = ?1",
            )
            .and_then(|mut s| s.query_row(params![rowid, Status::Pending.code()], |r| r.get(0)))
            .write_ctx(OP)?;
        if !waiting {
            return Ok(false);
        }
        self.apply_crypto(updates, first_attempt_ms)?;
        self.insert_outbox_rows(
            OP,
            RowKind::Pairwise,
            Some(rowid),
            deliveries,
            first_attempt_ms,
            first_attempt_ms,
        )?;
        Ok(true)
    }

    /// Records that `recipient_user` is owed a receipt of `kind` for each message in `ids`
    /// (in the transaction that stores or reads them, so a crash cannot lose it). Already
    /// owed is a no-op. [`Tx::receipts_delivered`] settles them.
    pub fn owe_receipts(
        &mut self,
        recipient_user: &str,
        kind: ReceiptKind,
        ids: &[MessageId],
        now_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "owe receipts";
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO receipts_due (message_id, kind, recipient_user, created_at_ms) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )
            .write_ctx(OP)?;
        for id in ids {
            stmt.execute(params![
                id.0.as_slice(),
                kind.code(),
                recipient_user,
                now_ms
            ])
            .write_ctx(OP)?;
        }
        Ok(())
    }

    /// Settles owed receipts once they have been delivered.
    pub fn receipts_delivered(
        &mut self,
        kind: ReceiptKind,
        ids: &[MessageId],
    ) -> Result<(), WriteError> {
        const OP: &str = "settle receipts";
        let mut stmt = self
            .tx
            .prepare_cached("DELETE FROM receipts_due WHERE message_id = ?1 AND kind = ?2")
            .write_ctx(OP)?;
        for id in ids {
            stmt.execute(params![id.0.as_slice(), kind.code()])
                .write_ctx(OP)?;
        }
        Ok(())
    }

    /// One outbox row of `kind` per delivery of the message at `rowid` (`None`: a control row
    /// of no message). A row already there for the same message and recipient device is left
    /// as it is; returns how many were left so.
    pub(crate) fn insert_outbox_rows(
        &mut self,
        op: &'static str,
        kind: RowKind,
        rowid: Option<i64>,
        deliveries: &[Delivery],
        next_attempt_ms: i64,
        created_at_ms: i64,
    ) -> Result<usize, WriteError> {
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO outbox (message, kind, recipient_device, recipient_user, payload, next_attempt_ms, created_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
            )
            .write_ctx(op)?;
        let mut kept = 0;
        for d in deliveries {
            check_len(op, "outbox payload", d.payload.len(), MAX_BLOB_BYTES)?;
            let inserted = stmt
                .execute(params![
                    rowid,
                    kind.code(),
                    d.recipient_device,
                    d.recipient_user,
                    d.payload,
                    next_attempt_ms,
                    created_at_ms
                ])
                .write_ctx(op)?;
            if inserted == 0 {
                kept += 1;
            }
        }
        Ok(kept)
    }

    fn message_rowid(&self, op: &'static str, id: MessageId) -> Result<i64, WriteError> {
        self.tx
            .prepare_cached("SELECT rowid FROM messages WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.0.as_slice()], |r| r.get(0)).optional())
            .write_ctx(op)?
            .ok_or_else(|| WriteError::UnknownMessage {
                op,
                message: id.to_string(),
            })
    }
}

/// An outbox row as read: message id, recipient user and device, payload, attempts, due time.
type RawOutbox = (Vec<u8>, String, String, Vec<u8>, i64, i64);

/// What [`Store::awaiting_encryption`] and [`Store::awaiting_conversations`] select from:
/// this device's own pending texts to direct conversations with no outbox row. `own = 1 AND
/// status = 0` are literals: they are the condition of the partial index `messages_awaiting`
/// (named, so a plan that would walk a conversation's whole history fails instead).
const AWAITING_FROM: &str = "FROM messages m INDEXED BY messages_awaiting \
     JOIN conversations c ON c.rowid = m.conversation \
     WHERE m.own = 1 AND m.status = 0 /* Pending */ AND m.sender_device = ?1 \
     AND c.kind = 0 /* Direct */ \
     AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.message = m.rowid)";

/// The statement of [`Store::awaiting_encryption`].
pub(crate) fn awaiting_sql() -> String {
    const _: () = assert!(Status::Pending.code() == 0);
    const _: () = assert!(ConversationKind::Direct.code() == 0);
    format!(
        "SELECT {MESSAGE_COLUMNS} {AWAITING_FROM} AND c.conversation_id = ?2 \
         ORDER BY m.lamport, m.seq, m.rowid LIMIT ?3"
    )
}

/// The statement of [`Store::awaiting_conversations`].
pub(crate) fn awaiting_conversations_sql() -> String {
    format!("SELECT DISTINCT c.conversation_id {AWAITING_FROM} ORDER BY c.conversation_id")
}

impl Store {
    /// [`Tx::record_incoming`] in a transaction of its own.
    pub fn record_incoming(
        &mut self,
        message: &Message,
        updates: &[CryptoUpdate<'_>],
    ) -> Result<Inserted, WriteError> {
        self.transaction(|tx| tx.record_incoming(message, updates))
    }

    /// [`Tx::record_outgoing`] in a transaction of its own.
    pub fn record_outgoing(
        &mut self,
        message: &Message,
        updates: &[CryptoUpdate<'_>],
        deliveries: &[Delivery],
        first_attempt_ms: i64,
    ) -> Result<Inserted, WriteError> {
        self.transaction(|tx| tx.record_outgoing(message, updates, deliveries, first_attempt_ms))
    }

    /// Own messages from `sender_device` to the direct conversation `conversation` stored
    /// [`Status::Pending`] without any outbox row: stored before they could be encrypted (no
    /// session with the recipient yet and its relay unreachable). Oldest first in display
    /// order, at most `limit` (capped at [`MAX_PAGE_SIZE`]). [`Tx::add_deliveries`] takes
    /// them out of this list. A group message with no outbox row is not one of them: what it
    /// waits for is owed to its members and given by the group's own bookkeeping.
    pub fn awaiting_encryption(
        &self,
        sender_device: &str,
        conversation: &ConversationId,
        limit: u32,
    ) -> Result<Vec<Message>, ReadError> {
        const OP: &str = "read messages awaiting encryption";
        let rows: Vec<RawMessage> = self
            .conn
            .prepare_cached(&awaiting_sql())
            .and_then(|mut s| {
                s.query_map(
                    params![sender_device, conversation.0, limit.clamp(1, MAX_PAGE_SIZE)],
                    raw,
                )?
                .collect()
            })
            .read_ctx(OP)?;
        rows.into_iter().map(|r| decode(OP, r)).collect()
    }

    /// The direct conversations holding messages [`Store::awaiting_encryption`] returns,
    /// ordered by id. There is at most one per contact; a node reads them once at start and
    /// keeps track of them from there.
    pub fn awaiting_conversations(
        &self,
        sender_device: &str,
    ) -> Result<Vec<ConversationId>, ReadError> {
        self.conn
            .prepare_cached(&awaiting_conversations_sql())
            .and_then(|mut s| {
                s.query_map([sender_device], |r| r.get(0).map(ConversationId))?
                    .collect()
            })
            .read_ctx("read conversations awaiting encryption")
    }

    /// Receipts owed and not yet delivered, oldest first, at most `limit` (capped at
    /// [`MAX_PAGE_SIZE`]).
    pub fn due_receipts(&self, limit: u32) -> Result<Vec<DueReceipt>, ReadError> {
        const OP: &str = "read owed receipts";
        let rows: Vec<(Vec<u8>, i64, String)> = self
            .conn
            .prepare_cached(
                "SELECT message_id, kind, recipient_user FROM receipts_due \
                 ORDER BY created_at_ms, recipient_user, kind LIMIT ?1",
            )
            .and_then(|mut s| {
                s.query_map([limit.clamp(1, MAX_PAGE_SIZE)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .read_ctx(OP)?;
        rows.into_iter()
            .map(|(id, kind, recipient_user)| {
                Ok(DueReceipt {
                    recipient_user,
                    kind: ReceiptKind::from_code(kind).ok_or_else(|| ReadError::Invalid {
                        op: OP,
                        what: "receipt kind",
                        reason: kind.to_string(),
                    })?,
                    message_id: message_id(OP, &id)?,
                })
            })
            .collect()
    }

    /// Outbox rows of messages due at `now_ms`, earliest first, at most `limit` (capped at
    /// [`MAX_PAGE_SIZE`]); a fan-out row comes with its shared payload.
    pub fn due_deliveries(&self, now_ms: i64, limit: u32) -> Result<Vec<OutboxEntry>, ReadError> {
        self.due_rows("read due deliveries", now_ms, limit, false)
    }

    /// Fan-out rows (those sharing one payload, [`Tx::record_outgoing_fanout`]) due at
    /// `now_ms`, earliest first, at most `limit` (capped at [`MAX_PAGE_SIZE`]). Each comes
    /// with the shared payload.
    pub fn due_fanout(&self, now_ms: i64, limit: u32) -> Result<Vec<OutboxEntry>, ReadError> {
        self.due_rows("read due fan-out rows", now_ms, limit, true)
    }

    fn due_rows(
        &self,
        op: &'static str,
        now_ms: i64,
        limit: u32,
        fanout_only: bool,
    ) -> Result<Vec<OutboxEntry>, ReadError> {
        let rows: Vec<RawOutbox> = self
            .conn
            .prepare_cached(
                "SELECT m.id, o.recipient_user, o.recipient_device, \
                 CASE WHEN o.kind = 1 /* Fanout */ THEN coalesce(s.payload, o.payload) ELSE o.payload END, \
                 o.attempts, o.next_attempt_ms \
                 FROM outbox o JOIN messages m ON m.rowid = o.message \
                 LEFT JOIN outbox_shared s ON s.message = o.message WHERE o.next_attempt_ms <= ?1 \
                 AND (?3 = 0 OR (o.kind = 1 /* Fanout */ AND s.message IS NOT NULL)) \
                 ORDER BY o.next_attempt_ms, o.rowid LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![now_ms, limit.clamp(1, MAX_PAGE_SIZE), fanout_only],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
                )?
                .collect()
            })
            .read_ctx(op)?;
        rows.into_iter()
            .map(
                |(id, recipient_user, recipient_device, payload, attempts, next_attempt_ms)| {
                    Ok(OutboxEntry {
                        message_id: message_id(op, &id)?,
                        delivery: Delivery {
                            recipient_user,
                            recipient_device,
                            payload,
                        },
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        next_attempt_ms,
                    })
                },
            )
            .collect()
    }
}

/// Where a message's outbox rows stand after some went or were taken ([`Tx::settle_if_sent`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settled {
    /// Rows still waiting (for a relay that has not taken them, or the device).
    pub(crate) remaining: u64,
    /// Whether the message became [`Status::Sent`] just now.
    pub(crate) sent_now: bool,
}
