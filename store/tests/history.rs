//! Messages, duplicates, display order, paging, conversations and unread counts.

mod common;

use common::*;
use tern_store::{
    Body, ConversationKind, Inserted, Message, Page, ReadError, Status, Store, WriteError,
};

fn fill(store: &mut Store, conversation: &str, count: u64) -> Vec<Message> {
    let msgs: Vec<Message> = (0..count)
        .map(|n| incoming(n, conversation, n, &format!("m{n}")))
        .collect();
    store
        .transaction(|tx| {
            for m in &msgs {
                assert_eq!(tx.record_incoming(m, &[])?, Inserted::New);
            }
            Ok::<_, WriteError>(())
        })
        .unwrap();
    msgs
}

#[test]
fn duplicate_id_is_a_reported_no_op() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "alice", ConversationKind::Direct);
    let first = incoming(1, "alice", 1, "original");
    assert_eq!(store.record_incoming(&first, &[]).unwrap(), Inserted::New);
    let mut again = first.clone();
    again.body = Body::Text("tampered".into());
    again.lamport = 99;
    assert_eq!(
        store.record_incoming(&again, &[]).unwrap(),
        Inserted::Duplicate
    );
    assert_eq!(
        store.transaction(|tx| tx.insert_message(&again)).unwrap(),
        Inserted::Duplicate
    );
    let stored = store.message(first.id).unwrap().unwrap();
    assert_eq!(stored, first, "the first copy stays");
    let summary = store.conversation(&conv("alice")).unwrap().unwrap();
    assert_eq!(summary.unread_count, 1, "a duplicate is not unread twice");
    assert_eq!(
        store
            .history(&conv("alice"), Page::Latest, None)
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn unknown_conversation_is_an_error() {
    let env = env();
    let mut store = open(&env.path);
    let err = store
        .record_incoming(&incoming(1, "nobody", 1, "x"), &[])
        .unwrap_err();
    assert!(
        matches!(err, WriteError::UnknownConversation { .. }),
        "{err:?}"
    );
}

#[test]
fn display_order_is_lamport_then_sender_then_seq() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "g", ConversationKind::Group);
    let mk = |n: u64, user: &str, device: &str, lamport: u64, seq: u64| Message {
        sender_user: user.into(),
        sender_device: device.into(),
        seq,
        ..incoming(n, "g", lamport, &format!("{user}{device}{seq}"))
    };
    // Inserted out of order on purpose.
    let msgs = [
        mk(1, "bob", "b1", 2, 1),
        mk(2, "alice", "a2", 2, 7),
        mk(3, "alice", "a1", 2, 9),
        mk(4, "alice", "a1", 2, 8),
        mk(5, "carol", "c1", 1, 1),
        mk(6, "alice", "a1", 3, 10),
    ];
    for m in &msgs {
        store.record_incoming(m, &[]).unwrap();
    }
    let got: Vec<String> = store
        .history(&conv("g"), Page::Latest, None)
        .unwrap()
        .into_iter()
        .map(|m| m.body.text().unwrap().to_owned())
        .collect();
    assert_eq!(
        got,
        [
            "carolc11",
            "alicea18",
            "alicea19",
            "alicea27",
            "bobb11",
            "alicea110"
        ]
    );
}

#[test]
fn keyset_paging_walks_the_whole_history_both_ways() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "alice", ConversationKind::Direct);
    ensure(&mut store, "other", ConversationKind::Direct);
    let msgs = fill(&mut store, "alice", 230);
    store
        .record_incoming(&incoming(10_000, "other", 5, "elsewhere"), &[])
        .unwrap();

    let latest = store.history(&conv("alice"), Page::Latest, None).unwrap();
    assert_eq!(latest.len(), 50, "default page size");
    assert_eq!(ids(&latest), ids(&msgs[180..]));

    // Backwards to the start.
    let mut walked = latest.clone();
    loop {
        let first = walked[0].id;
        let page = store
            .history(&conv("alice"), Page::Before(first), Some(40))
            .unwrap();
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 40);
        walked.splice(0..0, page);
    }
    assert_eq!(ids(&walked), ids(&msgs));

    // Forwards from the start.
    let mut fwd = store
        .history(&conv("alice"), Page::After(msgs[0].id), Some(64))
        .unwrap();
    assert_eq!(fwd[0].id, msgs[1].id);
    loop {
        let last = fwd[fwd.len() - 1].id;
        let page = store
            .history(&conv("alice"), Page::After(last), Some(64))
            .unwrap();
        if page.is_empty() {
            break;
        }
        fwd.extend(page);
    }
    assert_eq!(ids(&fwd), ids(&msgs[1..]));

    // A message of another conversation is not an anchor here.
    let err = store
        .history(
            &conv("alice"),
            Page::Before(tern_store::MessageId(id(10_000).0)),
            None,
        )
        .unwrap_err();
    assert!(matches!(err, ReadError::UnknownAnchor { .. }), "{err:?}");
    assert!(
        store
            .history(&conv("nobody"), Page::Latest, None)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn unread_counts_and_mark_read() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "alice", ConversationKind::Direct);
    fill(&mut store, "alice", 3);
    // Own messages (sent here or synced from another own device) are never unread.
    store
        .record_outgoing(&outgoing(50, "alice", 10, "mine"), &[], &[], 0)
        .unwrap();
    let mut synced = incoming(51, "alice", 11, "from my laptop");
    synced.sender_user = "me".into();
    synced.own = true;
    synced.status = Status::Sent;
    store.record_incoming(&synced, &[]).unwrap();
    // History copied from another device is stored but not unread.
    store
        .transaction(|tx| tx.insert_message(&incoming(60, "alice", 0, "old history")))
        .unwrap();
    assert_eq!(
        store
            .conversation(&conv("alice"))
            .unwrap()
            .unwrap()
            .unread_count,
        3
    );

    let changed = store
        .transaction(|tx| tx.mark_read(&conv("alice")))
        .unwrap();
    assert_eq!(changed, 4, "three unread plus the copied history");
    let s = store.conversation(&conv("alice")).unwrap().unwrap();
    assert_eq!(s.unread_count, 0);
    assert!(
        store
            .history(&conv("alice"), Page::Latest, None)
            .unwrap()
            .iter()
            .all(|m| m.status != Status::Received)
    );
    store
        .record_incoming(&incoming(4, "alice", 12, "new"), &[])
        .unwrap();
    assert_eq!(
        store
            .conversation(&conv("alice"))
            .unwrap()
            .unwrap()
            .unread_count,
        1
    );
    // Counts survive reopening.
    drop(store);
    let store = open(&env.path);
    assert_eq!(
        store
            .conversation(&conv("alice"))
            .unwrap()
            .unwrap()
            .unread_count,
        1
    );
}

#[test]
fn conversation_list_by_activity_with_preview() {
    let env = env();
    let mut store = open(&env.path);
    for name in ["a", "b", "c"] {
        ensure(&mut store, name, ConversationKind::Direct);
    }
    let mut t = 0;
    let mut say = |store: &mut Store, n: u64, c: &str, lamport: u64, text: &str| {
        t += 100;
        let mut m = incoming(n, c, lamport, text);
        m.received_at_ms = t;
        store.record_incoming(&m, &[]).unwrap();
    };
    say(&mut store, 1, "a", 5, "a first");
    say(&mut store, 2, "b", 1, "b first");
    say(&mut store, 3, "c", 1, &"long ".repeat(100));
    say(&mut store, 4, "a", 6, "a second");
    // A late message with an older Lamport clock: activity moves, the preview does not.
    say(&mut store, 5, "b", 0, "b late but old");

    let page = store.conversations(None, 10).unwrap();
    let order: Vec<&str> = page.conversations.iter().map(|c| c.id.0.as_str()).collect();
    assert_eq!(order, ["b", "a", "c"]);
    let b = &page.conversations[0];
    assert_eq!(
        b.last_message.as_ref().unwrap().text.as_deref(),
        Some("b first")
    );
    assert_eq!(b.unread_count, 2);
    let c = &page.conversations[2];
    let preview = c.last_message.as_ref().unwrap().text.as_ref().unwrap();
    assert_eq!(preview.chars().count(), tern_store::consts::PREVIEW_CHARS);
    assert!(page.next.is_none());

    // Keyset paging of the list.
    let first = store.conversations(None, 2).unwrap();
    assert_eq!(first.conversations.len(), 2);
    let rest = store.conversations(first.next, 2).unwrap();
    assert_eq!(rest.conversations.len(), 1);
    assert_eq!(rest.conversations[0].id.0, "c");
}

#[test]
fn edit_delete_and_status() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "alice", ConversationKind::Direct);
    let out = outgoing(1, "alice", 1, "typo");
    store.record_outgoing(&out, &[], &[], 0).unwrap();
    store
        .transaction(|tx| tx.edit_text(out.id, "fixed", 77))
        .unwrap();
    let m = store.message(out.id).unwrap().unwrap();
    assert_eq!((m.body.text(), m.edited_at_ms), (Some("fixed"), Some(77)));

    assert!(
        store
            .transaction(|tx| tx.advance_status(out.id, Status::Delivered))
            .unwrap()
    );
    assert!(
        !store
            .transaction(|tx| tx.advance_status(out.id, Status::Sent))
            .unwrap(),
        "never backwards"
    );
    assert_eq!(
        store.message(out.id).unwrap().unwrap().status,
        Status::Delivered
    );

    store
        .record_outgoing(&outgoing(2, "alice", 2, "second"), &[], &[], 0)
        .unwrap();
    assert_eq!(
        store
            .conversation(&conv("alice"))
            .unwrap()
            .unwrap()
            .last_message
            .unwrap()
            .id,
        id(2)
    );
    assert!(store.transaction(|tx| tx.delete_message(id(2))).unwrap());
    assert!(!store.transaction(|tx| tx.delete_message(id(2))).unwrap());
    assert_eq!(
        store
            .conversation(&conv("alice"))
            .unwrap()
            .unwrap()
            .last_message
            .unwrap()
            .id,
        out.id,
        "the preview falls back to the newest remaining message"
    );
    let err = store
        .transaction(|tx| tx.edit_text(id(2), "x", 1))
        .unwrap_err();
    assert!(matches!(err, WriteError::UnknownMessage { .. }));
}

#[test]
fn has_sequence_finds_a_sender_devices_message_in_its_conversation_only() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "alice", ConversationKind::Direct);
    ensure(&mut store, "bob", ConversationKind::Direct);
    assert!(!store.has_sequence(&conv("alice"), "a1", 3).unwrap());
    store
        .record_incoming(&incoming(3, "alice", 3, "three"), &[])
        .unwrap();
    assert!(store.has_sequence(&conv("alice"), "a1", 3).unwrap());
    assert!(!store.has_sequence(&conv("alice"), "a1", 2).unwrap());
    assert!(!store.has_sequence(&conv("alice"), "a2", 3).unwrap());
    assert!(!store.has_sequence(&conv("bob"), "a1", 3).unwrap());
    assert!(!store.has_sequence(&conv("nobody"), "a1", 3).unwrap());
}

#[test]
fn unread_total_sums_conversations_and_survives_reopening() {
    let env = env();
    let mut store = open(&env.path);
    assert_eq!(store.unread_total().unwrap(), 0);
    ensure(&mut store, "a", ConversationKind::Direct);
    ensure(&mut store, "b", ConversationKind::Direct);
    fill(&mut store, "a", 3);
    store
        .record_incoming(&incoming(10, "b", 1, "b1"), &[])
        .unwrap();
    store
        .record_incoming(&incoming(11, "b", 2, "b2"), &[])
        .unwrap();
    assert_eq!(store.unread_total().unwrap(), 5);
    drop(store);
    let mut store = open(&env.path);
    assert_eq!(store.unread_total().unwrap(), 5, "kept across a reopen");
    store
        .transaction(|tx| tx.mark_read(&conv("a")).map(drop))
        .unwrap();
    assert_eq!(store.unread_total().unwrap(), 2);
}
