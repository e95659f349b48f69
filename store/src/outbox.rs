//! The outbox as ordered lanes, and the ledger of pairwise messages read.
//!
//! A **lane** is everything waiting for one recipient device over its pairwise session: the
//! rows with a payload of their own, in id order. Ids only grow, and each row is inserted in
//! the transaction that saves the ratchet state that encrypted it, so id order is ratchet
//! order. The node sends a lane's rows strictly in that order and only the first row of a
//! lane is ever rescheduled, so a later ciphertext never overtakes an earlier one for the same
//! device. (Rows of a group fan-out share one payload in `outbox_shared` and are not part of
//! any lane: a group message has its own ratchet with a wide window.) Each row stores which
//! of the two it is ([`RowKind`]); nothing is told from the payload.
//!
//! A row may belong to no message ([`Tx::queue_control`]): receipts and resend requests go in
//! the same lane as the messages encrypted around them.

use rusqlite::{OptionalExtension, params};

use crate::consts::MAX_PAGE_SIZE;
use crate::error::{Context, ReadError, WriteError};
use crate::messages::message_id;
use crate::store::{Store, Tx};
use crate::types::{Delivery, MessageId};

/// What an outbox row is (the `kind` column). The codes are on disk: fixed forever, and a
/// retired code is never reused. The SQL here and in `record.rs` names them as literals (a
/// partial index needs the constant in the query), next to the variant's name.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum RowKind {
    /// A row of its recipient device's lane, with a pairwise ciphertext of its own: a
    /// message, or with no message a control row (a receipt, a resend request).
    Pairwise = 0,
    /// A row of a group fan-out: it goes with the message's one shared ciphertext
    /// (`outbox_shared`), and its own payload is empty.
    Fanout = 1,
}

impl RowKind {
    /// The code stored in the `kind` column.
    pub(crate) fn code(self) -> i64 {
        i64::from(self as u8)
    }
}

/// One row of a lane, as read.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct LaneRow {
    /// The row's id: its place in the lane.
    pub row: i64,
    /// The message it carries, or `None` for a control row (a receipt, a resend request).
    pub message: Option<MessageId>,
    /// Recipient and ciphertext.
    pub delivery: Delivery,
    /// Failed attempts so far.
    pub attempts: u32,
    /// When it is due.
    pub next_attempt_ms: i64,
}

/// The devices whose lane's first row is due ([`Store::due_lanes`]).
pub(crate) const DUE_LANES_SQL: &str = "SELECT o.recipient_device FROM outbox o \
     WHERE o.id IN (SELECT min(id) FROM outbox WHERE kind = 0 /* Pairwise */ GROUP BY recipient_device) \
     AND o.next_attempt_ms <= ?1 ORDER BY o.next_attempt_ms, o.id LIMIT ?2";

impl Store {
    /// The recipient devices whose lane's first row is due at `now_ms`, most overdue first,
    /// at most `limit` (capped at [`MAX_PAGE_SIZE`]).
    pub fn due_lanes(&self, now_ms: i64, limit: u32) -> Result<Vec<String>, ReadError> {
        const OP: &str = "read due lanes";
        self.conn
            .prepare_cached(DUE_LANES_SQL)
            .and_then(|mut s| {
                s.query_map(params![now_ms, limit.clamp(1, MAX_PAGE_SIZE)], |r| r.get(0))?
                    .collect()
            })
            .read_ctx(OP)
    }

    /// The first `limit` rows of a device's lane (capped at [`MAX_PAGE_SIZE`]), in the order
    /// they must be sent.
    pub fn lane(&self, device: &str, limit: u32) -> Result<Vec<LaneRow>, ReadError> {
        self.lane_rows("read a lane", device, None, 0, limit)
    }

    /// Like [`Store::lane`] (`relay: None`) or [`Store::lane_at`], the rows after row
    /// `after` only: those queued behind the rows a running lane task already has.
    pub fn lane_after(
        &self,
        device: &str,
        relay: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LaneRow>, ReadError> {
        self.lane_rows("read the end of a lane", device, relay, after, limit)
    }

    /// The rows of a device's lane, in order, that `relay` has not taken yet (all of them
    /// for `None`), each with its attempts and due time at that relay (the row's own until
    /// the relay was first tried), after row `after` (0: from the first).
    pub(crate) fn lane_rows(
        &self,
        op: &'static str,
        device: &str,
        relay: Option<&str>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<LaneRow>, ReadError> {
        type Raw = (i64, Option<Vec<u8>>, String, String, Vec<u8>, i64, i64);
        let rows: Vec<Raw> = self
            .conn
            .prepare_cached(
                "SELECT o.id, m.id, o.recipient_user, o.recipient_device, o.payload, \
                 CASE WHEN r.row IS NULL THEN o.attempts ELSE r.attempts END, \
                 CASE WHEN r.row IS NULL THEN o.next_attempt_ms ELSE r.next_attempt_ms END \
                 FROM outbox o LEFT JOIN messages m ON m.rowid = o.message \
                 LEFT JOIN outbox_relays r ON r.row = o.id AND r.relay = ?3 \
                 WHERE o.recipient_device = ?1 AND o.kind = 0 /* Pairwise */ AND o.id > ?4 \
                 AND coalesce(r.taken, 0) = 0 ORDER BY o.id LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(
                    params![device, limit.clamp(1, MAX_PAGE_SIZE), relay, after],
                    |r| {
                        Ok((
                            r.get(0)?,
                            r.get(1)?,
                            r.get(2)?,
                            r.get(3)?,
                            r.get(4)?,
                            r.get(5)?,
                            r.get(6)?,
                        ))
                    },
                )?
                .collect()
            })
            .read_ctx(op)?;
        rows.into_iter()
            .map(
                |(row, message, recipient_user, recipient_device, payload, attempts, next)| {
                    Ok(LaneRow {
                        row,
                        message: message.map(|m| message_id(op, &m)).transpose()?,
                        delivery: Delivery {
                            recipient_user,
                            recipient_device,
                            payload,
                        },
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        next_attempt_ms: next,
                    })
                },
            )
            .collect()
    }

    /// How many rows wait in a device's lane (without reading them).
    pub fn lane_depth(&self, device: &str) -> Result<u64, ReadError> {
        const OP: &str = "count a lane";
        let n: i64 = self
            .conn
            .prepare_cached(
                "SELECT count(*) FROM outbox WHERE recipient_device = ?1 AND kind = 0 /* Pairwise */",
            )
            .and_then(|mut s| s.query_row([device], |r| r.get(0)))
            .read_ctx(OP)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// How many rows the outbox holds (lanes and fan-outs): what is not yet handed to a relay
    /// or a peer.
    pub fn outbox_depth(&self) -> Result<u64, ReadError> {
        const OP: &str = "count the outbox";
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM outbox")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .read_ctx(OP)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Whether a pairwise message with this digest from `peer_device` was read before
    /// ([`Tx::mark_pairwise_seen`]).
    pub fn pairwise_seen(&self, peer_device: &str, digest: &[u8; 16]) -> Result<bool, ReadError> {
        const OP: &str = "look up a pairwise message";
        self.conn
            .prepare_cached("SELECT 1 FROM pairwise_seen WHERE peer_device = ?1 AND digest = ?2")
            .and_then(|mut s| {
                s.query_row(params![peer_device, digest.as_slice()], |_| Ok(()))
                    .optional()
            })
            .map(|r| r.is_some())
            .read_ctx(OP)
    }
}

impl Tx<'_> {
    /// Queues pairwise ciphertexts that belong to no message (receipts, resend requests) at
    /// the end of their devices' lanes, due at `now_ms`.
    pub fn queue_control(
        &mut self,
        deliveries: &[Delivery],
        now_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "queue control rows";
        if deliveries.iter().any(|d| d.payload.is_empty()) {
            return Err(WriteError::OutOfRange {
                op: OP,
                field: "payload",
                reason: "a lane row needs a payload",
            });
        }
        self.insert_outbox_rows(OP, RowKind::Pairwise, None, deliveries, now_ms, now_ms)?;
        Ok(())
    }

    /// Removes delivered lane rows. Returns the messages that became [`crate::Status::Sent`]
    /// (every row of theirs gone, or taken by a relay: see `Tx::settle_if_sent`).
    pub fn ack_rows(&mut self, rows: &[i64]) -> Result<Vec<MessageId>, WriteError> {
        const OP: &str = "acknowledge lane rows";
        let mut done = Vec::new();
        for row in rows {
            let message: Option<Option<(i64, Vec<u8>)>> = self
                .tx
                .prepare_cached(
                    "SELECT o.message, m.id FROM outbox o LEFT JOIN messages m ON m.rowid = o.message WHERE o.id = ?1",
                )
                .and_then(|mut s| {
                    s.query_row([row], |r| {
                        let rowid: Option<i64> = r.get(0)?;
                        let id: Option<Vec<u8>> = r.get(1)?;
                        Ok(rowid.zip(id))
                    })
                    .optional()
                })
                .write_ctx(OP)?;
            let Some(message) = message else {
                continue; // already gone
            };
            self.tx
                .prepare_cached("DELETE FROM outbox WHERE id = ?1")
                .and_then(|mut s| s.execute([row]))
                .write_ctx(OP)?;
            let Some((rowid, id)) = message else {
                continue; // a control row
            };
            let id = message_id(OP, &id)?;
            if self.settle_if_sent(OP, rowid, id)?.sent_now && !done.contains(&id) {
                done.push(id);
            }
        }
        Ok(done)
    }

    /// Removes every row still queued for `device` (a revoked device: nothing more goes to
    /// it), lane and fan-out rows alike. Returns the messages that became
    /// [`crate::Status::Sent`] by it (as if delivered: what is left of them went elsewhere).
    pub fn drop_device_rows(&mut self, device: &str) -> Result<Vec<MessageId>, WriteError> {
        const OP: &str = "drop a device's rows";
        let rows: Vec<i64> = self
            .tx
            .prepare_cached("SELECT id FROM outbox WHERE recipient_device = ?1 ORDER BY id")
            .and_then(|mut s| s.query_map([device], |r| r.get(0))?.collect())
            .write_ctx(OP)?;
        self.ack_rows(&rows)
    }

    /// Counts a failed attempt on a lane row and sets when it is due next.
    pub fn reschedule_row(&mut self, row: i64, next_attempt_ms: i64) -> Result<(), WriteError> {
        const OP: &str = "reschedule a lane row";
        self.tx
            .prepare_cached(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = ?2 WHERE id = ?1",
            )
            .and_then(|mut s| s.execute(params![row, next_attempt_ms]))
            .write_ctx(OP)?;
        Ok(())
    }

    /// Records that a pairwise message with this digest from `peer_device` was read (in the
    /// transaction that saves the session state it moved).
    pub fn mark_pairwise_seen(
        &mut self,
        peer_device: &str,
        digest: &[u8; 16],
        now_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "record a pairwise message read";
        self.tx
            .prepare_cached(
                "INSERT INTO pairwise_seen (peer_device, digest, seen_at_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![peer_device, digest.as_slice(), now_ms]))
            .write_ctx(OP)?;
        Ok(())
    }

    /// Forgets digests recorded before `before_ms` (older than any copy a relay still
    /// keeps). Returns how many went.
    pub fn prune_pairwise_seen(&mut self, before_ms: i64) -> Result<u64, WriteError> {
        const OP: &str = "prune the pairwise ledger";
        let n = self
            .tx
            .prepare_cached("DELETE FROM pairwise_seen WHERE seen_at_ms < ?1")
            .and_then(|mut s| s.execute([before_ms]))
            .write_ctx(OP)?;
        Ok(n as u64)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::{Body, ConversationId, ConversationKind, Message, Status, StorageKey, Unlock};

    /// An empty store in a temporary directory.
    pub(crate) fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut k = [3u8; 32];
        let key = StorageKey::from_bytes(&mut k);
        let store = Store::open(&dir.path().join("t.db"), Unlock::Key(&key)).unwrap();
        (dir, store)
    }

    /// Own text `id` to Bob, pending.
    pub(crate) fn own(id: u8) -> Message {
        Message {
            id: MessageId([id; 16]),
            conversation: ConversationId("bob".into()),
            sender_user: "me".into(),
            sender_device: "d0".into(),
            lamport: u64::from(id),
            seq: u64::from(id),
            sent_at_ms: 1,
            received_at_ms: 1,
            own: true,
            status: Status::Pending,
            body: Body::Text(format!("m{id}")),
            edited_at_ms: None,
        }
    }

    /// A row for Bob's `device` whose payload is four `byte`s.
    pub(crate) fn to(device: &str, byte: u8) -> Delivery {
        Delivery {
            recipient_user: "bob".into(),
            recipient_device: device.into(),
            payload: vec![byte; 4],
        }
    }

    /// A cached statement is compiled once, whatever values are bound to it later. SQLite
    /// (built with STAT4) would otherwise compile again, on each run with new values, every
    /// statement whose plan might depend on them, such as one with `LIMIT ?`: the query
    /// planner stability guarantee set at open prevents that.
    #[test]
    fn cached_statements_are_not_compiled_again_for_new_values() {
        use rusqlite::StatementStatus::{RePrepare, Run};
        let (_dir, mut store) = store();
        let conv = ConversationId("bob".into());
        store
            .transaction(|tx| {
                tx.ensure_conversation(&conv, ConversationKind::Direct, Some("Bob"), 1)?;
                tx.record_outgoing(&own(1), &[], &[to("b1", 1), to("b2", 1)], 0)
            })
            .unwrap();
        for i in 1..=5 {
            assert_eq!(store.lane_devices("", i).unwrap().len(), 2.min(i as usize));
            assert_eq!(
                store.due_lanes(i64::from(i), i).unwrap().len(),
                2.min(i as usize)
            );
        }
        // The statements behind `lane_devices` and `due_lanes`, as cached.
        for sql in [crate::outbox_relays::LANE_DEVICES_SQL, DUE_LANES_SQL] {
            let s = store.conn.prepare_cached(sql).unwrap();
            assert_eq!(s.get_status(Run), 5, "the cached statement ran: {sql}");
            assert_eq!(s.get_status(RePrepare), 0, "compiled again: {sql}");
        }
    }

    /// Which own messages wait for a session is asked per conversation: it is read through
    /// the partial index of own pending messages, never by a scan of every message stored,
    /// and one conversation's waiting texts do not hide another's.
    #[test]
    fn messages_awaiting_encryption_are_found_without_a_scan() {
        use rusqlite::StatementStatus::{FullscanStep, Run};
        let (_dir, mut store) = store();
        let conv = ConversationId("bob".into());
        let carol = ConversationId("carol".into());
        store
            .transaction(|tx| {
                tx.ensure_conversation(&conv, ConversationKind::Direct, Some("Bob"), 1)?;
                for id in 1..=200 {
                    tx.record_outgoing(&own(id), &[], &[to("b1", id)], 0)?;
                }
                Ok::<_, WriteError>(())
            })
            .unwrap();
        let rows: Vec<i64> = store
            .lane("b1", 200)
            .unwrap()
            .iter()
            .map(|r| r.row)
            .collect();
        assert_eq!(
            store.transaction(|tx| tx.ack_rows(&rows)).unwrap().len(),
            200
        );
        // A group message with no outbox row (owed to its members) is not waiting here.
        // Carol's waiting texts are older than Bob's and do not come with them.
        let group = ConversationId("g1".into());
        store
            .transaction(|tx| {
                tx.ensure_conversation(&carol, ConversationKind::Direct, Some("Carol"), 1)?;
                for id in 204..=206 {
                    let m = Message {
                        conversation: carol.clone(),
                        lamport: u64::from(id - 203),
                        seq: u64::from(id - 203),
                        ..own(id)
                    };
                    tx.record_outgoing(&m, &[], &[], 0)?;
                }
                tx.record_outgoing(&own(201), &[], &[], 0)?;
                tx.ensure_conversation(&group, ConversationKind::Group, Some("G"), 1)?;
                tx.record_outgoing(
                    &Message {
                        conversation: group.clone(),
                        ..own(203)
                    },
                    &[],
                    &[],
                    0,
                )?;
                tx.record_outgoing(&own(202), &[], &[], 0)
            })
            .unwrap();
        for _ in 0..2 {
            let waiting = store.awaiting_encryption("d0", &conv, 10).unwrap();
            let ids: Vec<MessageId> = waiting.iter().map(|m| m.id).collect();
            assert_eq!(ids, [MessageId([201; 16]), MessageId([202; 16])]);
        }
        let page = store.awaiting_encryption("d0", &carol, 2).unwrap();
        let ids: Vec<MessageId> = page.iter().map(|m| m.id).collect();
        assert_eq!(ids, [MessageId([204; 16]), MessageId([205; 16])], "a page");
        assert_eq!(
            store.awaiting_conversations("d0").unwrap(),
            [conv.clone(), carol.clone()]
        );
        assert!(store.awaiting_conversations("d1").unwrap().is_empty());
        for (sql, runs) in [
            (crate::record::awaiting_sql(), 3),
            (crate::record::awaiting_conversations_sql(), 2),
        ] {
            let s = store.conn.prepare_cached(&sql).unwrap();
            assert_eq!(s.get_status(Run), runs, "the statement ran: {sql}");
            assert_eq!(
                s.get_status(FullscanStep),
                0,
                "a step of a full scan: {sql}"
            );
        }
    }

    #[test]
    fn lanes_keep_encryption_order_and_only_their_head_is_due() {
        let (_dir, mut store) = store();
        let conv = ConversationId("bob".into());
        store
            .transaction(|tx| {
                tx.ensure_conversation(&conv, ConversationKind::Direct, Some("Bob"), 1)?;
                tx.record_outgoing(&own(1), &[], &[to("b1", 1), to("b2", 1)], 0)?;
                tx.queue_control(&[to("b1", 9)], 0)?;
                tx.record_outgoing(&own(2), &[], &[to("b1", 2)], 0)
            })
            .unwrap();
        let lane = store.lane("b1", 10).unwrap();
        let order: Vec<u8> = lane.iter().map(|r| r.delivery.payload[0]).collect();
        assert_eq!(order, [1, 9, 2], "ratchet order, control row in its place");
        assert_eq!(lane[1].message, None);
        assert_eq!(store.due_lanes(0, 10).unwrap().len(), 2);
        assert_eq!(store.outbox_depth().unwrap(), 4);
        // A failed head holds its lane back; nothing behind it becomes due on its own.
        store
            .transaction(|tx| tx.reschedule_row(lane[0].row, 1_000))
            .unwrap();
        assert_eq!(store.due_lanes(10, 10).unwrap(), ["b2"]);
        assert_eq!(store.due_lanes(1_000, 10).unwrap().len(), 2);
        // Acknowledging: a message is sent once its last row went; control rows just go.
        let done = store
            .transaction(|tx| tx.ack_rows(&[lane[0].row, lane[1].row]))
            .unwrap();
        assert!(done.is_empty(), "message 1 still waits for b2");
        let b2 = store.lane("b2", 10).unwrap();
        let done = store
            .transaction(|tx| tx.ack_rows(&[b2[0].row, lane[2].row, lane[2].row]))
            .unwrap();
        assert_eq!(done, [MessageId([1; 16]), MessageId([2; 16])]);
        assert_eq!(
            store.message(MessageId([2; 16])).unwrap().unwrap().status,
            Status::Sent
        );
        assert_eq!(store.outbox_depth().unwrap(), 0);
        // Ids are not reused after the lane empties.
        store
            .transaction(|tx| tx.queue_control(&[to("b1", 7)], 0))
            .unwrap();
        assert!(store.lane("b1", 1).unwrap()[0].row > lane[2].row);
        // Control rows need a payload.
        let empty = Delivery {
            payload: Vec::new(),
            ..to("b1", 0)
        };
        assert!(
            store
                .transaction(|tx| tx.queue_control(&[empty], 0))
                .is_err()
        );
    }

    #[test]
    fn rows_are_told_apart_by_the_kind_stored_with_them() {
        let (_dir, mut store) = store();
        let conv = ConversationId("bob".into());
        let shared = [
            ("bob".to_owned(), "b2".to_owned()),
            ("bob".to_owned(), "b3".to_owned()),
        ];
        store
            .transaction(|tx| {
                tx.ensure_conversation(&conv, ConversationKind::Group, Some("G"), 1)?;
                // b1 lacks the sender key: it gets its own pairwise row; b2 and b3 share one.
                tx.record_outgoing_fanout(&own(1), &[], &[to("b1", 1)], b"megolm", &shared, 0)?;
                tx.queue_control(&[to("b2", 9)], 0)
            })
            .unwrap();
        let kinds: Vec<(String, i64)> = store
            .conn
            .prepare("SELECT recipient_device, kind FROM outbox ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let pairwise = RowKind::Pairwise.code();
        let fanout = RowKind::Fanout.code();
        assert_eq!(
            kinds,
            [
                ("b1".to_owned(), pairwise),
                ("b2".to_owned(), fanout),
                ("b3".to_owned(), fanout),
                ("b2".to_owned(), pairwise),
            ]
        );
        assert_eq!((pairwise, fanout), (0, 1), "the codes are on disk");
        // The lanes hold the pairwise rows only; the fan-out rows come with the shared payload.
        assert_eq!(store.lane("b2", 10).unwrap()[0].delivery.payload, [9; 4]);
        assert_eq!(store.lane_depth("b2").unwrap(), 1);
        assert_eq!(store.lane_depth("b3").unwrap(), 0);
        assert_eq!(store.due_lanes(0, 10).unwrap().len(), 2);
        let fan = store.due_fanout(0, 10).unwrap();
        let to_devices: Vec<&str> = fan
            .iter()
            .map(|e| e.delivery.recipient_device.as_str())
            .collect();
        assert_eq!(to_devices, ["b2", "b3"]);
        assert!(fan.iter().all(|e| e.delivery.payload == b"megolm"));
    }

    #[test]
    fn sequences_and_resend_candidates_follow_what_is_held_and_queued() {
        let (_dir, mut store) = store();
        let conv = ConversationId("bob".into());
        let seqs = |store: &Store| {
            (
                store.contiguous_sequence(&conv, "d0").unwrap(),
                store.max_sequence(&conv, "d0").unwrap(),
            )
        };
        assert_eq!(seqs(&store), (0, 0));
        store
            .transaction(|tx| {
                tx.ensure_conversation(&conv, ConversationKind::Direct, Some("Bob"), 1)?;
                // 2 and 3 without 1: nothing is held in order yet.
                tx.record_outgoing(&own(2), &[], &[to("b1", 2)], 0)?;
                tx.record_outgoing(&own(3), &[], &[], 0)
            })
            .unwrap();
        assert_eq!(seqs(&store), (0, 3));
        store
            .transaction(|tx| {
                tx.record_outgoing(&own(1), &[], &[], 0)?;
                tx.record_outgoing(&own(5), &[], &[], 0)
            })
            .unwrap();
        assert_eq!(seqs(&store), (3, 5), "1..=3 held, 4 missing");
        // 3 and 5 are pending with no row at all (waiting for a session) and 2 is still
        // queued for b1: of 1..=5 only 1 goes again to b1 (it is sent: its rows went).
        store
            .transaction(|tx| tx.advance_status(MessageId([1; 16]), Status::Sent))
            .unwrap();
        let ids = |range| -> Vec<MessageId> {
            store
                .resend_candidates(&conv, "d0", range, "b1", (100, false))
                .unwrap()
                .iter()
                .map(|m| m.id)
                .collect()
        };
        assert_eq!(ids((0, u64::MAX)), [MessageId([1; 16])]);
        assert!(ids((1, u64::MAX)).is_empty(), "after_seq is exclusive");
        // For another device, 2 (pending but encrypted: it has a row) goes too.
        let other: Vec<MessageId> = store
            .resend_candidates(&conv, "d0", (0, 2), "b2", (100, false))
            .unwrap()
            .iter()
            .map(|m| m.id)
            .collect();
        assert_eq!(other, [MessageId([1; 16]), MessageId([2; 16])]);
    }

    #[test]
    fn a_group_message_goes_again_only_to_a_device_given_its_key() {
        let (_dir, mut store) = store();
        let conv = ConversationId("g".into());
        store
            .transaction(|tx| {
                tx.ensure_conversation(&conv, ConversationKind::Group, Some("G"), 1)?;
                for n in 1..=4 {
                    let m = Message {
                        conversation: conv.clone(),
                        ..own(n)
                    };
                    tx.record_outgoing(&m, &[], &[], 0)?;
                    tx.advance_status(MessageId([n; 16]), Status::Sent)?;
                }
                // 1 and 2 under key s1, 3 and 4 under s2; b1 was given s1 only, b2 both, b4
                // (linked later) s2 with 4, and b5 s1 before shares named their message.
                for n in 1..=4 {
                    tx.note_group_message_key(
                        MessageId([n; 16]),
                        if n <= 2 { "s1" } else { "s2" },
                    )?;
                }
                let with = |n: u8| Some(MessageId([n; 16]));
                tx.share_sender_key("s1", &["b1".into(), "b2".into()], with(1))?;
                tx.share_sender_key("s2", &["b2".into()], with(3))?;
                tx.share_sender_key("s2", &["b4".into()], with(4))?;
                tx.share_sender_key("s1", &["b5".into()], None)
            })
            .unwrap();
        let ids = |device: &str, group: bool| -> Vec<u8> {
            store
                .resend_candidates(&conv, "d0", (0, u64::MAX), device, (100, group))
                .unwrap()
                .iter()
                .map(|m| m.id.0[0])
                .collect()
        };
        assert_eq!(ids("b1", true), [1, 2]);
        assert_eq!(ids("b2", true), [1, 2, 3, 4]);
        assert!(ids("b3", true).is_empty(), "never given a key");
        assert_eq!(
            ids("b4", true),
            [4],
            "not what went before it was given the key"
        );
        assert!(ids("b5", true).is_empty(), "from when is not known");
        assert_eq!(
            ids("b3", false),
            [1, 2, 3, 4],
            "a direct conversation has no keys"
        );
        // The run held from the first number held, where a late member starts.
        assert_eq!(store.contiguous_from_first(&conv, "d0", 0).unwrap(), 4);
        let other = ConversationId("h".into());
        store
            .transaction(|tx| {
                tx.ensure_conversation(&other, ConversationKind::Group, Some("H"), 1)?;
                for n in [7, 8, 10] {
                    let m = Message {
                        conversation: other.clone(),
                        id: MessageId([n + 100; 16]),
                        ..own(n)
                    };
                    tx.record_outgoing(&m, &[], &[], 0)?;
                }
                Ok::<_, crate::WriteError>(())
            })
            .unwrap();
        assert_eq!(store.contiguous_sequence(&other, "d0").unwrap(), 0);
        assert_eq!(store.contiguous_from_first(&other, "d0", 0).unwrap(), 8);
        // Past a gap given up on: from the first held above it.
        assert_eq!(store.contiguous_from_first(&other, "d0", 8).unwrap(), 10);
        assert_eq!(store.contiguous_from_first(&other, "d0", 9).unwrap(), 10);
        assert_eq!(store.contiguous_from_first(&other, "d0", 12).unwrap(), 12);
        assert_eq!(
            store
                .contiguous_from_first(&ConversationId("none".into()), "d0", 0)
                .unwrap(),
            0
        );
    }

    #[test]
    fn an_unreceipted_tail_is_texts_sent_past_the_last_receipted_one() {
        let (_dir, mut store) = store();
        let conv = ConversationId("bob".into());
        let status = |store: &mut Store, n: u8, to: Status| {
            store
                .transaction(|tx| tx.advance_status(MessageId([n; 16]), to))
                .unwrap();
        };
        store
            .transaction(|tx| {
                tx.ensure_conversation(&conv, ConversationKind::Direct, Some("Bob"), 1)?;
                for n in 1..=6 {
                    tx.record_outgoing(&own(n), &[], &[], 0)?;
                }
                Ok::<_, crate::WriteError>(())
            })
            .unwrap();
        let tail = |store: &Store, device: &str, before: i64| {
            store.unreceipted_tail(&conv, device, before).unwrap()
        };
        assert_eq!(tail(&store, "d0", 10), None, "nothing went yet");
        status(&mut store, 1, Status::Delivered);
        status(&mut store, 2, Status::Read);
        for n in [3, 4, 5] {
            status(&mut store, n, Status::Sent);
        }
        // 3 to 5 went and no receipt came; 6 waits to go (it is not counted as sent).
        assert_eq!(tail(&store, "d0", 10), Some((3, 5)));
        assert_eq!(tail(&store, "d0", 1), None, "too recent");
        assert_eq!(tail(&store, "d1", 10), None, "another device's");
        assert_eq!(
            store
                .unreceipted_tail(&ConversationId("none".into()), "d0", 10)
                .unwrap(),
            None
        );
        let ids: Vec<u8> = store
            .ids_in_sequence(&conv, "d0", (2, 4), 100)
            .unwrap()
            .iter()
            .map(|id| id.0[0])
            .collect();
        assert_eq!(ids, [2, 3, 4]);
        assert_eq!(
            store.ids_in_sequence(&conv, "d0", (2, 4), 1).unwrap().len(),
            1
        );
        assert!(
            store
                .ids_in_sequence(&conv, "d1", (0, 9), 100)
                .unwrap()
                .is_empty()
        );
        // A receipt for 4: 3 is below the last receipted one (a receipt of its own was lost).
        status(&mut store, 4, Status::Delivered);
        assert_eq!(tail(&store, "d0", 10), Some((5, 5)));
        status(&mut store, 5, Status::Delivered);
        assert_eq!(tail(&store, "d0", 10), None);
    }

    #[test]
    fn the_pairwise_ledger_remembers_and_forgets_by_age() {
        let (_dir, mut store) = store();
        let d = [5u8; 16];
        assert!(!store.pairwise_seen("b1", &d).unwrap());
        store
            .transaction(|tx| {
                tx.mark_pairwise_seen("b1", &d, 10)?;
                tx.mark_pairwise_seen("b1", &d, 20)
            })
            .unwrap();
        assert!(store.pairwise_seen("b1", &d).unwrap());
        assert!(!store.pairwise_seen("b2", &d).unwrap());
        assert_eq!(
            store.transaction(|tx| tx.prune_pairwise_seen(10)).unwrap(),
            0
        );
        assert_eq!(
            store.transaction(|tx| tx.prune_pairwise_seen(11)).unwrap(),
            1
        );
        assert!(!store.pairwise_seen("b1", &d).unwrap());
    }
}
