//! A user's whole history, owed to a newly linked device of theirs.
//!
//! When a device links another, it owes it every message it holds, up to the newest one at
//! that moment ([`Tx::owe_history`]). The messages go in insertion order (`rowid`), a chunk
//! at a time, each queued in the new device's lane in the transaction that moves the mark
//! ([`Tx::history_progress`]), so a crash of either side resumes where it stopped and nothing
//! is sent twice or skipped.

use rusqlite::{OptionalExtension, params};

use crate::consts::MAX_PAGE_SIZE;
use crate::error::{Context, ReadError, WriteError};
use crate::messages::{MESSAGE_COLUMNS, decode, raw};
use crate::store::{Store, Tx};
use crate::types::Message;

/// History owed to one device.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct HistoryOwed {
    /// The device it is owed to.
    pub device: String,
    /// Messages up to this row are queued for it.
    pub after_row: i64,
    /// The newest row when it was owed: the history to move ends there.
    pub last_row: i64,
    /// Messages queued so far.
    pub sent: u64,
    /// Messages to move in all.
    pub total: u64,
}

impl Store {
    /// Every device history is owed to.
    pub fn history_owed(&self) -> Result<Vec<HistoryOwed>, ReadError> {
        const OP: &str = "read owed history";
        type Raw = (String, i64, i64, i64, i64);
        let rows: Vec<Raw> = self
            .conn
            .prepare_cached(
                "SELECT device, after_row, last_row, sent, total FROM history_owed ORDER BY owed_at_ms",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                    .collect()
            })
            .read_ctx(OP)?;
        Ok(rows
            .into_iter()
            .map(|(device, after_row, last_row, sent, total)| HistoryOwed {
                device,
                after_row,
                last_row,
                sent: u64::try_from(sent).unwrap_or(0),
                total: u64::try_from(total).unwrap_or(0),
            })
            .collect())
    }

    /// Messages in the order they were stored, after row `after` up to row `last`, at most
    /// `limit` (capped at [`MAX_PAGE_SIZE`]), each with its row.
    pub fn messages_between(
        &self,
        after: i64,
        last: i64,
        limit: u32,
    ) -> Result<Vec<(i64, Message)>, ReadError> {
        const OP: &str = "read messages in stored order";
        let rows = self
            .conn
            .prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS}, m.rowid FROM messages m JOIN conversations c ON c.rowid = m.conversation \
                 WHERE m.rowid > ?1 AND m.rowid <= ?2 ORDER BY m.rowid LIMIT ?3"
            ))
            .and_then(|mut s| {
                s.query_map(params![after, last, limit.clamp(1, MAX_PAGE_SIZE)], |r| {
                    // The row comes after the message columns `raw` reads.
                    let row: i64 = r.get(14)?;
                    Ok((row, raw(r)?))
                })?
                .collect::<Result<Vec<_>, _>>()
            })
            .read_ctx(OP)?;
        rows.into_iter()
            .map(|(row, m)| Ok((row, decode(OP, m)?)))
            .collect()
    }
}

impl Tx<'_> {
    /// Owes `device` every message stored now. Already owed: the mark stays where it is.
    pub fn owe_history(&mut self, device: &str, now_ms: i64) -> Result<(), WriteError> {
        const OP: &str = "owe history";
        let (last, total): (Option<i64>, i64) = self
            .tx
            .prepare_cached("SELECT max(rowid), count(*) FROM messages")
            .and_then(|mut s| s.query_row([], |r| Ok((r.get(0)?, r.get(1)?))))
            .write_ctx(OP)?;
        self.tx
            .prepare_cached(
                "INSERT INTO history_owed (device, after_row, last_row, sent, total, owed_at_ms) \
                 VALUES (?1, 0, ?2, 0, ?3, ?4) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![device, last.unwrap_or(0), total, now_ms]))
            .write_ctx(OP)?;
        Ok(())
    }

    /// Records that messages up to row `after_row` are queued for `device` (`sent` in all);
    /// the debt is settled when that reaches its last row.
    pub fn history_progress(
        &mut self,
        device: &str,
        after_row: i64,
        sent: u64,
    ) -> Result<(), WriteError> {
        const OP: &str = "record history progress";
        let last: Option<i64> = self
            .tx
            .prepare_cached("SELECT last_row FROM history_owed WHERE device = ?1")
            .and_then(|mut s| s.query_row([device], |r| r.get(0)).optional())
            .write_ctx(OP)?;
        match last {
            Some(last) if after_row >= last => self.settle_history(device),
            Some(_) => {
                self.tx
                    .prepare_cached(
                        "UPDATE history_owed SET after_row = ?2, sent = ?3 WHERE device = ?1",
                    )
                    .and_then(|mut s| {
                        s.execute(params![
                            device,
                            after_row,
                            i64::try_from(sent).unwrap_or(i64::MAX)
                        ])
                    })
                    .write_ctx(OP)?;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Forgets the history owed to `device` (all of it queued, or the device revoked).
    pub fn settle_history(&mut self, device: &str) -> Result<(), WriteError> {
        const OP: &str = "settle history";
        self.tx
            .prepare_cached("DELETE FROM history_owed WHERE device = ?1")
            .and_then(|mut s| s.execute([device]))
            .write_ctx(OP)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        ConversationId, ConversationKind, Message, MessageId, Status, StorageKey, Store, Unlock,
        types::Body,
    };

    fn store_with(n: u8) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut k = [4u8; 32];
        let key = StorageKey::from_bytes(&mut k);
        let mut store = Store::open(&dir.path().join("t.db"), Unlock::Key(&key)).unwrap();
        store
            .transaction(|tx| {
                let conv = ConversationId("bob".into());
                tx.ensure_conversation(&conv, ConversationKind::Direct, Some("Bob"), 1)?;
                for i in 1..=n {
                    tx.insert_message(&Message {
                        id: MessageId([i; 16]),
                        conversation: conv.clone(),
                        sender_user: "bob".into(),
                        sender_device: "b1".into(),
                        lamport: u64::from(i),
                        seq: u64::from(i),
                        sent_at_ms: 1,
                        received_at_ms: 1,
                        own: false,
                        status: Status::Received,
                        body: Body::Text(format!("m{i}")),
                        edited_at_ms: None,
                    })?;
                }
                Ok::<_, crate::WriteError>(())
            })
            .unwrap();
        (dir, store)
    }

    #[test]
    fn history_is_owed_up_to_the_newest_message_and_resumes_from_its_mark() {
        let (_dir, mut store) = store_with(5);
        store.transaction(|tx| tx.owe_history("laptop", 9)).unwrap();
        let owed = store.history_owed().unwrap();
        assert_eq!(owed.len(), 1);
        assert_eq!((owed[0].sent, owed[0].total), (0, 5));
        let first = store
            .messages_between(owed[0].after_row, owed[0].last_row, 2)
            .unwrap();
        assert_eq!(
            first.iter().map(|(_, m)| m.id).collect::<Vec<_>>(),
            vec![MessageId([1; 16]), MessageId([2; 16])]
        );
        let mark = first[1].0;
        store
            .transaction(|tx| tx.history_progress("laptop", mark, 2))
            .unwrap();
        // Owing again keeps the mark.
        store
            .transaction(|tx| tx.owe_history("laptop", 10))
            .unwrap();
        let owed = store.history_owed().unwrap();
        assert_eq!((owed[0].after_row, owed[0].sent), (mark, 2));
        let rest = store
            .messages_between(owed[0].after_row, owed[0].last_row, 100)
            .unwrap();
        assert_eq!(rest.len(), 3);
        assert_eq!(rest[0].1.id, MessageId([3; 16]));
        let last = rest[2].0;
        store
            .transaction(|tx| tx.history_progress("laptop", last, 5))
            .unwrap();
        assert!(
            store.history_owed().unwrap().is_empty(),
            "settled at its last row"
        );
    }
}
