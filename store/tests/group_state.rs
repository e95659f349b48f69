//! What the node keeps to run groups: operations, sender-key shares, the stash, owed
//! messages, and fanned-out outbox rows that share one payload.

mod common;

use common::*;
use tern_store::{ConversationKind, Delivery, Inserted, Status};

fn row(user: &str, device: &str, payload: &[u8]) -> Delivery {
    Delivery {
        recipient_user: user.into(),
        recipient_device: device.into(),
        payload: payload.to_vec(),
    }
}

#[test]
fn a_fanned_out_message_stores_its_payload_once_and_every_row_reads_it() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "g", ConversationKind::Group);
    let m = outgoing(1, "g", 1, "hello group");
    let shared: Vec<(String, String)> = (0..300)
        .map(|i| (format!("u{i}"), format!("d{i}")))
        .collect();
    let one = [row("new", "dnew", b"pairwise with key")];
    let inserted = store
        .transaction(|tx| {
            tx.record_outgoing_fanout(&m, &[], &one, b"megolm ciphertext", &shared, 10)
        })
        .unwrap();
    assert_eq!(inserted, Inserted::New);
    // Stored once: the payload appears in one row of outbox_shared, not in 300 outbox rows.
    let conn = raw_connection(&env.path);
    let copies: i64 = conn
        .query_row(
            "SELECT count(*) FROM outbox WHERE length(payload) > 0",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(copies, 1, "only the pairwise row has its own payload");
    let due = store.due_deliveries(i64::MAX, 500).unwrap();
    assert_eq!(due.len(), 301);
    for d in &due {
        let want: &[u8] = if d.delivery.recipient_device == "dnew" {
            b"pairwise with key"
        } else {
            b"megolm ciphertext"
        };
        assert_eq!(d.delivery.payload, want);
    }
    // A repeated id adds nothing.
    let again = store
        .transaction(|tx| tx.record_outgoing_fanout(&m, &[], &one, b"other", &shared, 10))
        .unwrap();
    assert_eq!(again, Inserted::Duplicate);
    assert_eq!(store.due_deliveries(i64::MAX, 500).unwrap().len(), 301);
    // Acknowledging every row (the fan-out in one call, the pairwise one alone) makes the
    // message sent.
    let fanned: Vec<String> = due
        .iter()
        .map(|d| d.delivery.recipient_device.clone())
        .filter(|d| d != "dnew")
        .collect();
    let left = store
        .transaction(|tx| tx.ack_deliveries(m.id, &fanned))
        .unwrap();
    assert_eq!(left, 1);
    assert_eq!(
        store.message(m.id).unwrap().unwrap().status,
        Status::Pending
    );
    let left = store
        .transaction(|tx| tx.ack_delivery(m.id, "dnew"))
        .unwrap();
    assert_eq!(left, 0);
    assert_eq!(store.message(m.id).unwrap().unwrap().status, Status::Sent);
    // With no row left to send it, the shared payload is gone too.
    let shared_left: i64 = conn
        .query_row("SELECT count(*) FROM outbox_shared", [], |r| r.get(0))
        .unwrap();
    assert_eq!(shared_left, 0);
}

#[test]
fn operations_shares_stash_peers_and_owed_messages_survive_a_reopen() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "g", ConversationKind::Group);
    let m = outgoing(7, "g", 3, "for a member offline");
    store
        .transaction(|tx| -> Result<(), tern_store::WriteError> {
            tx.record_outgoing(&m, &[], &[], 1)?;
            assert!(tx.save_group_op("g", b"hash-1", b"op one", 1)?);
            assert!(
                !tx.save_group_op("g", b"hash-1", b"op one", 2)?,
                "a repeat is not new"
            );
            tx.set_group_sender_key("g", "session-a", 4)?;
            tx.share_sender_key("session-a", &["d1".into(), "d2".into(), "d1".into()], None)?;
            tx.save_group_peer("u9", b"signed list")?;
            tx.owe_group_message(m.id, "u9", b"key as of m", b"ciphertext of m", 5)?;
            for i in 0..5u8 {
                // Full at 3: what comes later is refused (left at the relay), never evicting.
                assert_eq!(
                    tx.stash_group_message("dev", &[i], 10 + i64::from(i), 3, 100)?,
                    i < 3
                );
            }
            Ok(())
        })
        .unwrap();
    drop(store);
    let mut store = open(&env.path);
    assert_eq!(
        store.group_ops().unwrap(),
        vec![("g".into(), b"op one".to_vec())]
    );
    assert_eq!(
        store.group_sender_key("g").unwrap(),
        Some(("session-a".into(), 4))
    );
    let mut shares = store.sender_key_shares("session-a").unwrap();
    shares.sort();
    assert_eq!(shares, vec!["d1".to_owned(), "d2".to_owned()]);
    assert_eq!(
        store.group_peers().unwrap(),
        vec![("u9".into(), b"signed list".to_vec())]
    );
    // The stash keeps the first 3.
    let stashed = store.stashed_group_messages(None, 100).unwrap();
    assert!(
        store
            .stashed_group_messages(Some("other"), 100)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .stashed_group_messages(Some("dev"), 100)
            .unwrap()
            .len(),
        3
    );
    let payloads: Vec<Vec<u8>> = stashed.iter().map(|s| s.payload.clone()).collect();
    assert_eq!(payloads, vec![vec![0], vec![1], vec![2]]);
    let owed = store.owed_group_messages(None, 10).unwrap();
    assert_eq!(owed.len(), 1);
    assert_eq!(owed[0].message_id, m.id);
    assert_eq!(owed[0].distribution.as_slice(), b"key as of m");
    assert!(
        !format!("{:?}", owed[0]).contains("key as of"),
        "Debug hides the key"
    );
    store
        .transaction(|tx| -> Result<(), tern_store::WriteError> {
            tx.settle_owed_group_message(m.id, "u9")?;
            tx.unstash_group_message(stashed[0].id)
        })
        .unwrap();
    assert!(store.owed_group_messages(None, 10).unwrap().is_empty());
    assert_eq!(store.stashed_group_messages(None, 100).unwrap().len(), 2);
    // Deleting the message drops what it owed.
    store
        .transaction(|tx| tx.owe_group_message(m.id, "u8", b"k", b"c", 6))
        .unwrap();
    store.transaction(|tx| tx.delete_message(m.id)).unwrap();
    assert!(store.owed_group_messages(None, 10).unwrap().is_empty());
}

#[test]
fn owed_messages_are_read_in_pages_oldest_first_and_in_owed_order_for_each_member() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "g", ConversationKind::Group);
    let a = outgoing(1, "g", 1, "first");
    let b = outgoing(2, "g", 2, "second");
    store
        .transaction(|tx| -> Result<(), tern_store::WriteError> {
            tx.insert_message(&a)?;
            tx.insert_message(&b)?;
            // Owed out of order: the later message first at one time, then the earlier one.
            for u in ["u3", "u1", "u2"] {
                tx.owe_group_message(b.id, u, b"k", b"c2", 7)?;
            }
            for u in ["u2", "u1"] {
                tx.owe_group_message(a.id, u, b"k", b"c1", 5)?;
            }
            Ok(())
        })
        .unwrap();
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = store.owed_group_messages(after.as_ref(), 2).unwrap();
        assert!(page.len() <= 2);
        let Some(last) = page.last() else { break };
        after = Some(last.position.clone());
        seen.extend(page.iter().map(|o| (o.message_id, o.user_id.clone())));
    }
    let want: Vec<_> = [
        (a.id, "u1"),
        (a.id, "u2"),
        (b.id, "u1"),
        (b.id, "u2"),
        (b.id, "u3"),
    ]
    .into_iter()
    .map(|(m, u)| (m, u.to_string()))
    .collect();
    assert_eq!(
        seen, want,
        "every row once, oldest first, by member within a message"
    );
}

#[test]
fn one_device_cannot_fill_the_stash() {
    let env = env();
    let mut store = open(&env.path);
    let kept = store
        .transaction(|tx| {
            let mut kept = Vec::new();
            for (device, payload) in [("loud", 1u8), ("loud", 2), ("loud", 3), ("quiet", 4)] {
                kept.push(tx.stash_group_message(device, &[payload], 10, 100, 2)?);
            }
            Ok::<_, tern_store::WriteError>(kept)
        })
        .unwrap();
    // Past its own cap a device gets nothing kept (its mail stays at the relay); others do.
    assert_eq!(kept, [true, true, false, true]);
    let payloads: Vec<Vec<u8>> = store
        .stashed_group_messages(None, 100)
        .unwrap()
        .into_iter()
        .map(|s| s.payload)
        .collect();
    assert_eq!(payloads, vec![vec![1], vec![2], vec![4]]);
}

#[test]
fn a_sent_key_is_found_as_each_device_was_first_given_it_until_it_is_forgotten() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "g", ConversationKind::Group);
    let first = outgoing(1, "g", 1, "opens the key");
    let later = outgoing(2, "g", 2, "a member added");
    let kept = |m: &tern_store::Message, key: &[u8]| tern_store::SentKey {
        session_id: "s".into(),
        message_id: m.id,
        group_id: "g".into(),
        distribution: zeroize::Zeroizing::new(key.to_vec()),
        ciphertext: format!("ciphertext of {}", m.seq).into_bytes(),
    };
    store
        .transaction(|tx| -> Result<(), tern_store::WriteError> {
            tx.record_outgoing(&first, &[], &[], 1)?;
            tx.record_outgoing(&later, &[], &[], 2)?;
            tx.keep_sent_key(&kept(&first, b"key at 0"), 10)?;
            tx.share_sender_key("s", &["d1".into()], Some(first.id))?;
            tx.keep_sent_key(&kept(&later, b"key at 1"), 20)?;
            // d1 had it already: it stays with the first message; d2 is new.
            tx.share_sender_key("s", &["d1".into(), "d2".into()], Some(later.id))?;
            // A share from before keys were kept names no message.
            tx.share_sender_key("s", &["d3".into()], None)?;
            Ok(())
        })
        .unwrap();
    let d1 = store.sent_key_for("s", "d1").unwrap().unwrap();
    assert_eq!(d1, kept(&first, b"key at 0"));
    let d2 = store.sent_key_for("s", "d2").unwrap().unwrap();
    assert_eq!(d2, kept(&later, b"key at 1"));
    assert!(store.sent_key_for("s", "d3").unwrap().is_none());
    assert!(store.sent_key_for("other", "d1").unwrap().is_none());
    assert!(
        !format!("{d1:?}").contains("key at"),
        "the key is not in the debug form"
    );
    let forgotten = store.transaction(|tx| tx.prune_sent_keys(15)).unwrap();
    assert_eq!(forgotten, 1);
    assert!(store.sent_key_for("s", "d1").unwrap().is_none());
    assert!(store.sent_key_for("s", "d2").unwrap().is_some());
}
