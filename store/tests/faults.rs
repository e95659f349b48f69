//! The atomic steps, a crash between them (a real child process that aborts), a full disk and
//! a locked database.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use tern_store::{
    ConversationKind, CryptoUpdate, Delivery, FaultKind, Inserted, Options, Page, ReceiptKind,
    SessionStore, Status, Store, WriteError,
};

fn deliveries(payload: &str) -> Vec<Delivery> {
    ["bob1", "bob2"]
        .iter()
        .map(|d| Delivery {
            recipient_user: "bob".into(),
            recipient_device: (*d).into(),
            payload: format!("{payload}->{d}").into_bytes(),
        })
        .collect()
}

fn session(pickle: &[u8]) -> [CryptoUpdate<'_>; 1] {
    [CryptoUpdate::Session {
        peer_device: "bob1",
        session_id: "s1",
        pickle,
    }]
}

fn current_pickle(store: &mut Store) -> Option<Vec<u8>> {
    store
        .transaction(|tx| tx.current_session("bob1"))
        .unwrap()
        .map(|s| s.pickle)
}

#[test]
fn outgoing_writes_message_ratchet_and_outbox_together() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "bob", ConversationKind::Direct);
    let m = outgoing(1, "bob", 1, "hi bob");
    assert_eq!(
        store
            .record_outgoing(&m, &session(b"ratchet-1"), &deliveries("c1"), 500)
            .unwrap(),
        Inserted::New
    );
    assert_eq!(
        current_pickle(&mut store).as_deref(),
        Some(&b"ratchet-1"[..])
    );
    assert!(
        store.due_deliveries(499, 10).unwrap().is_empty(),
        "not due yet"
    );
    let due = store.due_deliveries(500, 10).unwrap();
    assert_eq!(due.len(), 2);
    assert_eq!(due[0].delivery.payload, b"c1->bob1");

    store
        .transaction(|tx| tx.reschedule_delivery(m.id, "bob1", 900))
        .unwrap();
    let due = store.due_deliveries(600, 10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].delivery.recipient_device, "bob2");
    let due = store.due_deliveries(900, 10).unwrap();
    let bob1 = due
        .iter()
        .find(|e| e.delivery.recipient_device == "bob1")
        .unwrap();
    assert_eq!(bob1.attempts, 1);

    assert_eq!(
        store
            .transaction(|tx| tx.ack_delivery(m.id, "bob1"))
            .unwrap(),
        1
    );
    assert_eq!(
        store.message(m.id).unwrap().unwrap().status,
        Status::Pending
    );
    assert_eq!(
        store
            .transaction(|tx| tx.ack_delivery(m.id, "bob2"))
            .unwrap(),
        0
    );
    assert_eq!(store.message(m.id).unwrap().unwrap().status, Status::Sent);
    assert!(store.due_deliveries(i64::MAX, 10).unwrap().is_empty());
}

#[test]
fn a_failure_inside_a_step_leaves_nothing_behind() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "bob", ConversationKind::Direct);
    store
        .record_incoming(&incoming(1, "bob", 1, "first"), &session(b"ratchet-1"))
        .unwrap();
    // Fault injected after the message and the session were written: the outbox payload
    // is over the limit, so the whole step must roll back.
    let huge = vec![Delivery {
        recipient_user: "bob".into(),
        recipient_device: "bob1".into(),
        payload: vec![0; tern_store::consts::MAX_BLOB_BYTES + 1],
    }];
    let err = store
        .record_outgoing(
            &outgoing(2, "bob", 2, "never"),
            &session(b"ratchet-2"),
            &huge,
            0,
        )
        .unwrap_err();
    assert!(matches!(err, WriteError::OutOfRange { .. }), "{err:?}");
    assert!(store.message(id(2)).unwrap().is_none());
    assert_eq!(
        current_pickle(&mut store).as_deref(),
        Some(&b"ratchet-1"[..])
    );
    assert!(store.due_deliveries(i64::MAX, 10).unwrap().is_empty());
    let summary = store.conversation(&conv("bob")).unwrap().unwrap();
    assert_eq!(summary.last_message.unwrap().id, id(1));

    // The same with an error returned by the caller's own code in a transaction.
    let res: Result<(), WriteError> = store.transaction(|tx| {
        tx.record_incoming(&incoming(3, "bob", 3, "half"), &session(b"ratchet-3"))?;
        Err(WriteError::UnknownMessage {
            op: "injected",
            message: "x".into(),
        })
    });
    assert!(res.is_err());
    assert!(store.message(id(3)).unwrap().is_none());
    assert_eq!(
        store
            .conversation(&conv("bob"))
            .unwrap()
            .unwrap()
            .unread_count,
        1
    );
    assert_eq!(
        current_pickle(&mut store).as_deref(),
        Some(&b"ratchet-1"[..])
    );
}

/// Environment variables that turn the test binary into the crashing child.
const CHILD_DB: &str = "TERN_STORE_CRASH_DB";
const CHILD_STEP: &str = "TERN_STORE_CRASH_STEP";

/// The child's side of `crash_between_steps`: not a test of its own (it does nothing unless
/// the parent set the variables), ignored so that it only runs when the parent asks for it.
#[test]
#[ignore = "helper: run as a child process by crash_between_steps"]
fn crash_child() {
    let (Ok(path), Ok(step)) = (std::env::var(CHILD_DB), std::env::var(CHILD_STEP)) else {
        return;
    };
    let mut store = open(std::path::Path::new(&path));
    ensure(&mut store, "bob", ConversationKind::Direct);
    store
        .record_outgoing(
            &outgoing(1, "bob", 1, "committed"),
            &session(b"ratchet-1"),
            &deliveries("c1"),
            0,
        )
        .unwrap();
    match step.as_str() {
        // Dies with the second step's writes made but not committed.
        "inside" => {
            let _: Result<(), WriteError> = store.transaction(|tx| {
                tx.record_outgoing(
                    &outgoing(2, "bob", 2, "in flight"),
                    &session(b"ratchet-2"),
                    &deliveries("c2"),
                    0,
                )?;
                tx.record_incoming(
                    &incoming(3, "bob", 3, "also in flight"),
                    &session(b"ratchet-3"),
                )?;
                std::process::abort()
            });
        }
        // Dies right after the second step committed, before anything was "sent".
        "after" => {
            store
                .record_outgoing(
                    &outgoing(2, "bob", 2, "in flight"),
                    &session(b"ratchet-2"),
                    &deliveries("c2"),
                    0,
                )
                .unwrap();
            std::process::abort()
        }
        other => panic!("unknown step {other}"),
    }
}

fn run_crashing_child(path: &std::path::Path, step: &str) {
    let status = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DB, path)
        .env(CHILD_STEP, step)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(
        !status.success(),
        "the child must die, not finish ({status})"
    );
}

#[test]
fn crash_between_steps_loses_nothing_and_half_writes_nothing() {
    let env = env();
    run_crashing_child(&env.path, "inside");
    let mut store = open(&env.path);
    let history = store.history(&conv("bob"), Page::Latest, None).unwrap();
    assert_eq!(
        ids(&history),
        [id(1)],
        "the committed step survived, the open one vanished"
    );
    assert_eq!(
        current_pickle(&mut store).as_deref(),
        Some(&b"ratchet-1"[..]),
        "the ratchet was not advanced for a message that was never stored (or sent)"
    );
    let due = store.due_deliveries(i64::MAX, 10).unwrap();
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|e| e.message_id == id(1)));
    assert_eq!(
        store
            .conversation(&conv("bob"))
            .unwrap()
            .unwrap()
            .unread_count,
        0
    );

    let env = common::env();
    run_crashing_child(&env.path, "after");
    let mut store = open(&env.path);
    let history = store.history(&conv("bob"), Page::Latest, None).unwrap();
    assert_eq!(ids(&history), [id(1), id(2)]);
    assert_eq!(
        current_pickle(&mut store).as_deref(),
        Some(&b"ratchet-2"[..]),
        "the advanced ratchet is stored with its message, so its key is never used again"
    );
    assert_eq!(
        store.due_deliveries(i64::MAX, 10).unwrap().len(),
        4,
        "both messages still queued"
    );
}

#[test]
fn full_disk_is_a_typed_error_and_loses_nothing() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "bob", ConversationKind::Direct);
    store
        .record_incoming(&incoming(0, "bob", 0, "before"), &[])
        .unwrap();
    let pages = std::fs::metadata(&env.path).unwrap().len() / 4096;
    drop(store);
    let mut store = open_with(
        &env.path,
        &Options::default().with_max_page_count(pages as u32 + 8),
    );
    let filler = "x".repeat(3_000);
    let mut stored = vec![id(0)];
    let mut full = None;
    for n in 1..200 {
        match store.record_incoming(
            &incoming(n, "bob", n, &format!("{n} {filler}")),
            &session(b"s"),
        ) {
            Ok(_) => stored.push(id(n)),
            Err(e) => {
                full = Some((n, e));
                break;
            }
        }
    }
    let (failed, err) = full.expect("the page cap must be hit");
    assert_eq!(err.fault_kind(), Some(FaultKind::Full), "{err:?}");
    assert!(err.to_string().contains("full"), "{err}");
    assert!(
        store.message(id(failed)).unwrap().is_none(),
        "the failed step is not half-written"
    );
    let history = store
        .history(&conv("bob"), Page::Latest, Some(500))
        .unwrap();
    assert_eq!(ids(&history), stored);
    drop(store);
    // With room again, everything is there and writes work.
    let mut store = open(&env.path);
    assert_eq!(
        store
            .history(&conv("bob"), Page::Latest, Some(500))
            .unwrap()
            .len(),
        stored.len()
    );
    store
        .record_incoming(&incoming(failed, "bob", failed, "retried"), &[])
        .unwrap();
}

#[test]
fn locked_database_is_a_typed_busy_error() {
    let env = env();
    let mut holder = open(&env.path);
    ensure(&mut holder, "bob", ConversationKind::Direct);
    let mut waiter = open_with(
        &env.path,
        &Options::default().with_busy_timeout(Duration::from_millis(50)),
    );
    let outcome: Result<(), WriteError> = holder.transaction(|tx| {
        tx.record_incoming(&incoming(1, "bob", 1, "held"), &[])?;
        let err = waiter
            .record_incoming(&incoming(2, "bob", 2, "blocked"), &[])
            .unwrap_err();
        assert_eq!(err.fault_kind(), Some(FaultKind::Busy), "{err:?}");
        assert!(err.to_string().contains("locked"), "{err}");
        // Readers are not blocked by a writer (WAL).
        assert!(waiter.conversation(&conv("bob")).unwrap().is_some());
        Ok(())
    });
    outcome.unwrap();
    // Once the lock is gone the waiter's write goes through, and nothing was lost.
    waiter
        .record_incoming(&incoming(2, "bob", 2, "now"), &[])
        .unwrap();
    assert_eq!(
        holder
            .history(&conv("bob"), Page::Latest, None)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn a_message_stored_before_encryption_gets_its_deliveries_exactly_once() {
    let env = env();
    let mut store = open(&env.path);
    ensure(&mut store, "bob", ConversationKind::Direct);
    // Stored pending with no session and no outbox rows (the recipient's relay was down).
    let first = outgoing(1, "bob", 1, "first");
    let second = outgoing(2, "bob", 2, "second");
    for m in [&second, &first] {
        store.record_outgoing(m, &[], &[], 100).unwrap();
    }
    let bob = conv("bob");
    let waiting = store.awaiting_encryption("me1", &bob, 10).unwrap();
    assert_eq!(ids(&waiting), [first.id, second.id], "display order");
    assert!(
        store
            .awaiting_encryption("other", &bob, 10)
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.awaiting_conversations("me1").unwrap(),
        std::slice::from_ref(&bob)
    );
    assert!(store.due_deliveries(i64::MAX, 10).unwrap().is_empty());

    // Encrypted later: ratchet and outbox rows in one transaction.
    let added = store
        .transaction(|tx| {
            tx.add_deliveries(first.id, &session(b"ratchet-1"), &deliveries("c1"), 500)
        })
        .unwrap();
    assert!(added);
    assert_eq!(
        current_pickle(&mut store).as_deref(),
        Some(&b"ratchet-1"[..])
    );
    assert_eq!(store.due_deliveries(500, 10).unwrap().len(), 2);
    assert_eq!(
        ids(&store.awaiting_encryption("me1", &bob, 10).unwrap()),
        [second.id]
    );

    // A second attempt for the same message writes nothing: no second ciphertext, no
    // ratchet state from it.
    let again = store
        .transaction(|tx| {
            tx.add_deliveries(first.id, &session(b"ratchet-2"), &deliveries("c2"), 500)
        })
        .unwrap();
    assert!(!again);
    assert_eq!(
        current_pickle(&mut store).as_deref(),
        Some(&b"ratchet-1"[..])
    );
    let due = store.due_deliveries(i64::MAX, 10).unwrap();
    assert_eq!(due.len(), 2);
    assert!(due.iter().all(|e| e.delivery.payload.starts_with(b"c1")));

    // Once delivered it is not pending any more and still not awaiting encryption.
    store
        .transaction(|tx| {
            tx.ack_delivery(first.id, "bob1")?;
            tx.ack_delivery(first.id, "bob2")
        })
        .unwrap();
    assert_eq!(
        store.message(first.id).unwrap().unwrap().status,
        Status::Sent
    );
    assert_eq!(
        ids(&store.awaiting_encryption("me1", &bob, 10).unwrap()),
        [second.id]
    );
}

#[test]
fn owed_receipts_survive_a_reopen_until_settled() {
    let env = env();
    {
        let mut store = open(&env.path);
        ensure(&mut store, "alice", ConversationKind::Direct);
        let m = incoming(1, "alice", 1, "hello");
        // Stored together with the receipt it is owed.
        store
            .transaction(|tx| {
                tx.record_incoming(&m, &[])?;
                tx.owe_receipts("alice", ReceiptKind::Delivered, &[m.id], 10)?;
                // Owing again changes nothing.
                tx.owe_receipts("alice", ReceiptKind::Delivered, &[m.id], 11)
            })
            .unwrap();
        store
            .transaction(|tx| tx.owe_receipts("alice", ReceiptKind::Read, &[m.id], 12))
            .unwrap();
    }
    // A crash and a restart later, both are still owed.
    let mut store = open(&env.path);
    let due = store.due_receipts(10).unwrap();
    assert_eq!(
        due.iter().map(|r| r.kind).collect::<Vec<_>>(),
        [ReceiptKind::Delivered, ReceiptKind::Read]
    );
    assert!(
        due.iter()
            .all(|r| r.recipient_user == "alice" && r.message_id == id(1))
    );
    store
        .transaction(|tx| tx.receipts_delivered(ReceiptKind::Delivered, &[id(1)]))
        .unwrap();
    let due = store.due_receipts(10).unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].kind, ReceiptKind::Read);
}
