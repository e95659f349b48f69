//! Messages: insert (with duplicate detection), edit, delete, status, and history paging.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::consts::{DEFAULT_PAGE_SIZE, MAX_BLOB_BYTES, MAX_PAGE_SIZE, MAX_TEXT_BYTES};
use crate::error::{Context, ReadError, WriteError};
use crate::store::{Store, Tx};
use crate::types::{Body, ConversationId, Inserted, Message, MessageId, Page, Status};

/// `body_kind` codes.
const BODY_TEXT: i64 = 0;
const BODY_STRUCTURED: i64 = 1;
const BODY_MEDIA: i64 = 2;

/// Columns every message query selects, in the order [`decode`] reads them.
pub(crate) const MESSAGE_COLUMNS: &str = "m.id, c.conversation_id, m.sender_user, m.sender_device, \
     m.lamport, m.seq, m.sent_at_ms, m.received_at_ms, m.own, m.status, m.body_kind, m.body_text, \
     m.body_data, m.edited_at_ms";

/// The display-order key of a message; compared as a tuple.
pub(crate) type OrderKey = (i64, String, String, i64, Vec<u8>);

pub(crate) fn to_i64(op: &'static str, field: &'static str, v: u64) -> Result<i64, WriteError> {
    i64::try_from(v).map_err(|_| WriteError::OutOfRange {
        op,
        field,
        reason: "larger than 2^63 - 1",
    })
}

pub(crate) fn check_len(
    op: &'static str,
    field: &'static str,
    len: usize,
    max: usize,
) -> Result<(), WriteError> {
    if len > max {
        return Err(WriteError::OutOfRange {
            op,
            field,
            reason: "longer than the store's limit",
        });
    }
    Ok(())
}

/// Raw column values of a message row, decoded into a [`Message`] outside rusqlite's closure.
pub(crate) struct RawMessage {
    id: Vec<u8>,
    conversation: String,
    sender_user: String,
    sender_device: String,
    lamport: i64,
    seq: i64,
    sent_at_ms: i64,
    received_at_ms: i64,
    own: bool,
    status: i64,
    body_kind: i64,
    body_text: Option<String>,
    body_data: Option<Vec<u8>>,
    edited_at_ms: Option<i64>,
}

pub(crate) fn raw(row: &Row<'_>) -> rusqlite::Result<RawMessage> {
    Ok(RawMessage {
        id: row.get(0)?,
        conversation: row.get(1)?,
        sender_user: row.get(2)?,
        sender_device: row.get(3)?,
        lamport: row.get(4)?,
        seq: row.get(5)?,
        sent_at_ms: row.get(6)?,
        received_at_ms: row.get(7)?,
        own: row.get(8)?,
        status: row.get(9)?,
        body_kind: row.get(10)?,
        body_text: row.get(11)?,
        body_data: row.get(12)?,
        edited_at_ms: row.get(13)?,
    })
}

pub(crate) fn message_id(op: &'static str, bytes: &[u8]) -> Result<MessageId, ReadError> {
    let arr: [u8; 16] = bytes.try_into().map_err(|_| ReadError::Invalid {
        op,
        what: "message id",
        reason: format!("{} bytes, expected 16", bytes.len()),
    })?;
    Ok(MessageId(arr))
}

pub(crate) fn decode(op: &'static str, r: RawMessage) -> Result<Message, ReadError> {
    let invalid = |what, reason: String| ReadError::Invalid { op, what, reason };
    let status =
        Status::from_code(r.status).ok_or_else(|| invalid("status", r.status.to_string()))?;
    let body = match r.body_kind {
        BODY_TEXT => Body::Text(
            r.body_text
                .ok_or_else(|| invalid("body", "text body without text".into()))?,
        ),
        BODY_STRUCTURED => Body::Structured {
            data: r.body_data.unwrap_or_default(),
            text: r.body_text,
        },
        BODY_MEDIA => Body::Media {
            data: r.body_data.unwrap_or_default(),
            text: r.body_text.unwrap_or_default(),
        },
        other => return Err(invalid("body kind", other.to_string())),
    };
    let unsigned = |what, v: i64| u64::try_from(v).map_err(|_| invalid(what, v.to_string()));
    Ok(Message {
        id: message_id(op, &r.id)?,
        conversation: ConversationId(r.conversation),
        sender_user: r.sender_user,
        sender_device: r.sender_device,
        lamport: unsigned("lamport", r.lamport)?,
        seq: unsigned("seq", r.seq)?,
        sent_at_ms: r.sent_at_ms,
        received_at_ms: r.received_at_ms,
        own: r.own,
        status,
        body,
        edited_at_ms: r.edited_at_ms,
    })
}

pub(crate) fn conversation_rowid(
    conn: &Connection,
    id: &ConversationId,
) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT rowid FROM conversations WHERE conversation_id = ?1")?
        .query_row([&id.0], |r| r.get(0))
        .optional()
}

impl Tx<'_> {
    /// The rowid of a stored conversation, or [`WriteError::UnknownConversation`] for `op`.
    pub(crate) fn known_conversation(
        &self,
        op: &'static str,
        id: &ConversationId,
    ) -> Result<i64, WriteError> {
        conversation_rowid(&self.tx, id)
            .write_ctx(op)?
            .ok_or_else(|| WriteError::UnknownConversation {
                op,
                conversation: id.0.clone(),
            })
    }
}

fn order_key_of(conn: &Connection, rowid: i64) -> rusqlite::Result<Option<OrderKey>> {
    conn.prepare_cached(
        "SELECT lamport, sender_user, sender_device, seq, id FROM messages WHERE rowid = ?1",
    )?
    .query_row([rowid], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
    })
    .optional()
}

impl Tx<'_> {
    /// Stores a message and moves its conversation's last message and activity. Does not
    /// touch unread counts (history copied from another device is not unread): that is
    /// [`Tx::record_incoming`]'s job. An id already stored is a no-op reporting
    /// [`Inserted::Duplicate`].
    pub fn insert_message(&mut self, m: &Message) -> Result<Inserted, WriteError> {
        Ok(match self.insert_message_row("insert message", m)? {
            Some(_) => Inserted::New,
            None => Inserted::Duplicate,
        })
    }

    /// Inserts the row and updates the conversation; `None` for a duplicate id.
    pub(crate) fn insert_message_row(
        &mut self,
        op: &'static str,
        m: &Message,
    ) -> Result<Option<(i64, i64)>, WriteError> {
        let conv = self.known_conversation(op, &m.conversation)?;
        let (kind, text, data) = match &m.body {
            Body::Text(t) => (BODY_TEXT, Some(t.as_str()), None),
            Body::Structured { data, text } => {
                (BODY_STRUCTURED, text.as_deref(), Some(data.as_slice()))
            }
            Body::Media { data, text } => (BODY_MEDIA, Some(text.as_str()), Some(data.as_slice())),
        };
        check_len(op, "body text", text.map_or(0, str::len), MAX_TEXT_BYTES)?;
        check_len(op, "body data", data.map_or(0, <[u8]>::len), MAX_BLOB_BYTES)?;
        let lamport = to_i64(op, "lamport", m.lamport)?;
        let seq = to_i64(op, "seq", m.seq)?;
        let changed = self
            .tx
            .prepare_cached(
                "INSERT INTO messages (id, conversation, sender_user, sender_device, lamport, seq, \
                 sent_at_ms, received_at_ms, own, status, body_kind, body_text, body_data, edited_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    m.id.0.as_slice(),
                    conv,
                    m.sender_user,
                    m.sender_device,
                    lamport,
                    seq,
                    m.sent_at_ms,
                    m.received_at_ms,
                    m.own,
                    m.status.code(),
                    kind,
                    text,
                    data,
                    m.edited_at_ms,
                ])
            })
            .write_ctx(op)?;
        if changed == 0 {
            return Ok(None);
        }
        let rowid = self.tx.last_insert_rowid();
        self.touch_conversation(op, conv, rowid, m)?;
        Ok(Some((conv, rowid)))
    }

    /// Makes `rowid` the conversation's last message if it is newest in display order, and
    /// moves last activity forward.
    fn touch_conversation(
        &mut self,
        op: &'static str,
        conv: i64,
        rowid: i64,
        m: &Message,
    ) -> Result<(), WriteError> {
        let current: Option<i64> = self
            .tx
            .prepare_cached("SELECT last_message FROM conversations WHERE rowid = ?1")
            .and_then(|mut s| s.query_row([conv], |r| r.get(0)))
            .write_ctx(op)?;
        let newer = match current {
            None => true,
            Some(last) => match order_key_of(&self.tx, last).write_ctx(op)? {
                None => true,
                Some(last_key) => {
                    let key: OrderKey = (
                        to_i64(op, "lamport", m.lamport)?,
                        m.sender_user.clone(),
                        m.sender_device.clone(),
                        to_i64(op, "seq", m.seq)?,
                        m.id.0.to_vec(),
                    );
                    key > last_key
                }
            },
        };
        self.tx
            .prepare_cached(
                "UPDATE conversations SET \
                 last_message = CASE WHEN ?2 THEN ?3 ELSE last_message END, \
                 last_activity_ms = max(last_activity_ms, ?4) WHERE rowid = ?1",
            )
            .and_then(|mut s| s.execute(params![conv, newer, rowid, m.received_at_ms]))
            .write_ctx(op)?;
        Ok(())
    }

    /// Replaces a message's text (the search index follows).
    pub fn edit_text(&mut self, id: MessageId, text: &str, now_ms: i64) -> Result<(), WriteError> {
        const OP: &str = "edit message";
        check_len(OP, "body text", text.len(), MAX_TEXT_BYTES)?;
        let n = self
            .tx
            .prepare_cached("UPDATE messages SET body_text = ?2, edited_at_ms = ?3 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id.0.as_slice(), text, now_ms]))
            .write_ctx(OP)?;
        if n == 0 {
            return Err(WriteError::UnknownMessage {
                op: OP,
                message: id.to_string(),
            });
        }
        Ok(())
    }

    /// Deletes a message (its outbox rows and index entry with it). Returns whether it existed.
    pub fn delete_message(&mut self, id: MessageId) -> Result<bool, WriteError> {
        const OP: &str = "delete message";
        let found: Option<(i64, i64)> = self
            .tx
            .prepare_cached("SELECT rowid, conversation FROM messages WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([id.0.as_slice()], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .write_ctx(OP)?;
        let Some((rowid, conv)) = found else {
            return Ok(false);
        };
        self.tx
            .prepare_cached("DELETE FROM messages WHERE rowid = ?1")
            .and_then(|mut s| s.execute([rowid]))
            .write_ctx(OP)?;
        // If it was the conversation's last message, the newest remaining one takes its place.
        self.tx
            .prepare_cached(
                "UPDATE conversations SET last_message = (SELECT rowid FROM messages WHERE conversation = ?1 \
                 ORDER BY lamport DESC, sender_user DESC, sender_device DESC, seq DESC, id DESC LIMIT 1) \
                 WHERE rowid = ?1 AND last_message = ?2",
            )
            .and_then(|mut s| s.execute([conv, rowid]))
            .write_ctx(OP)?;
        Ok(true)
    }

    /// Moves a message's status forward (Pending → Sent → Delivered → Read); a step backwards
    /// (a late "sent" after "read") is ignored. Returns whether the status changed.
    pub fn advance_status(&mut self, id: MessageId, to: Status) -> Result<bool, WriteError> {
        const OP: &str = "advance message status";
        let current: Option<i64> = self
            .tx
            .prepare_cached("SELECT status FROM messages WHERE id = ?1")
            .and_then(|mut s| s.query_row([id.0.as_slice()], |r| r.get(0)).optional())
            .write_ctx(OP)?;
        let current = current.ok_or_else(|| WriteError::UnknownMessage {
            op: OP,
            message: id.to_string(),
        })?;
        let current = Status::from_code(current).ok_or(WriteError::OutOfRange {
            op: OP,
            field: "status",
            reason: "stored value does not decode",
        })?;
        if to.rank() <= current.rank() {
            return Ok(false);
        }
        self.tx
            .prepare_cached("UPDATE messages SET status = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id.0.as_slice(), to.code()]))
            .write_ctx(OP)?;
        Ok(true)
    }
}

impl Store {
    /// One message by id.
    pub fn message(&self, id: MessageId) -> Result<Option<Message>, ReadError> {
        const OP: &str = "read message";
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN conversations c ON c.rowid = m.conversation WHERE m.id = ?1"
        );
        let raw = self
            .conn
            .prepare_cached(&sql)
            .and_then(|mut s| s.query_row([id.0.as_slice()], raw).optional())
            .read_ctx(OP)?;
        raw.map(|r| decode(OP, r)).transpose()
    }

    /// A page of a conversation's history, in display order (oldest first), by keyset
    /// pagination on (lamport, sender user, sender device, sequence, id). `limit` defaults to
    /// [`DEFAULT_PAGE_SIZE`] and is capped at [`MAX_PAGE_SIZE`].
    pub fn history(
        &self,
        conversation: &ConversationId,
        page: Page,
        limit: Option<u32>,
    ) -> Result<Vec<Message>, ReadError> {
        const OP: &str = "read history";
        let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE).clamp(1, MAX_PAGE_SIZE);
        let Some(conv) = conversation_rowid(&self.conn, conversation).read_ctx(OP)? else {
            return Ok(Vec::new());
        };
        let anchor = match page {
            Page::Latest => None,
            Page::Before(id) | Page::After(id) => {
                let key: Option<OrderKey> = self
                    .conn
                    .prepare_cached(
                        "SELECT lamport, sender_user, sender_device, seq, id FROM messages \
                         WHERE id = ?1 AND conversation = ?2",
                    )
                    .and_then(|mut s| {
                        s.query_row(params![id.0.as_slice(), conv], |r| {
                            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                        })
                        .optional()
                    })
                    .read_ctx(OP)?;
                Some(key.ok_or_else(|| ReadError::UnknownAnchor {
                    op: OP,
                    message: id.to_string(),
                    conversation: conversation.0.clone(),
                })?)
            }
        };
        let base = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN conversations c ON c.rowid = m.conversation WHERE m.conversation = ?1"
        );
        const DESC: &str = " ORDER BY m.lamport DESC, m.sender_user DESC, m.sender_device DESC, m.seq DESC, m.id DESC LIMIT ?2";
        const ASC: &str =
            " ORDER BY m.lamport, m.sender_user, m.sender_device, m.seq, m.id LIMIT ?2";
        const TUPLE: &str = "(m.lamport, m.sender_user, m.sender_device, m.seq, m.id)";
        let rows: Vec<RawMessage> = match (page, anchor) {
            (Page::Before(_), Some(k)) => {
                let sql = format!("{base} AND {TUPLE} < (?3, ?4, ?5, ?6, ?7){DESC}");
                self.query(&sql, params![conv, limit, k.0, k.1, k.2, k.3, k.4])
                    .read_ctx(OP)?
            }
            (Page::After(_), Some(k)) => {
                let sql = format!("{base} AND {TUPLE} > (?3, ?4, ?5, ?6, ?7){ASC}");
                self.query(&sql, params![conv, limit, k.0, k.1, k.2, k.3, k.4])
                    .read_ctx(OP)?
            }
            _ => self
                .query(&format!("{base}{DESC}"), params![conv, limit])
                .read_ctx(OP)?,
        };
        let mut out = rows
            .into_iter()
            .map(|r| decode(OP, r))
            .collect::<Result<Vec<_>, _>>()?;
        if !matches!(page, Page::After(_)) {
            out.reverse();
        }
        Ok(out)
    }

    /// Whether the conversation holds a message from `sender_device` with sequence number
    /// `seq` (the node asks for a message's per-sender predecessor).
    pub fn has_sequence(
        &self,
        conversation: &ConversationId,
        sender_device: &str,
        seq: u64,
    ) -> Result<bool, ReadError> {
        const OP: &str = "look up a sequence number";
        let Ok(seq) = i64::try_from(seq) else {
            return Ok(false);
        };
        let Some(conv) = conversation_rowid(&self.conn, conversation).read_ctx(OP)? else {
            return Ok(false);
        };
        let found: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM messages WHERE conversation = ?1 AND sender_device = ?2 AND seq = ?3 LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![conv, sender_device, seq], |r| r.get(0)).optional())
            .read_ctx(OP)?;
        Ok(found.is_some())
    }

    /// Whether the conversation holds any message from `sender_device` with a sequence
    /// number below `seq` (a group member who joined late has none of a sender's earlier
    /// messages, so their first one is no gap).
    pub fn has_sequence_below(
        &self,
        conversation: &ConversationId,
        sender_device: &str,
        seq: u64,
    ) -> Result<bool, ReadError> {
        const OP: &str = "look up earlier sequence numbers";
        let seq = i64::try_from(seq).unwrap_or(i64::MAX);
        let Some(conv) = conversation_rowid(&self.conn, conversation).read_ctx(OP)? else {
            return Ok(false);
        };
        let found: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM messages WHERE conversation = ?1 AND sender_device = ?2 AND seq > 0 AND seq < ?3 LIMIT 1",
            )
            .and_then(|mut s| s.query_row(params![conv, sender_device, seq], |r| r.get(0)).optional())
            .read_ctx(OP)?;
        Ok(found.is_some())
    }

    /// Own texts of `sender_device` in a conversation with a sequence number in
    /// `after_seq + 1 ..= up_to_seq` that are encrypted (not waiting for a session) and have
    /// no outbox row for `recipient_device`: what a resend request from that device asks for.
    /// In a group (`group`), only those that went under a sender key `recipient_device` was
    /// given (`Tx::note_group_message_key`, `Tx::share_sender_key`), from the message it was
    /// first given it with on: what it was sent (a device linked later, given the key part
    /// way, was not sent the texts before).
    /// Lowest sequence first, at most `limit` (capped at [`MAX_PAGE_SIZE`]).
    pub fn resend_candidates(
        &self,
        conversation: &ConversationId,
        sender_device: &str,
        (after_seq, up_to_seq): (u64, u64),
        recipient_device: &str,
        (limit, group): (u32, bool),
    ) -> Result<Vec<Message>, ReadError> {
        const OP: &str = "read texts to send again";
        let Some(conv) = conversation_rowid(&self.conn, conversation).read_ctx(OP)? else {
            return Ok(Vec::new());
        };
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        let up_to = i64::try_from(up_to_seq).unwrap_or(i64::MAX);
        // A pending text with no outbox row at all waits for a session: it is encrypted for
        // every device at once later (`awaiting_encryption`), so it is not sent again here.
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages m JOIN conversations c ON c.rowid = m.conversation \
             WHERE m.conversation = ?1 AND m.sender_device = ?2 AND m.own = 1 AND m.seq > ?3 AND m.seq <= ?8 \
             AND NOT (m.status = ?4 AND NOT EXISTS (SELECT 1 FROM outbox a WHERE a.message = m.rowid)) \
             AND m.body_kind IN (?5, ?9) \
             AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.message = m.rowid AND o.recipient_device = ?6) \
             AND (?10 = 0 OR EXISTS (SELECT 1 FROM group_key_shares s \
                  JOIN messages f ON f.id = s.message_id \
                  WHERE s.session_id = m.group_session AND s.device = ?6 AND f.seq <= m.seq)) \
             ORDER BY m.seq LIMIT ?7"
        );
        let rows = self
            .query(
                &sql,
                params![
                    conv,
                    sender_device,
                    after,
                    Status::Pending.code(),
                    BODY_TEXT,
                    recipient_device,
                    limit.clamp(1, MAX_PAGE_SIZE),
                    up_to,
                    BODY_MEDIA,
                    group
                ],
            )
            .read_ctx(OP)?;
        rows.into_iter().map(|r| decode(OP, r)).collect()
    }

    /// The highest sequence number of `sender_device` in a conversation (0 for none).
    pub fn max_sequence(
        &self,
        conversation: &ConversationId,
        sender_device: &str,
    ) -> Result<u64, ReadError> {
        const OP: &str = "find the highest sequence number";
        let Some(conv) = conversation_rowid(&self.conn, conversation).read_ctx(OP)? else {
            return Ok(0);
        };
        let max: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT max(seq) FROM messages WHERE conversation = ?1 AND sender_device = ?2",
            )
            .and_then(|mut s| s.query_row(params![conv, sender_device], |r| r.get(0)))
            .read_ctx(OP)?;
        Ok(max.and_then(|m| u64::try_from(m).ok()).unwrap_or(0))
    }

    /// The highest sequence number `s` such that the conversation holds every message
    /// `1..=s` from `sender_device` (0 when it lacks the first): where a gap starts.
    pub fn contiguous_sequence(
        &self,
        conversation: &ConversationId,
        sender_device: &str,
    ) -> Result<u64, ReadError> {
        const OP: &str = "find the first missing sequence number";
        let Some(conv) = conversation_rowid(&self.conn, conversation).read_ctx(OP)? else {
            return Ok(0);
        };
        // The end of the run that starts at 1: the lowest held number whose successor is not
        // held (each probe is one look-up in `messages_sender_seq`).
        let through: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT min(m.seq) FROM messages m WHERE m.conversation = ?1 AND m.sender_device = ?2 \
                 AND m.seq > 0 \
                 AND EXISTS (SELECT 1 FROM messages f WHERE f.conversation = ?1 AND f.sender_device = ?2 AND f.seq = 1) \
                 AND NOT EXISTS (SELECT 1 FROM messages n WHERE n.conversation = ?1 AND n.sender_device = ?2 AND n.seq = m.seq + 1)",
            )
            .and_then(|mut s| s.query_row(params![conv, sender_device], |r| r.get(0)))
            .read_ctx(OP)?;
        Ok(through.and_then(|t| u64::try_from(t).ok()).unwrap_or(0))
    }

    /// Whether own texts of `sender_device` in `conversation` sent before `before_ms` are
    /// still only [`Status::Sent`] (a relay took them, no receipt came) above the last one a
    /// receipt moved on: if so, the lowest sequence number of those and the highest of a
    /// text `sender_device` has sent (not pending or failed) in the conversation.
    pub fn unreceipted_tail(
        &self,
        conversation: &ConversationId,
        sender_device: &str,
        before_ms: i64,
    ) -> Result<Option<(u64, u64)>, ReadError> {
        const OP: &str = "find texts sent and not receipted";
        let Some(conv) = conversation_rowid(&self.conn, conversation).read_ctx(OP)? else {
            return Ok(None);
        };
        let row: (Option<i64>, Option<i64>) = self
            .conn
            .prepare_cached(
                "WITH last AS (SELECT coalesce(max(seq), 0) AS seq FROM messages \
                     WHERE conversation = ?1 AND sender_device = ?2 AND own = 1 AND status IN (?5, ?6)) \
                 SELECT (SELECT min(m.seq) FROM messages m, last \
                         WHERE m.conversation = ?1 AND m.sender_device = ?2 AND m.own = 1 \
                         AND m.status = ?3 AND m.seq > last.seq AND m.sent_at_ms < ?4), \
                        (SELECT max(a.seq) FROM messages a WHERE a.conversation = ?1 \
                         AND a.sender_device = ?2 AND a.own = 1 AND a.status IN (?3, ?5, ?6))",
            )
            .and_then(|mut s| {
                s.query_row(
                    params![
                        conv,
                        sender_device,
                        Status::Sent.code(),
                        before_ms,
                        Status::Delivered.code(),
                        Status::Read.code()
                    ],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
            })
            .read_ctx(OP)?;
        let seq = |s: i64| u64::try_from(s).unwrap_or(0);
        Ok(match row {
            (Some(from), Some(to)) => Some((seq(from), seq(to))),
            _ => None,
        })
    }

    /// The ids of the messages of `sender_device` a conversation holds with a sequence
    /// number in `from ..= to`, lowest first, at most `limit`.
    pub fn ids_in_sequence(
        &self,
        conversation: &ConversationId,
        sender_device: &str,
        (from, to): (u64, u64),
        limit: u32,
    ) -> Result<Vec<MessageId>, ReadError> {
        const OP: &str = "read ids by sequence number";
        let Some(conv) = conversation_rowid(&self.conn, conversation).read_ctx(OP)? else {
            return Ok(Vec::new());
        };
        let bound = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        let ids: Vec<Vec<u8>> = self
            .conn
            .prepare_cached(
                "SELECT id FROM messages WHERE conversation = ?1 AND sender_device = ?2 \
                 AND seq >= ?3 AND seq <= ?4 ORDER BY seq LIMIT ?5",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![conv, sender_device, bound(from), bound(to), limit],
                    |r| r.get(0),
                )?
                .collect()
            })
            .read_ctx(OP)?;
        ids.iter().map(|id| message_id(OP, id)).collect()
    }

    /// Like [`Store::contiguous_sequence`], for a group, where a member who joined late holds
    /// none of a sender's first messages, or past a gap given up on: the end of the run that
    /// starts at the lowest number held from `sender_device` above `above` (`above` when none
    /// is held above it).
    pub fn contiguous_from_first(
        &self,
        conversation: &ConversationId,
        sender_device: &str,
        above: u64,
    ) -> Result<u64, ReadError> {
        const OP: &str = "find the first missing sequence number";
        let Some(conv) = conversation_rowid(&self.conn, conversation).read_ctx(OP)? else {
            return Ok(above);
        };
        let floor = i64::try_from(above).unwrap_or(i64::MAX);
        let through: Option<i64> = self
            .conn
            .prepare_cached(
                "SELECT min(m.seq) FROM messages m WHERE m.conversation = ?1 AND m.sender_device = ?2 \
                 AND m.seq > ?3 \
                 AND NOT EXISTS (SELECT 1 FROM messages n WHERE n.conversation = ?1 AND n.sender_device = ?2 AND n.seq = m.seq + 1)",
            )
            .and_then(|mut s| s.query_row(params![conv, sender_device, floor], |r| r.get(0)))
            .read_ctx(OP)?;
        Ok(through
            .and_then(|t| u64::try_from(t).ok())
            .unwrap_or(above)
            .max(above))
    }

    fn query(&self, sql: &str, p: impl rusqlite::Params) -> rusqlite::Result<Vec<RawMessage>> {
        let mut stmt = self.conn.prepare_cached(sql)?;
        let rows = stmt.query_map(p, raw)?;
        rows.collect()
    }
}
