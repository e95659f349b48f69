//! Deposits, fetches, acks, expiry, shares and a full database, through the writer.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::super::{DB_FILE, Op, Storage, StorageHandle, test_settings as settings};
use super::*;
use crate::server::metrics::Metrics;

async fn deposit(
    h: &StorageHandle,
    sender: PeerId,
    to: Vec<PeerId>,
    body: &[u8],
) -> Result<Deposited, OpError> {
    let (reply, rx) = oneshot::channel();
    h.submit_deposit(to.len(), |first_id| Op::Deposit {
        sender,
        recipients: to.into_iter().map(|p| (p, Share::Sender)).collect(),
        ciphertext: body.to_vec(),
        now_ms: 1000,
        expires_ms: 5000,
        intro_expires_ms: 5000,
        first_id,
        fenced: None,
        reply: reply.into(),
    })
    .await
    .unwrap();
    rx.await.unwrap()
}

async fn fetch(h: &StorageHandle, owner: PeerId, now_ms: u64) -> Page {
    let (reply, rx) = oneshot::channel();
    h.submit_wait(Op::Fetch {
        owner,
        after: 0,
        limit: 100,
        max_bytes: 1 << 20,
        now_ms,
        reply,
    })
    .await
    .unwrap();
    rx.await.unwrap().unwrap()
}

#[tokio::test]
async fn fan_out_is_stored_once_and_refcounted() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::default());
    let (storage, _) = Storage::open(dir.path(), settings(10), metrics).unwrap();
    let h = storage.handle();
    let (s, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
    let d = deposit(&h, s, vec![a, b], b"hello").await.unwrap();
    assert_eq!(d.stored.len(), 2);
    let pa = fetch(&h, a, 1000).await;
    let pb = fetch(&h, b, 1000).await;
    assert_eq!(pa.messages.len(), 1);
    assert_eq!(pb.messages[0].ciphertext.as_ref(), b"hello");
    // Only the owner's ack removes the owner's entry.
    let (reply, rx) = oneshot::channel();
    h.submit_wait(Op::Ack {
        owner: b,
        ids: vec![pa.messages[0].id],
        reply,
    })
    .await
    .unwrap();
    assert_eq!(rx.await.unwrap().unwrap(), 0);
    let (reply, rx) = oneshot::channel();
    h.submit_wait(Op::Ack {
        owner: a,
        ids: vec![pa.messages[0].id],
        reply,
    })
    .await
    .unwrap();
    assert_eq!(rx.await.unwrap().unwrap(), 1);
    assert!(fetch(&h, a, 1000).await.messages.is_empty());
    assert_eq!(fetch(&h, b, 1000).await.messages.len(), 1);
    // Expired entries are hidden, then swept, and the message row goes with them.
    assert!(fetch(&h, b, 6000).await.messages.is_empty());
    let (reply, rx) = oneshot::channel();
    h.submit_wait(Op::Expire {
        now_ms: 6000,
        reply,
    })
    .await
    .unwrap();
    assert_eq!(rx.await.unwrap().unwrap(), 1);
    storage.close().await;
    drop(h);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let n: i64 = conn
        .query_row("SELECT COUNT(*) FROM message", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn quota_counts_within_a_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, _) =
        Storage::open(dir.path(), settings(3), Arc::new(Metrics::default())).unwrap();
    let h = storage.handle();
    let (s, a) = (PeerId::random(), PeerId::random());
    let mut rxs = Vec::new();
    for _ in 0..5 {
        let (reply, rx) = oneshot::channel();
        h.submit_deposit(1, |first_id| Op::Deposit {
            sender: s,
            recipients: vec![(a, Share::Sender)],
            ciphertext: vec![1; 10],
            now_ms: 0,
            expires_ms: u64::MAX / 2,
            intro_expires_ms: u64::MAX / 2,
            first_id,
            fenced: None,
            reply: reply.into(),
        })
        .await
        .unwrap();
        rxs.push(rx);
    }
    let mut ok = 0;
    for rx in rxs {
        match rx.await.unwrap() {
            Ok(_) => ok += 1,
            Err(e) => assert_eq!(e.code(), ErrorCode::QuotaCount),
        }
    }
    assert_eq!(ok, 3);
}

/// A deposit that fails for a full database, in a batch with others, leaves nothing of
/// itself: every stored message has all its entries, and every deposit answered as
/// stored is (and only those).
#[tokio::test]
async fn a_full_database_keeps_no_part_of_a_deposit() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = settings(1_000);
    st.max_database_bytes = 256 * 1024;
    let (storage, _) = Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
    let h = storage.handle();
    let (s, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
    let mut rxs = Vec::new();
    for i in 0..100u8 {
        let (reply, rx) = oneshot::channel();
        h.submit_deposit(2, |first_id| Op::Deposit {
            sender: s,
            recipients: vec![(a, Share::Sender), (b, Share::Sender)],
            ciphertext: vec![i; 8 * 1024],
            now_ms: 0,
            expires_ms: 1_000_000,
            intro_expires_ms: 1_000_000,
            first_id,
            fenced: None,
            reply: reply.into(),
        })
        .await
        .unwrap();
        rxs.push(rx);
    }
    let (mut ok, mut full) = (0u64, 0);
    for rx in rxs {
        match rx.await.unwrap() {
            Ok(d) => {
                assert_eq!(d.stored.len(), 2);
                ok += 1;
            }
            Err(OpError::Full) => full += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(ok > 0 && full > 0, "{ok} stored, {full} refused");
    assert_eq!(usage(&h, a).await.total.messages, ok);
    assert_eq!(fetch(&h, b, 0).await.messages.len() as u64, ok);
    storage.close().await;
    drop(h);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let count =
        |sql: &str| -> u64 { conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64 };
    assert_eq!(count("SELECT COUNT(*) FROM message"), ok);
    assert_eq!(count("SELECT COUNT(*) FROM mailbox"), 2 * ok);
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM message WHERE refs != (SELECT COUNT(*) FROM mailbox WHERE message = message.id)"
        ),
        0
    );
    assert_eq!(
        super::super::schema::load_usage(&conn)
            .unwrap()
            .get(&a.to_bytes(), crate::server::quota::Counter::Total)
            .messages,
        ok
    );
}

pub(in crate::server::storage) async fn deposit_as(
    h: &StorageHandle,
    sender: PeerId,
    to: PeerId,
    share: Share,
    now_ms: u64,
) -> Result<Deposited, OpError> {
    let (reply, rx) = oneshot::channel();
    h.submit_deposit(1, |first_id| Op::Deposit {
        sender,
        recipients: vec![(to, share)],
        ciphertext: vec![1; 10],
        now_ms,
        expires_ms: now_ms + 100_000,
        intro_expires_ms: now_ms + 1_000,
        first_id,
        fenced: None,
        reply: reply.into(),
    })
    .await?;
    rx.await.unwrap()
}

async fn usage(h: &StorageHandle, owner: PeerId) -> mailbox::Usage {
    let (reply, rx) = oneshot::channel();
    h.submit_wait(Op::Usage { owner, reply }).await.unwrap();
    rx.await.unwrap().unwrap()
}

/// Shares survive a restart (they are counted again from the stored entries), an ack
/// frees the share it counted in, introductions expire sooner, and the owner's usage
/// view names each share.
#[tokio::test]
async fn shares_are_counted_freed_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let mut st = settings(8);
    st.quota = Quota::new(8, 1 << 20, 50, 3, 1 << 20, 2);
    let (storage, _) = Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
    let h = storage.handle();
    let (owner, friend, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
    let g = Share::Grant([9; 32]);
    for _ in 0..4 {
        deposit_as(&h, friend, owner, g.clone(), 0).await.unwrap();
    }
    let e = deposit_as(&h, friend, owner, g.clone(), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ShareFull, "half of 8 is the share");
    for _ in 0..2 {
        deposit_as(&h, stranger, owner, Share::Intro, 0)
            .await
            .unwrap();
    }
    let e = deposit_as(&h, stranger, owner, Share::Intro, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::IntroFull, "2 per stranger");
    let u = usage(&h, owner).await;
    assert_eq!(u.total.messages, 6);
    assert_eq!(u.intro.messages, 2);
    assert_eq!(
        u.grants,
        vec![(
            serde_bytes::ByteArray::new([9; 32]),
            Fill {
                messages: 4,
                bytes: 40
            }
        )]
    );
    assert_eq!(
        u.senders,
        vec![(
            stranger,
            Fill {
                messages: 2,
                bytes: 20
            }
        )]
    );
    storage.close().await;
    drop(h);

    // Reopened: the counts come back from the entries.
    let (storage, _) = Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
    let h = storage.handle();
    let e = deposit_as(&h, friend, owner, g.clone(), 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), ErrorCode::ShareFull);
    let page = fetch(&h, owner, 0).await;
    assert_eq!(page.messages.iter().filter(|m| m.intro).count(), 2);
    let first_granted = page.messages.iter().find(|m| !m.intro).unwrap().id;
    let (reply, rx) = oneshot::channel();
    h.submit_wait(Op::Ack {
        owner,
        ids: vec![first_granted],
        reply,
    })
    .await
    .unwrap();
    assert_eq!(rx.await.unwrap().unwrap(), 1);
    deposit_as(&h, friend, owner, g.clone(), 0).await.unwrap();
    // The introductions expire at 1 s, the rest later; the stranger has room again.
    let (reply, rx) = oneshot::channel();
    h.submit_wait(Op::Expire {
        now_ms: 2_000,
        reply,
    })
    .await
    .unwrap();
    assert_eq!(rx.await.unwrap().unwrap(), 2);
    deposit_as(&h, stranger, owner, Share::Intro, 2_000)
        .await
        .unwrap();
    assert_eq!(usage(&h, owner).await.total.messages, 5);
    storage.close().await;
}

/// Which entries each mailbox holds lives in memory: after a restart it is read back from
/// the table, and fetches page through each mailbox in id order from any cursor.
#[tokio::test]
async fn mailboxes_survive_a_restart_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (s, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
    let (storage, _) =
        Storage::open(dir.path(), settings(1_000), Arc::new(Metrics::default())).unwrap();
    let h = storage.handle();
    for i in 0..50u8 {
        let to = if i % 5 < 3 { a } else { b };
        deposit(&h, s, vec![to], &[i]).await.unwrap();
    }
    storage.close().await;
    drop(h);
    let (storage, _) =
        Storage::open(dir.path(), settings(1_000), Arc::new(Metrics::default())).unwrap();
    let h = storage.handle();
    let page = fetch(&h, a, 1000).await;
    let bodies: Vec<u8> = page.messages.iter().map(|m| m.ciphertext[0]).collect();
    let expected: Vec<u8> = (0..50u8).filter(|i| i % 5 < 3).collect();
    assert_eq!(bodies, expected);
    assert!(page.messages.windows(2).all(|w| w[0].id < w[1].id));
    // From a cursor, a page at a time.
    let cursor = page.messages[9].id;
    let (reply, rx) = oneshot::channel();
    h.submit_wait(Op::Fetch {
        owner: a,
        after: cursor,
        limit: 5,
        max_bytes: 1 << 20,
        now_ms: 1000,
        reply,
    })
    .await
    .unwrap();
    let next = rx.await.unwrap().unwrap();
    assert!(next.more);
    let ids: Vec<u64> = next.messages.iter().map(|m| m.id).collect();
    let want: Vec<u64> = page.messages[10..15].iter().map(|m| m.id).collect();
    assert_eq!(ids, want);
    assert_eq!(fetch(&h, b, 1000).await.messages.len(), 20);
    storage.close().await;
}

/// A version 5 database (with the owner index in the table) opens as version 6 without it,
/// and every entry is still fetched and counted.
#[tokio::test]
async fn a_version_5_database_keeps_its_mail() {
    let dir = tempfile::tempdir().unwrap();
    let (s, a) = (PeerId::random(), PeerId::random());
    {
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        use super::super::schema;
        for step in [
            schema::migrate_v1,
            schema::migrate_v2,
            schema::migrate_v3,
            crate::server::registrations::migrate_v4,
            schema::migrate_v5,
        ] {
            step(&conn).unwrap();
        }
        conn.execute(
            "INSERT INTO message(id, sender, created_ms, expires_ms, refs, body)
             VALUES (1, ?1, 5, 9000, 1, x'abcd')",
            [s.to_bytes()],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO mailbox(seq, owner, message, size, expires_ms, share, intro)
             VALUES (7, ?1, 1, 2, 9000, NULL, 0)",
            [a.to_bytes()],
        )
        .unwrap();
    }
    let (storage, _) =
        Storage::open(dir.path(), settings(1_000), Arc::new(Metrics::default())).unwrap();
    let h = storage.handle();
    let page = fetch(&h, a, 1000).await;
    assert_eq!(page.messages.len(), 1);
    assert_eq!(page.messages[0].id, 7);
    assert_eq!(page.messages[0].ciphertext.as_ref(), [0xab, 0xcd]);
    assert_eq!(page.messages[0].sender, s);
    assert_eq!(usage(&h, a).await.total.messages, 1);
    storage.close().await;
    drop(h);
    let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, super::super::SCHEMA_VERSION);
    let owner_index: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'mailbox_owner'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(owner_index, 0);
}

/// Ids reserved for deposits (and perhaps pushed to listening recipients, who acknowledge
/// them) are never issued again after a restart, even when nothing of them was committed:
/// each start goes on past every id its predecessor could have handed out.
#[tokio::test]
async fn ids_reserved_and_never_committed_are_not_issued_again() {
    let dir = tempfile::tempdir().unwrap();
    let owner = PeerId::random();
    let mut highest = 0;
    for _ in 0..3 {
        let (storage, _) =
            Storage::open(dir.path(), settings(100), Arc::new(Metrics::default())).unwrap();
        let h = storage.handle();
        // As many as a start skips: reserved, never queued, never committed.
        let n = super::super::id_gap(&settings(100));
        let slot = h.deposit_slot().await.unwrap();
        let first = slot.reserve_ids(n as usize);
        drop(slot);
        assert!(first > highest, "id {first} reserved again after {highest}");
        highest = first + n - 1;
        storage.close().await;
    }
    let (storage, _) =
        Storage::open(dir.path(), settings(100), Arc::new(Metrics::default())).unwrap();
    let h = storage.handle();
    let id = deposit(&h, PeerId::random(), vec![owner], b"x")
        .await
        .unwrap()
        .stored[0]
        .id;
    assert!(id > highest, "id {id} issued again after {highest}");
    storage.close().await;
}

/// A deposit keeps the ids reserved for it, one per recipient in order (a refused
/// recipient's goes unused); one whose ids are not above those issued before (reserved out
/// of order) is refused without storing anything, and the deposits around it are kept.
#[tokio::test]
async fn deposits_keep_their_reserved_ids_and_out_of_order_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (storage, _) =
        Storage::open(dir.path(), settings(1), Arc::new(Metrics::default())).unwrap();
    let h = storage.handle();
    let (s, a, b, c) = (
        PeerId::random(),
        PeerId::random(),
        PeerId::random(),
        PeerId::random(),
    );
    // `b`'s mailbox (one message at most) is full before the three-recipient deposit.
    let early = deposit(&h, s, vec![b], b"0").await.unwrap().stored[0].id;
    // Two slots, the second's ids queued first.
    let (slot_a, slot_b) = (
        h.deposit_slot().await.unwrap(),
        h.deposit_slot().await.unwrap(),
    );
    let stale = slot_a.reserve_ids(1);
    let first = slot_b.reserve_ids(3);
    let send = |first_id: u64, to: Vec<PeerId>| {
        let (reply, rx) = oneshot::channel();
        let op = Op::Deposit {
            sender: s,
            recipients: to.into_iter().map(|p| (p, Share::Sender)).collect(),
            ciphertext: b"1".to_vec(),
            now_ms: 1000,
            expires_ms: 5000,
            intro_expires_ms: 5000,
            first_id,
            fenced: None,
            reply: reply.into(),
        };
        (op, rx)
    };
    let (op, rx) = send(first, vec![a, b, c]);
    slot_b.send(op);
    let d = rx.await.unwrap().unwrap();
    let ids: Vec<(PeerId, u64)> = d.stored.iter().map(|st| (st.peer, st.id)).collect();
    assert_eq!(ids, vec![(a, first), (c, first + 2)]);
    assert_eq!(d.refused.len(), 1);
    assert!(early < stale && stale < first);
    // The stale reservation comes after: refused, nothing stored.
    let (op, rx) = send(stale, vec![c]);
    slot_a.send(op);
    assert!(matches!(rx.await.unwrap(), Err(OpError::Internal(_))));
    // Ids used before, queued again: refused too.
    let (op, rx) = send(first, vec![c]);
    h.deposit_slot().await.unwrap().send(op);
    assert!(matches!(rx.await.unwrap(), Err(OpError::Internal(_))));
    assert_eq!(fetch(&h, c, 1000).await.messages.len(), 1);
    assert_eq!(fetch(&h, a, 1000).await.messages.len(), 1);
    // The next reservation goes on as if nothing happened.
    let next = deposit(&h, s, vec![PeerId::random()], b"2")
        .await
        .unwrap()
        .stored[0]
        .id;
    assert!(next > first + 2);
    storage.close().await;
}
