//! Messages owed again to a user's devices after a device-list change.
//!
//! A sender that encrypted a message for an older device list of its recipient left the
//! devices linked since then out. A device of the recipient that notices (each message says
//! which list version it was encrypted for) answers with the current list, the ids of those
//! messages and the devices they missed; the sender owes each message to each of those
//! devices ([`Tx::owe_resync`], in the transaction that reads the answer) until it has
//! encrypted it for that device and queued it ([`Tx::settle_resync`], in the transaction that
//! queues it). A crash between the two loses nothing.

use rusqlite::params;

use crate::consts::MAX_PAGE_SIZE;
use crate::error::{Context, ReadError, WriteError};
use crate::messages::message_id;
use crate::store::{Store, Tx};
use crate::types::MessageId;

/// A message owed again to a device.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OwedResync {
    /// The own message.
    pub message_id: MessageId,
    /// The user the device belongs to.
    pub user: String,
    /// The device that missed it.
    pub device: String,
}

/// A received text that was encrypted for an older list of this device's own user: its
/// sender's device is owed an answer naming it.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OwedListAnswer {
    /// The sender user.
    pub user: String,
    /// The sender device.
    pub device: String,
    /// The text.
    pub message_id: MessageId,
    /// How many entries the list it was encrypted for had.
    pub seen_entries: u32,
}

impl Store {
    /// Answers owed to senders, oldest first, at most `limit` (capped at [`MAX_PAGE_SIZE`]).
    pub fn due_list_answers(&self, limit: u32) -> Result<Vec<OwedListAnswer>, ReadError> {
        const OP: &str = "read owed list answers";
        let rows: Vec<(String, String, Vec<u8>, i64)> = self
            .conn
            .prepare_cached(
                "SELECT sender_user, sender_device, message_id, seen_entries FROM list_answers_due \
                 ORDER BY owed_at_ms, rowid LIMIT ?1",
            )
            .and_then(|mut s| {
                s.query_map([limit.clamp(1, MAX_PAGE_SIZE)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })?
                .collect()
            })
            .read_ctx(OP)?;
        rows.into_iter()
            .map(|(user, device, id, entries)| {
                Ok(OwedListAnswer {
                    user,
                    device,
                    message_id: message_id(OP, &id)?,
                    seen_entries: u32::try_from(entries).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    /// Messages owed again, oldest first, at most `limit` (capped at [`MAX_PAGE_SIZE`]).
    pub fn due_resync(&self, limit: u32) -> Result<Vec<OwedResync>, ReadError> {
        const OP: &str = "read owed re-encryptions";
        let rows: Vec<(Vec<u8>, String, String)> = self
            .conn
            .prepare_cached(
                "SELECT message_id, user, device FROM resync_due \
                 ORDER BY owed_at_ms, rowid LIMIT ?1",
            )
            .and_then(|mut s| {
                s.query_map([limit.clamp(1, MAX_PAGE_SIZE)], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect()
            })
            .read_ctx(OP)?;
        rows.into_iter()
            .map(|(id, user, device)| {
                Ok(OwedResync {
                    message_id: message_id(OP, &id)?,
                    user,
                    device,
                })
            })
            .collect()
    }

    /// The devices an outbox row of message `id` is still queued for.
    pub fn queued_devices(&self, id: MessageId) -> Result<Vec<String>, ReadError> {
        const OP: &str = "read queued devices";
        self.conn
            .prepare_cached(
                "SELECT o.recipient_device FROM outbox o JOIN messages m ON o.message = m.rowid \
                 WHERE m.id = ?1",
            )
            .and_then(|mut s| s.query_map([id.0.as_slice()], |r| r.get(0))?.collect())
            .read_ctx(OP)
    }
}

impl Tx<'_> {
    /// Owes each of `ids` to each of `devices` of `user`. Already owed is a no-op.
    pub fn owe_resync(
        &mut self,
        user: &str,
        devices: &[String],
        ids: &[MessageId],
        now_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "owe re-encryptions";
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO resync_due (message_id, device, user, owed_at_ms) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            )
            .write_ctx(OP)?;
        for id in ids {
            for device in devices {
                stmt.execute(params![id.0.as_slice(), device, user, now_ms])
                    .write_ctx(OP)?;
            }
        }
        Ok(())
    }

    /// Owes `device` of `user` an answer naming the text `id`, which was encrypted for a list
    /// of `seen_entries` entries. Already owed is a no-op.
    pub fn owe_list_answer(
        &mut self,
        answer: &OwedListAnswer,
        now_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "owe a list answer";
        self.tx
            .prepare_cached(
                "INSERT INTO list_answers_due (sender_device, message_id, sender_user, seen_entries, owed_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    answer.device,
                    answer.message_id.0.as_slice(),
                    answer.user,
                    answer.seen_entries,
                    now_ms
                ])
            })
            .write_ctx(OP)?;
        Ok(())
    }

    /// Settles the answers owed to `device` for `ids` (queued in its lane).
    pub fn settle_list_answers(
        &mut self,
        device: &str,
        ids: &[MessageId],
    ) -> Result<(), WriteError> {
        const OP: &str = "settle list answers";
        let mut stmt = self
            .tx
            .prepare_cached(
                "DELETE FROM list_answers_due WHERE sender_device = ?1 AND message_id = ?2",
            )
            .write_ctx(OP)?;
        for id in ids {
            stmt.execute(params![device, id.0.as_slice()])
                .write_ctx(OP)?;
        }
        Ok(())
    }

    /// Settles what was owed of message `id` to `device` (queued, or no longer owed: the
    /// message or the device is gone).
    pub fn settle_resync(&mut self, id: MessageId, device: &str) -> Result<(), WriteError> {
        const OP: &str = "settle re-encryptions";
        self.tx
            .prepare_cached("DELETE FROM resync_due WHERE message_id = ?1 AND device = ?2")
            .and_then(|mut s| s.execute(params![id.0.as_slice(), device]))
            .write_ctx(OP)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        ConversationId, ConversationKind, Delivery, Message, MessageId, Status, StorageKey, Store,
        Unlock, types::Body,
    };

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut k = [3u8; 32];
        let key = StorageKey::from_bytes(&mut k);
        let store = Store::open(&dir.path().join("t.db"), Unlock::Key(&key)).unwrap();
        (dir, store)
    }

    fn own(id: u8) -> Message {
        Message {
            id: MessageId([id; 16]),
            conversation: ConversationId("bob".into()),
            sender_user: "me".into(),
            sender_device: "d1".into(),
            lamport: u64::from(id),
            seq: u64::from(id),
            sent_at_ms: 1,
            received_at_ms: 1,
            own: true,
            status: Status::Pending,
            body: Body::Text(format!("t{id}")),
            edited_at_ms: None,
        }
    }

    #[test]
    fn owed_until_settled_oldest_first_and_once() {
        let (_dir, mut store) = store();
        let (a, b) = (MessageId([1; 16]), MessageId([2; 16]));
        let b2 = vec!["b2".to_owned()];
        store
            .transaction(|tx| {
                tx.owe_resync("bob", &b2, &[b], 5)?;
                tx.owe_resync("bob", &b2, &[a, b], 7)
            })
            .unwrap();
        let due = store.due_resync(10).unwrap();
        assert_eq!(
            due.iter().map(|o| o.message_id).collect::<Vec<_>>(),
            vec![b, a]
        );
        assert_eq!(
            (due[0].user.as_str(), due[0].device.as_str()),
            ("bob", "b2")
        );
        store.transaction(|tx| tx.settle_resync(b, "b2")).unwrap();
        assert_eq!(store.due_resync(10).unwrap().len(), 1);
        // What another device is owed is separate.
        store.transaction(|tx| tx.settle_resync(a, "b3")).unwrap();
        assert_eq!(store.due_resync(10).unwrap().len(), 1);
    }

    #[test]
    fn list_answers_are_owed_until_settled() {
        let (_dir, mut store) = store();
        let owed = |id: u8, device: &str| super::OwedListAnswer {
            user: "bob".into(),
            device: device.into(),
            message_id: MessageId([id; 16]),
            seen_entries: 1,
        };
        store
            .transaction(|tx| {
                tx.owe_list_answer(&owed(1, "b1"), 5)?;
                tx.owe_list_answer(&owed(2, "b1"), 6)?;
                tx.owe_list_answer(&owed(2, "b1"), 7)?;
                tx.owe_list_answer(&owed(1, "b2"), 8)
            })
            .unwrap();
        let due = store.due_list_answers(10).unwrap();
        assert_eq!(due, vec![owed(1, "b1"), owed(2, "b1"), owed(1, "b2")]);
        store
            .transaction(|tx| {
                tx.settle_list_answers("b1", &[MessageId([1; 16]), MessageId([2; 16])])
            })
            .unwrap();
        assert_eq!(store.due_list_answers(10).unwrap(), vec![owed(1, "b2")]);
    }

    #[test]
    fn queued_devices_lists_the_rows_still_waiting() {
        let (_dir, mut store) = store();
        let m = own(1);
        let rows = vec![
            Delivery {
                recipient_user: "bob".into(),
                recipient_device: "b1".into(),
                payload: vec![1],
            },
            Delivery {
                recipient_user: "bob".into(),
                recipient_device: "b2".into(),
                payload: vec![2],
            },
        ];
        store
            .transaction(|tx| {
                tx.ensure_conversation(&m.conversation, ConversationKind::Direct, None, 1)?;
                tx.record_outgoing(&m, &[], &rows, 1)
            })
            .unwrap();
        let mut queued = store.queued_devices(m.id).unwrap();
        queued.sort();
        assert_eq!(queued, vec!["b1".to_owned(), "b2".to_owned()]);
        let lane = store.lane("b1", 10).unwrap();
        store.transaction(|tx| tx.ack_rows(&[lane[0].row])).unwrap();
        assert_eq!(store.queued_devices(m.id).unwrap(), vec!["b2".to_owned()]);
        assert!(store.queued_devices(MessageId([9; 16])).unwrap().is_empty());
    }
}
