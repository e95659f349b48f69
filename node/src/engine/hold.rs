//! Holding back a received message whose per-sender predecessor is missing (DESIGN.md,
//! "Delivery, ordering, duplicates").
//!
//! Every received message is stored at once (durability does not wait); the hold is about
//! display and events only. A message with sequence number `s > 1` whose predecessor `s - 1`
//! from the same sender device is not in the conversation yet is held: it is kept out of
//! `message` events and out of history until either the predecessor arrives (then both are
//! released, in order) or [`HOLD_BACK`] passes (then it is released with `gap_before`).
//!
//! The in-memory set drives events. History is filtered at read time from what is stored
//! (the predecessor's presence and the message's `received_at`), so a restart loses nothing:
//! a held message is simply shown once its hold has passed, with the gap marked.

use std::collections::HashSet;
use std::time::Instant;

use tern_store::{Message, MessageId, ReadError, Store};

use super::message_info;
use crate::{consts::HOLD_BACK, types::MessageInfo};

/// A held message and when its hold ends.
#[derive(Debug)]
struct Held {
    message: Message,
    until: Instant,
}

/// The messages held back now.
#[derive(Debug, Default)]
pub(crate) struct HoldBack {
    held: Vec<Held>,
}

/// Whether `m` needs no predecessor or its predecessor is stored. In a group, a sender's
/// first message this device holds needs none: a member who joined late never gets what was
/// sent before.
fn predecessor_stored(store: &Store, m: &Message) -> Result<bool, ReadError> {
    if m.own || m.seq <= 1 || store.has_sequence(&m.conversation, &m.sender_device, m.seq - 1)? {
        return Ok(true);
    }
    let group = store
        .conversation(&m.conversation)?
        .is_some_and(|c| c.kind == tern_store::ConversationKind::Group);
    Ok(group && !store.has_sequence_below(&m.conversation, &m.sender_device, m.seq)?)
}

fn same_sender(a: &Message, b: &Message) -> bool {
    a.conversation == b.conversation && a.sender_device == b.sender_device
}

fn info(m: &Message, gap_before: bool) -> MessageInfo {
    MessageInfo {
        gap_before,
        ..message_info(m)
    }
}

impl HoldBack {
    /// Whether a message is held now.
    pub(crate) fn is_held(&self, id: MessageId) -> bool {
        self.held.iter().any(|h| h.message.id == id)
    }

    /// A message that was just stored (new, not a duplicate): returns what to show now, in
    /// order — nothing if it is held, else it and any held successors it unblocks.
    pub(crate) fn arrived(
        &mut self,
        store: &Store,
        m: Message,
        now: Instant,
    ) -> Result<Vec<MessageInfo>, ReadError> {
        let behind_held = self
            .held
            .iter()
            .any(|h| same_sender(&h.message, &m) && h.message.seq + 1 == m.seq);
        if behind_held || !predecessor_stored(store, &m)? {
            self.held.push(Held {
                message: m,
                until: now + HOLD_BACK,
            });
            return Ok(Vec::new());
        }
        let mut out = vec![info(&m, false)];
        self.release_successors(m, &mut out);
        Ok(out)
    }

    /// After a restart: holds again the messages stored within the last [`HOLD_BACK`] whose
    /// predecessor is still missing, for what remains of their hold, so their release
    /// emits an event as it would have without the restart. `recent` is the newest page of
    /// each recently active conversation.
    pub(crate) fn restore(
        &mut self,
        store: &Store,
        recent: Vec<Message>,
        now_ms: i64,
        now: Instant,
    ) -> Result<(), ReadError> {
        let hold_ms = i64::try_from(HOLD_BACK.as_millis()).unwrap_or(i64::MAX);
        for m in recent {
            let age = now_ms.saturating_sub(m.received_at_ms);
            if m.own || age >= hold_ms || self.is_held(m.id) || predecessor_stored(store, &m)? {
                continue;
            }
            let left = u64::try_from(hold_ms - age).unwrap_or(0);
            self.held.push(Held {
                message: m,
                until: now + std::time::Duration::from_millis(left),
            });
        }
        Ok(())
    }

    /// Releases the held messages whose hold has ended (with the gap marked), each followed
    /// by the held successors it unblocks.
    pub(crate) fn expired(&mut self, now: Instant) -> Vec<MessageInfo> {
        let mut out = Vec::new();
        // Holds end in arrival order, so a predecessor held too is released first.
        while let Some(pos) = self
            .held
            .iter()
            .enumerate()
            .filter(|(_, h)| h.until <= now)
            .min_by_key(|(_, h)| h.until)
            .map(|(i, _)| i)
        {
            let h = self.held.remove(pos);
            out.push(info(&h.message, true));
            self.release_successors(h.message, &mut out);
        }
        out
    }

    /// Moves the held successors of `last` (seq + 1, + 2, ...) to `out`.
    fn release_successors(&mut self, mut last: Message, out: &mut Vec<MessageInfo>) {
        while let Some(pos) = self
            .held
            .iter()
            .position(|h| same_sender(&h.message, &last) && h.message.seq == last.seq + 1)
        {
            let h = self.held.remove(pos);
            out.push(info(&h.message, false));
            last = h.message;
        }
    }
}

/// A page of history as shown: held messages left out, gaps marked. A message is left out
/// while it is held in memory, or (after a restart) while its predecessor is missing and its
/// hold, counted from when it was stored, has not passed; or when its predecessor on this
/// page is left out.
pub(crate) fn visible(
    store: &Store,
    hold: &HoldBack,
    messages: &[Message],
    now_ms: i64,
) -> Result<Vec<MessageInfo>, ReadError> {
    let hold_ms = i64::try_from(HOLD_BACK.as_millis()).unwrap_or(i64::MAX);
    let mut hidden: HashSet<(&str, u64)> = HashSet::new();
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let missing = !predecessor_stored(store, m)?;
        let recent = now_ms.saturating_sub(m.received_at_ms) < hold_ms;
        let behind_hidden = m.seq > 1 && hidden.contains(&(m.sender_device.as_str(), m.seq - 1));
        if hold.is_held(m.id) || (missing && recent) || behind_hidden {
            hidden.insert((m.sender_device.as_str(), m.seq));
            continue;
        }
        out.push(info(m, missing));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tern_store::{
        Body, ConversationId, ConversationKind, Inserted, Page, Status, StorageKey, Unlock,
    };

    use super::*;

    const ALICE: &str = "a11ce";
    const DEVICE: &str = "a11ce-phone";
    /// Wall clock of the first arrival in these tests, ms.
    const T0_MS: i64 = 1_000_000;

    fn open(dir: &std::path::Path) -> Store {
        let mut k = [7u8; 32];
        let key = StorageKey::from_bytes(&mut k);
        Store::open(&dir.join("tern.db"), Unlock::Key(&key)).unwrap()
    }

    fn message(seq: u64, received_at_ms: i64) -> Message {
        let mut id = [0u8; 16];
        id[15] = u8::try_from(seq).unwrap();
        Message {
            id: MessageId(id),
            conversation: ConversationId(ALICE.into()),
            sender_user: ALICE.into(),
            sender_device: DEVICE.into(),
            lamport: seq,
            seq,
            sent_at_ms: received_at_ms,
            received_at_ms,
            own: false,
            status: Status::Received,
            body: Body::Text(format!("m{seq}")),
            edited_at_ms: None,
        }
    }

    /// What the receive path does with a decrypted text: store in one transaction, then
    /// hand a new message to the hold.
    fn receive(
        store: &mut Store,
        hold: &mut HoldBack,
        m: Message,
        now: Instant,
    ) -> Vec<(u64, bool)> {
        receive_in(ConversationKind::Direct, store, hold, m, now)
    }

    /// Like [`receive`] in a group conversation.
    fn receive_in_group(
        store: &mut Store,
        hold: &mut HoldBack,
        m: Message,
        now: Instant,
    ) -> Vec<(u64, bool)> {
        receive_in(ConversationKind::Group, store, hold, m, now)
    }

    fn receive_in(
        kind: ConversationKind,
        store: &mut Store,
        hold: &mut HoldBack,
        m: Message,
        now: Instant,
    ) -> Vec<(u64, bool)> {
        let inserted = store
            .transaction(|tx| -> Result<_, tern_store::WriteError> {
                tx.ensure_conversation(&m.conversation, kind, None, 0)?;
                tx.record_incoming(&m, &[])
            })
            .unwrap();
        if inserted == Inserted::Duplicate {
            return Vec::new();
        }
        shown(hold.arrived(store, m, now).unwrap())
    }

    #[test]
    fn in_a_group_a_senders_first_message_here_is_no_gap_but_later_gaps_are() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut hold = HoldBack::default();
        let t0 = Instant::now();
        // Joined late: the sender's 41 earlier messages were never meant for this device.
        assert_eq!(
            receive_in_group(&mut store, &mut hold, message(42, T0_MS), t0),
            [(42, false)]
        );
        // 44 without 43 is a gap and waits.
        assert!(receive_in_group(&mut store, &mut hold, message(44, T0_MS + 10), t0).is_empty());
        assert_eq!(
            receive_in_group(&mut store, &mut hold, message(43, T0_MS + 20), t0),
            [(43, false), (44, false)]
        );
        let page = store
            .history(&ConversationId(ALICE.into()), Page::Latest, None)
            .unwrap();
        assert_eq!(
            shown(visible(&store, &hold, &page, T0_MS + 30).unwrap()),
            [(42, false), (43, false), (44, false)]
        );
    }

    #[test]
    fn a_hold_cut_short_by_a_restart_still_ends_with_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut hold = HoldBack::default();
        let t0 = Instant::now();
        receive(&mut store, &mut hold, message(1, T0_MS), t0);
        assert!(receive(&mut store, &mut hold, message(3, T0_MS + 500), t0).is_empty());
        // Restart 1 s after 3 arrived: a fresh hold learns of it from the store.
        drop(hold);
        let mut hold = HoldBack::default();
        let page = store
            .history(&ConversationId(ALICE.into()), Page::Latest, None)
            .unwrap();
        let t1 = Instant::now();
        hold.restore(&store, page, T0_MS + 1500, t1).unwrap();
        assert!(hold.is_held(message(3, 0).id));
        assert!(
            hold.expired(t1 + HOLD_BACK / 4).is_empty(),
            "not before its hold ends"
        );
        assert_eq!(shown(hold.expired(t1 + HOLD_BACK)), [(3, true)]);
    }

    fn shown(infos: Vec<MessageInfo>) -> Vec<(u64, bool)> {
        infos.into_iter().map(|i| (i.seq, i.gap_before)).collect()
    }

    fn history(store: &Store, hold: &HoldBack, now_ms: i64) -> Vec<(u64, bool)> {
        let page = store
            .history(&ConversationId(ALICE.into()), Page::Latest, None)
            .unwrap();
        shown(visible(store, hold, &page, now_ms).unwrap())
    }

    #[test]
    fn a_message_waits_for_its_predecessor_then_both_show_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut hold = HoldBack::default();
        let t0 = Instant::now();
        assert_eq!(
            receive(&mut store, &mut hold, message(1, T0_MS), t0),
            [(1, false)]
        );
        // 3 and 4 arrive before 2: held, neither shown nor in history.
        assert!(receive(&mut store, &mut hold, message(3, T0_MS + 10), t0).is_empty());
        assert!(receive(&mut store, &mut hold, message(4, T0_MS + 20), t0).is_empty());
        assert_eq!(history(&store, &hold, T0_MS + 30), [(1, false)]);
        assert!(hold.expired(t0 + HOLD_BACK / 2).is_empty());
        // 2 fills the gap: 2, 3, 4 released in order, no gap marked.
        assert_eq!(
            receive(&mut store, &mut hold, message(2, T0_MS + 40), t0),
            [(2, false), (3, false), (4, false)]
        );
        assert_eq!(
            history(&store, &hold, T0_MS + 50),
            [(1, false), (2, false), (3, false), (4, false)]
        );
        assert!(hold.expired(t0 + HOLD_BACK * 2).is_empty(), "nothing held");
    }

    #[test]
    fn a_held_message_is_shown_with_the_gap_marked_when_the_hold_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let mut hold = HoldBack::default();
        let t0 = Instant::now();
        receive(&mut store, &mut hold, message(1, T0_MS), t0);
        assert!(receive(&mut store, &mut hold, message(3, T0_MS), t0).is_empty());
        assert!(receive(&mut store, &mut hold, message(4, T0_MS), t0).is_empty());
        assert!(
            hold.expired(t0 + HOLD_BACK - Duration::from_millis(1))
                .is_empty()
        );
        assert_eq!(shown(hold.expired(t0 + HOLD_BACK)), [(3, true), (4, false)]);
        let hold_ms = i64::try_from(HOLD_BACK.as_millis()).unwrap();
        assert_eq!(
            history(&store, &hold, T0_MS + hold_ms),
            [(1, false), (3, true), (4, false)]
        );
        // The late predecessor shows on its own; the gap is no longer marked.
        assert_eq!(
            receive(
                &mut store,
                &mut hold,
                message(2, T0_MS + hold_ms),
                t0 + HOLD_BACK
            ),
            [(2, false)]
        );
        assert_eq!(
            history(&store, &hold, T0_MS + hold_ms),
            [(1, false), (2, false), (3, false), (4, false)]
        );
    }

    #[test]
    fn after_a_restart_history_still_holds_then_marks_the_gap() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = open(dir.path());
            let mut hold = HoldBack::default();
            let t0 = Instant::now();
            receive(&mut store, &mut hold, message(1, T0_MS), t0);
            receive(&mut store, &mut hold, message(3, T0_MS), t0);
            receive(&mut store, &mut hold, message(4, T0_MS), t0);
        }
        // A new process: nothing held in memory, the store alone decides.
        let store = open(dir.path());
        let hold = HoldBack::default();
        let hold_ms = i64::try_from(HOLD_BACK.as_millis()).unwrap();
        assert_eq!(history(&store, &hold, T0_MS + hold_ms - 1), [(1, false)]);
        assert_eq!(
            history(&store, &hold, T0_MS + hold_ms),
            [(1, false), (3, true), (4, false)]
        );
    }
}
