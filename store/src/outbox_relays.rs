//! The outbox per relay: a recipient device may keep mailboxes at several relays, and each of
//! its outbox rows goes to every one of them.
//!
//! A row stays one row (one ciphertext, one ratchet step); `outbox_relays` records, per row
//! and relay, whether that relay took it and, while it has not, its failed attempts there and
//! when it is tried there next. So a device has one lane per relay
//! ([`Store::lane_at`]): the rows that relay has not taken, in id order, each relay at its
//! own pace, and a relay that is down holds back only its own lane.
//!
//! A row leaves the outbox when every relay of the recipient's current set took it, or when
//! the device itself took it (a direct delivery: [`Tx::ack_rows`]). The set is the caller's:
//! a relay taken out of the recipient's set is no longer waited for
//! ([`Tx::settle_device_rows`] lets go of the rows every remaining relay took).

use rusqlite::{OptionalExtension, params};

use crate::consts::MAX_PAGE_SIZE;
use crate::error::{Context, ReadError, WriteError};
use crate::outbox::LaneRow;
use crate::store::{Store, Tx};
use crate::types::MessageId;

/// The devices with lane rows after a given one ([`Store::lane_devices`]).
pub(crate) const LANE_DEVICES_SQL: &str = "SELECT DISTINCT recipient_device FROM outbox \
     WHERE kind = 0 /* Pairwise */ AND recipient_device > ?1 \
     ORDER BY recipient_device LIMIT ?2";

impl Store {
    /// The first `limit` rows of a device's lane at `relay`: those that relay has not taken,
    /// in the order they must be sent, with their attempts and due time there.
    pub fn lane_at(
        &self,
        device: &str,
        relay: &str,
        limit: u32,
    ) -> Result<Vec<LaneRow>, ReadError> {
        self.lane_rows("read a lane at a relay", device, Some(relay), 0, limit)
    }

    /// The devices with lane rows, in device id order after `after` (`""`: from the
    /// first), at most `limit` (capped at [`MAX_PAGE_SIZE`]). Whether a lane is due depends
    /// on the relay it goes to, which the caller knows: it looks at each device's lanes, a
    /// page at a time, round the devices in turn.
    pub fn lane_devices(&self, after: &str, limit: u32) -> Result<Vec<String>, ReadError> {
        const OP: &str = "read the devices with lane rows";
        self.conn
            .prepare_cached(LANE_DEVICES_SQL)
            .and_then(|mut s| {
                s.query_map(params![after, limit.clamp(1, MAX_PAGE_SIZE)], |r| r.get(0))?
                    .collect()
            })
            .read_ctx(OP)
    }

    /// The relays that took the fan-out row of message `id` for `device`.
    pub fn fanout_taken(&self, id: MessageId, device: &str) -> Result<Vec<String>, ReadError> {
        const OP: &str = "read where a fan-out row went";
        self.conn
            .prepare_cached(
                "SELECT r.relay FROM outbox_relays r JOIN outbox o ON o.id = r.row \
                 JOIN messages m ON m.rowid = o.message \
                 WHERE m.id = ?1 AND o.recipient_device = ?2 AND r.taken = 1 ORDER BY r.relay",
            )
            .and_then(|mut s| {
                s.query_map(params![id.0.as_slice(), device], |r| r.get(0))?
                    .collect()
            })
            .read_ctx(OP)
    }

    /// Per recipient user, how many outbox rows (lane and fan-out) `relay` has not taken:
    /// what it still owes that user's devices if the user keeps a mailbox there.
    pub fn untaken_at(&self, relay: &str) -> Result<Vec<(String, u64)>, ReadError> {
        const OP: &str = "count rows a relay has not taken";
        let rows: Vec<(String, i64)> = self
            .conn
            .prepare_cached(
                "SELECT o.recipient_user, count(*) FROM outbox o WHERE NOT EXISTS \
                 (SELECT 1 FROM outbox_relays r WHERE r.row = o.id AND r.relay = ?1 AND r.taken = 1) \
                 GROUP BY o.recipient_user",
            )
            .and_then(|mut s| s.query_map([relay], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .read_ctx(OP)?;
        Ok(rows
            .into_iter()
            .map(|(u, n)| (u, u64::try_from(n).unwrap_or(0)))
            .collect())
    }
}

impl Tx<'_> {
    /// Records that `relay` took these rows; the rows every relay of `relays` (the device's
    /// current set) took now leave. Returns the messages that became [`crate::Status::Sent`]:
    /// every row of theirs gone or taken by at least one relay (a copy for each recipient
    /// device is held by a mailbox; the other relays still get theirs).
    pub fn take_rows_at(
        &mut self,
        rows: &[i64],
        relay: &str,
        relays: &[String],
    ) -> Result<Vec<MessageId>, WriteError> {
        const OP: &str = "record rows a relay took";
        for row in rows {
            self.tx
                .prepare_cached(
                    "INSERT INTO outbox_relays (row, relay, taken) \
                     SELECT id, ?2, 1 FROM outbox WHERE id = ?1 \
                     ON CONFLICT (row, relay) DO UPDATE SET taken = 1",
                )
                .and_then(|mut s| s.execute(params![row, relay]))
                .write_ctx(OP)?;
        }
        // The messages the rows belong to, before the complete rows leave.
        let mut messages: Vec<(i64, crate::MessageId)> = Vec::new();
        for row in rows {
            let found: Option<(i64, Vec<u8>)> = self
                .tx
                .prepare_cached(
                    "SELECT o.message, m.id FROM outbox o JOIN messages m ON m.rowid = o.message \
                     WHERE o.id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([row], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .write_ctx(OP)?;
            if let Some((rowid, id)) = found {
                let id = crate::messages::message_id(OP, &id)?;
                if !messages.contains(&(rowid, id)) {
                    messages.push((rowid, id));
                }
            }
        }
        let complete = self.complete_rows(OP, rows, relays)?;
        let mut done = self.ack_rows(&complete)?;
        for (rowid, id) in messages {
            if !done.contains(&id) && self.settle_if_sent(OP, rowid, id)?.sent_now {
                done.push(id);
            }
        }
        Ok(done)
    }

    /// Counts a failed attempt on a lane row at `relay` and sets when it is due there next
    /// (the row's other relays keep their own schedule).
    pub fn reschedule_row_at(
        &mut self,
        row: i64,
        relay: &str,
        next_attempt_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "reschedule a row at a relay";
        self.tx
            .prepare_cached(
                "INSERT INTO outbox_relays (row, relay, attempts, next_attempt_ms) \
                 SELECT id, ?2, attempts + 1, ?3 FROM outbox WHERE id = ?1 \
                 ON CONFLICT (row, relay) DO UPDATE SET attempts = attempts + 1, next_attempt_ms = ?3",
            )
            .and_then(|mut s| s.execute(params![row, relay, next_attempt_ms]))
            .write_ctx(OP)?;
        Ok(())
    }

    /// Records that `relay` took the fan-out row of message `id` for `device` (`None`: the
    /// device itself did); the row leaves once every relay of `relays` took it. Returns
    /// whether the message became [`crate::Status::Sent`] (each of its rows gone or taken
    /// by a relay).
    pub fn take_delivery_at(
        &mut self,
        id: MessageId,
        device: &str,
        relay: Option<&str>,
        relays: &[String],
    ) -> Result<bool, WriteError> {
        const OP: &str = "record a fan-out row a relay took";
        let row: Option<i64> = {
            use rusqlite::OptionalExtension;
            self.tx
                .prepare_cached(
                    "SELECT o.id FROM outbox o JOIN messages m ON m.rowid = o.message \
                     WHERE m.id = ?1 AND o.recipient_device = ?2",
                )
                .and_then(|mut s| {
                    s.query_row(params![id.0.as_slice(), device], |r| r.get(0))
                        .optional()
                })
                .write_ctx(OP)?
        };
        let done = match (row, relay) {
            (None, _) => return Ok(false),
            (Some(row), Some(relay)) => self.take_rows_at(&[row], relay, relays)?,
            (Some(row), None) => self.ack_rows(&[row])?,
        };
        Ok(done.contains(&id))
    }

    /// Lets go of `device`'s rows (lane and fan-out) that every relay of `relays` took: its
    /// set changed, and a relay no longer in it is not waited for. Returns the messages that
    /// became [`crate::Status::Sent`] by it.
    pub fn settle_device_rows(
        &mut self,
        device: &str,
        relays: &[String],
    ) -> Result<Vec<MessageId>, WriteError> {
        const OP: &str = "settle a device's rows";
        let rows: Vec<i64> = self
            .tx
            .prepare_cached(
                "SELECT DISTINCT o.id FROM outbox o JOIN outbox_relays r ON r.row = o.id \
                 WHERE o.recipient_device = ?1 AND r.taken = 1 ORDER BY o.id",
            )
            .and_then(|mut s| s.query_map([device], |r| r.get(0))?.collect())
            .write_ctx(OP)?;
        let complete = self.complete_rows(OP, &rows, relays)?;
        self.ack_rows(&complete)
    }

    /// Of `rows`, those every relay of `relays` took.
    fn complete_rows(
        &mut self,
        op: &'static str,
        rows: &[i64],
        relays: &[String],
    ) -> Result<Vec<i64>, WriteError> {
        let mut complete = Vec::new();
        for row in rows {
            let taken: Vec<String> = self
                .tx
                .prepare_cached("SELECT relay FROM outbox_relays WHERE row = ?1 AND taken = 1")
                .and_then(|mut s| s.query_map([row], |r| r.get(0))?.collect())
                .write_ctx(op)?;
            if relays.iter().all(|r| taken.contains(r)) {
                complete.push(*row);
            }
        }
        Ok(complete)
    }
}

#[cfg(test)]
mod tests {
    use crate::outbox::tests::{own, store, to};
    use crate::{ConversationId, ConversationKind, MessageId, Status};

    fn payloads(rows: &[crate::LaneRow]) -> Vec<u8> {
        rows.iter().map(|r| r.delivery.payload[0]).collect()
    }

    #[test]
    fn each_relay_has_its_own_lane_and_a_row_leaves_when_all_took_it() {
        let (_dir, mut store) = store();
        let conv = ConversationId("bob".into());
        let both = ["r1".to_owned(), "r2".to_owned()];
        store
            .transaction(|tx| {
                tx.ensure_conversation(&conv, ConversationKind::Direct, Some("Bob"), 1)?;
                tx.record_outgoing(&own(1), &[], &[to("b1", 1)], 0)?;
                tx.record_outgoing(&own(2), &[], &[to("b1", 2)], 0)?;
                tx.queue_control(&[to("b1", 3)], 0)
            })
            .unwrap();
        let lane = store.lane_at("b1", "r1", 10).unwrap();
        assert_eq!(payloads(&lane), [1, 2, 3]);
        // r1 takes the first two; r2 is down: its head waits, r1's lane is not held back.
        let done = store
            .transaction(|tx| tx.take_rows_at(&[lane[0].row, lane[1].row], "r1", &both))
            .unwrap();
        // Held by a mailbox: sent, though r2 has not taken them yet.
        assert_eq!(done, [MessageId([1; 16]), MessageId([2; 16])]);
        store
            .transaction(|tx| tx.reschedule_row_at(lane[0].row, "r2", 5_000))
            .unwrap();
        assert_eq!(payloads(&store.lane_at("b1", "r1", 10).unwrap()), [3]);
        let r2 = store.lane_at("b1", "r2", 10).unwrap();
        assert_eq!(payloads(&r2), [1, 2, 3], "r2 still owes all, in order");
        assert_eq!(store.untaken_at("r1").unwrap(), [("bob".to_owned(), 1)]);
        assert_eq!(store.lane_devices("", 10).unwrap(), ["b1"]);
        assert!(store.lane_devices("b1", 10).unwrap().is_empty());
        assert_eq!(store.untaken_at("r2").unwrap(), [("bob".to_owned(), 3)]);
        assert_eq!((r2[0].attempts, r2[0].next_attempt_ms), (1, 5_000));
        assert_eq!((r2[1].attempts, r2[1].next_attempt_ms), (0, 0));
        assert_eq!(store.lane("b1", 10).unwrap().len(), 3, "nothing left yet");
        // r2 comes back and takes message 1: it leaves (sent already); 2 waits for r2 still.
        let done = store
            .transaction(|tx| tx.take_rows_at(&[r2[0].row], "r2", &both))
            .unwrap();
        assert!(done.is_empty(), "sent once, when r1 took it");
        assert_eq!(
            store.message(MessageId([1; 16])).unwrap().unwrap().status,
            Status::Sent
        );
        assert_eq!(payloads(&store.lane_at("b1", "r2", 10).unwrap()), [2, 3]);
        // r2 leaves the device's set: what r1 took is not waited for any more.
        let done = store
            .transaction(|tx| tx.settle_device_rows("b1", &["r1".to_owned()]))
            .unwrap();
        assert!(done.is_empty());
        assert_eq!(payloads(&store.lane("b1", 10).unwrap()), [3]);
        // Entries go with their rows.
        let left: i64 = store
            .conn
            .query_row("SELECT count(*) FROM outbox_relays", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }

    #[test]
    fn a_fan_out_row_waits_for_every_relay_or_the_device() {
        let (_dir, mut store) = store();
        let conv = ConversationId("bob".into());
        let both = ["r1".to_owned(), "r2".to_owned()];
        let shared = [
            ("bob".to_owned(), "b1".to_owned()),
            ("bob".to_owned(), "b2".to_owned()),
        ];
        let id = MessageId([1; 16]);
        store
            .transaction(|tx| {
                tx.ensure_conversation(&conv, ConversationKind::Group, Some("G"), 1)?;
                tx.record_outgoing_fanout(&own(1), &[], &[], b"megolm", &shared, 0)
            })
            .unwrap();
        let sent = store
            .transaction(|tx| tx.take_delivery_at(id, "b1", Some("r1"), &both))
            .unwrap();
        assert!(!sent, "b2's copy is held nowhere yet");
        assert_eq!(store.fanout_taken(id, "b1").unwrap(), ["r1"]);
        assert!(store.fanout_taken(id, "b2").unwrap().is_empty());
        let sent = store
            .transaction(|tx| tx.take_delivery_at(id, "b1", Some("r2"), &both))
            .unwrap();
        assert!(!sent);
        assert_eq!(store.message(id).unwrap().unwrap().status, Status::Pending);
        let sent = store
            .transaction(|tx| tx.take_delivery_at(id, "b2", None, &both))
            .unwrap();
        assert!(sent, "the device itself took it");
        assert_eq!(store.message(id).unwrap().unwrap().status, Status::Sent);
        assert!(store.due_fanout(i64::MAX, 10).unwrap().is_empty());
        // Another: each device's copy taken by one relay of two is sent, rows still waiting.
        let id2 = MessageId([2; 16]);
        store
            .transaction(|tx| tx.record_outgoing_fanout(&own(2), &[], &[], b"megolm", &shared, 0))
            .unwrap();
        let first = store
            .transaction(|tx| tx.take_delivery_at(id2, "b1", Some("r1"), &both))
            .unwrap();
        let second = store
            .transaction(|tx| tx.take_delivery_at(id2, "b2", Some("r2"), &both))
            .unwrap();
        assert!(!first && second);
        assert_eq!(store.message(id2).unwrap().unwrap().status, Status::Sent);
        assert_eq!(
            store.due_fanout(i64::MAX, 10).unwrap().len(),
            2,
            "r2 and r1 still owe"
        );
    }
}
