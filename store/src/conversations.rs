//! Conversations: creation, the list ordered by last activity, unread counts.

use rusqlite::{OptionalExtension, Row, params};

use crate::consts::{MAX_PAGE_SIZE, PREVIEW_CHARS};
use crate::error::{Context, ReadError, WriteError};
use crate::messages::message_id;
use crate::store::{Store, Tx};
use crate::types::{
    ConversationCursor, ConversationId, ConversationKind, ConversationPage, ConversationSummary,
    MessageId, Preview, Status,
};

const SUMMARY_SQL: &str = "SELECT c.rowid, c.conversation_id, c.kind, c.title, c.last_activity_ms, c.unread_count, \
     m.id, m.sender_user, m.body_text \
     FROM conversations c LEFT JOIN messages m ON m.rowid = c.last_message";

type RawSummary = (
    i64,
    String,
    i64,
    Option<String>,
    i64,
    i64,
    Option<Vec<u8>>,
    Option<String>,
    Option<String>,
);

fn raw_summary(r: &Row<'_>) -> rusqlite::Result<RawSummary> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn decode_summary(
    op: &'static str,
    r: RawSummary,
) -> Result<(i64, ConversationSummary), ReadError> {
    let (rowid, id, kind, title, last_activity_ms, unread, mid, sender, text) = r;
    let kind = ConversationKind::from_code(kind).ok_or_else(|| ReadError::Invalid {
        op,
        what: "conversation kind",
        reason: kind.to_string(),
    })?;
    let last_message = match (mid, sender) {
        (Some(mid), Some(sender_user)) => Some(Preview {
            id: message_id(op, &mid)?,
            sender_user,
            text: text.map(|t| t.chars().take(PREVIEW_CHARS).collect()),
        }),
        _ => None,
    };
    Ok((
        rowid,
        ConversationSummary {
            id: ConversationId(id),
            kind,
            title,
            last_message,
            last_activity_ms,
            unread_count: u64::try_from(unread).unwrap_or(0),
        },
    ))
}

impl Tx<'_> {
    /// Creates the conversation if it does not exist. Returns whether it was created.
    pub fn ensure_conversation(
        &mut self,
        id: &ConversationId,
        kind: ConversationKind,
        title: Option<&str>,
        now_ms: i64,
    ) -> Result<bool, WriteError> {
        let n = self
            .tx
            .prepare_cached(
                "INSERT INTO conversations (conversation_id, kind, title, last_activity_ms, created_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?4) ON CONFLICT (conversation_id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id.0, kind.code(), title, now_ms]))
            .write_ctx("create conversation")?;
        Ok(n == 1)
    }

    /// Sets or clears a conversation's title.
    pub fn set_title(
        &mut self,
        id: &ConversationId,
        title: Option<&str>,
    ) -> Result<(), WriteError> {
        const OP: &str = "set conversation title";
        let n = self
            .tx
            .prepare_cached("UPDATE conversations SET title = ?2 WHERE conversation_id = ?1")
            .and_then(|mut s| s.execute(params![id.0, title]))
            .write_ctx(OP)?;
        if n == 0 {
            return Err(WriteError::UnknownConversation {
                op: OP,
                conversation: id.0.clone(),
            });
        }
        Ok(())
    }

    /// Marks every received message of the conversation read and resets its unread count.
    /// Returns how many messages changed.
    pub fn mark_read(&mut self, id: &ConversationId) -> Result<u64, WriteError> {
        const OP: &str = "mark conversation read";
        let conv = self.known_conversation(OP, id)?;
        let n = self
            .tx
            .prepare_cached(
                "UPDATE messages SET status = ?3 WHERE conversation = ?1 AND status = ?2",
            )
            .and_then(|mut s| {
                s.execute(params![conv, Status::Received.code(), Status::Read.code()])
            })
            .write_ctx(OP)?;
        self.tx
            .prepare_cached("UPDATE conversations SET unread_count = 0 WHERE rowid = ?1")
            .and_then(|mut s| s.execute([conv]))
            .write_ctx(OP)?;
        Ok(n as u64)
    }

    /// Marks read those of `messages` that are received messages of the conversation, and
    /// takes them off its unread count (the others stay unread). Returns how many changed.
    pub fn mark_messages_read(
        &mut self,
        id: &ConversationId,
        messages: &[MessageId],
    ) -> Result<u64, WriteError> {
        const OP: &str = "mark messages read";
        let conv = self.known_conversation(OP, id)?;
        let mut n = 0;
        for m in messages {
            n += self
                .tx
                .prepare_cached(
                    "UPDATE messages SET status = ?4 WHERE conversation = ?1 AND id = ?2 AND status = ?3",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        conv,
                        m.0.as_slice(),
                        Status::Received.code(),
                        Status::Read.code()
                    ])
                })
                .write_ctx(OP)?;
        }
        self.tx
            .prepare_cached(
                "UPDATE conversations SET unread_count = MAX(0, unread_count - ?2) WHERE rowid = ?1",
            )
            .and_then(|mut s| s.execute(params![conv, n as i64]))
            .write_ctx(OP)?;
        Ok(n as u64)
    }

    pub(crate) fn bump_unread(&mut self, op: &'static str, conv: i64) -> Result<(), WriteError> {
        self.tx
            .prepare_cached(
                "UPDATE conversations SET unread_count = unread_count + 1 WHERE rowid = ?1",
            )
            .and_then(|mut s| s.execute([conv]))
            .write_ctx(op)?;
        Ok(())
    }
}

impl Store {
    /// A conversation's unread count (0 for one not stored).
    pub fn unread_count(&self, id: &ConversationId) -> Result<u64, ReadError> {
        let n: Option<i64> = self
            .conn
            .prepare_cached("SELECT unread_count FROM conversations WHERE conversation_id = ?1")
            .and_then(|mut s| s.query_row([&id.0], |r| r.get(0)).optional())
            .read_ctx("read unread count")?;
        Ok(n.map_or(0, |n| u64::try_from(n).unwrap_or(0)))
    }

    /// Unread messages over every conversation (the sum of their unread counts).
    pub fn unread_total(&self) -> Result<u64, ReadError> {
        const OP: &str = "count unread";
        let n: i64 = self
            .conn
            .prepare_cached("SELECT COALESCE(SUM(unread_count), 0) FROM conversations")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .read_ctx(OP)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// One conversation's summary.
    pub fn conversation(
        &self,
        id: &ConversationId,
    ) -> Result<Option<ConversationSummary>, ReadError> {
        const OP: &str = "read conversation";
        let raw = self
            .conn
            .prepare_cached(&format!("{SUMMARY_SQL} WHERE c.conversation_id = ?1"))
            .and_then(|mut s| s.query_row([&id.0], raw_summary).optional())
            .read_ctx(OP)?;
        raw.map(|r| decode_summary(OP, r).map(|(_, s)| s))
            .transpose()
    }

    /// The conversation list, most recently active first, `limit` (capped at
    /// [`MAX_PAGE_SIZE`]) at a time; pass the returned cursor for the next page.
    pub fn conversations(
        &self,
        after: Option<ConversationCursor>,
        limit: u32,
    ) -> Result<ConversationPage, ReadError> {
        const OP: &str = "list conversations";
        let limit = limit.clamp(1, MAX_PAGE_SIZE);
        let rows: Vec<RawSummary> = match after {
            None => self
                .conn
                .prepare_cached(&format!(
                    "{SUMMARY_SQL} ORDER BY c.last_activity_ms DESC, c.rowid DESC LIMIT ?1"
                ))
                .and_then(|mut s| s.query_map([limit], raw_summary)?.collect())
                .read_ctx(OP)?,
            Some(cur) => self
                .conn
                .prepare_cached(&format!(
                    "{SUMMARY_SQL} WHERE (c.last_activity_ms, c.rowid) < (?2, ?3) \
                     ORDER BY c.last_activity_ms DESC, c.rowid DESC LIMIT ?1"
                ))
                .and_then(|mut s| {
                    s.query_map(params![limit, cur.last_activity_ms, cur.rowid], raw_summary)?
                        .collect()
                })
                .read_ctx(OP)?,
        };
        let full = rows.len() == limit as usize;
        let mut conversations = Vec::with_capacity(rows.len());
        let mut next = None;
        for r in rows {
            let (rowid, s) = decode_summary(OP, r)?;
            next = Some(ConversationCursor {
                last_activity_ms: s.last_activity_ms,
                rowid,
            });
            conversations.push(s);
        }
        Ok(ConversationPage {
            conversations,
            next: if full { next } else { None },
        })
    }
}
