//! Mailboxes: deposit, fetch, acknowledgement, live pushes (stream and request fallback), fan-out stored once, quotas and rate limits, time to live, malformed frames, and the stream limit.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposit_fetch_ack_live_push_and_ownership() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), "");
    let (alice, _) = connect(&relay.tcp).await;
    // Bob over QUIC, Carol over TCP.
    let (bob, mut bob_events) = connect(&relay.quic).await;
    let (carol, _) = connect(&relay.tcp).await;
    bob.listen(true).await.unwrap();

    let (_, over) = alice
        .deposit(vec![bob.local_peer_id()], None, b"ciphertext-1".to_vec())
        .await
        .unwrap();
    assert!(over.is_empty());
    let Event::Delivered(live) = next_event(&mut bob_events).await else {
        panic!("expected a delivery")
    };
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].ciphertext.as_ref(), b"ciphertext-1");
    assert_eq!(live[0].sender, alice.local_peer_id());

    let (page, more) = bob.fetch(0, 10).await.unwrap();
    assert!(!more);
    assert_eq!(page, live);

    // Carol can neither read nor ack Bob's mailbox, and learns nothing from trying.
    assert!(carol.fetch(0, 10).await.unwrap().0.is_empty());
    assert_eq!(carol.ack(vec![page[0].id]).await.unwrap(), 0);
    assert_eq!(bob.fetch(0, 10).await.unwrap().0.len(), 1);

    assert_eq!(bob.ack(vec![page[0].id]).await.unwrap(), 1);
    assert!(bob.fetch(0, 10).await.unwrap().0.is_empty());
    assert_eq!(bob.ack(vec![page[0].id]).await.unwrap(), 0);

    // Paging by cursor.
    for i in 0..5u8 {
        alice
            .deposit(vec![bob.local_peer_id()], None, vec![i; 10])
            .await
            .unwrap();
    }
    let (p1, more) = bob.fetch(0, 2).await.unwrap();
    assert!(more);
    let (p2, _) = bob.fetch(p1[1].id, 10).await.unwrap();
    assert_eq!(p2.len(), 3);
    assert_eq!(p2[0].ciphertext.as_ref(), &[2u8; 10]);
}

/// Pushes to a client with a live stream go on it, and so do its acknowledgements; a client
/// without one (it asked to listen with a bare request) gets `Deliver` requests as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stream_carries_pushes_and_acks_and_requests_remain_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), "");
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, mut bob_events) = connect(&relay.tcp).await;
    let (carol, mut carol_events) = connect(&relay.quic).await;
    bob.listen(true).await.unwrap();
    eventually("bob's live stream", || async {
        bob.live_stream_open().then_some(())
    })
    .await;
    // Carol listens without opening a live stream.
    let listen = mailbox::Request::Listen { enabled: true }.encode().unwrap();
    let answer = carol.raw(Proto::Mailbox, listen).await.unwrap();
    assert_eq!(
        mailbox::Response::from_frame(&answer).unwrap(),
        mailbox::Response::Ok
    );
    assert!(!carol.live_stream_open());

    for i in 0..3u8 {
        alice
            .deposit(
                vec![bob.local_peer_id(), carol.local_peer_id()],
                None,
                vec![i; 100],
            )
            .await
            .unwrap();
    }
    let mut bob_got = Vec::new();
    while bob_got.len() < 3 {
        let Event::Delivered(mail) = next_event(&mut bob_events).await else {
            continue;
        };
        bob_got.extend(mail);
    }
    let mut carol_got = Vec::new();
    while carol_got.len() < 3 {
        let Event::Delivered(mail) = next_event(&mut carol_events).await else {
            continue;
        };
        carol_got.extend(mail);
    }
    let bodies = |m: &[Envelope]| m.iter().map(|e| e.ciphertext[0]).collect::<Vec<_>>();
    assert_eq!(bodies(&bob_got), [0, 1, 2], "in deposit order");
    assert_eq!(bodies(&carol_got), [0, 1, 2]);
    assert_eq!(relay.metric("tern_relay_live_deliveries_total").await, 6.0);
    assert_eq!(
        relay.metric("tern_relay_live_stream_pushes_total").await,
        3.0,
        "bob's three on the stream, carol's three as requests"
    );

    // Bob acknowledges on the stream: no answer comes, the mail goes all the same.
    bob.ack_pushed(bob_got.iter().map(|e| e.id).collect())
        .await
        .unwrap();
    eventually("bob's acknowledgement applied", || async {
        fetch_all(&bob).await.is_empty().then_some(())
    })
    .await;
    assert_eq!(relay.metric("tern_relay_live_stream_acks_total").await, 1.0);
    // Carol's falls back to a request, and only her mail goes.
    carol
        .ack_pushed(carol_got.iter().map(|e| e.id).collect())
        .await
        .unwrap();
    assert!(fetch_all(&carol).await.is_empty());
    assert_eq!(relay.metric("tern_relay_live_stream_acks_total").await, 1.0);
    assert_eq!(relay.metric("tern_relay_acked_total").await, 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), "");
    let (alice, _) = connect(&relay.tcp).await;
    let mut recipients = Vec::new();
    for _ in 0..3 {
        recipients.push(connect(&relay.tcp).await.0);
    }
    let ids: Vec<PeerId> = recipients.iter().map(|c| c.local_peer_id()).collect();
    let body = vec![0xab; 4000];
    alice.deposit(ids, None, body.clone()).await.unwrap();
    for r in &recipients {
        let page = r.fetch(0, 10).await.unwrap().0;
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].ciphertext.as_ref(), body.as_slice());
    }
    assert_eq!(
        relay.metric("tern_relay_deposit_recipients_total").await,
        3.0
    );
    assert_eq!(relay.metric("tern_relay_mailbox_messages").await, 3.0);
    assert!(relay.terminate().success());
    let db = rusqlite::Connection::open(dir.path().join("db").join("relay.sqlite3")).unwrap();
    let (rows, bytes): (i64, i64) = db
        .query_row("SELECT COUNT(*), SUM(LENGTH(body)) FROM message", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(
        (rows, bytes),
        (1, 4000),
        "one stored copy for three mailboxes"
    );
    let refs: i64 = db
        .query_row("SELECT COUNT(*) FROM mailbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(refs, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_costs_one_token_plus_a_fiftieth_per_further_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        "[rate]\ndeposits_per_sec = 0.001\ndeposits_burst = 20.0\n",
    );
    let (alice, _) = connect(&relay.tcp).await;
    // 201 mailboxes cost 1 + 200/50 = 5 tokens: four such deposits fit a burst of 20, where
    // counting every mailbox as one would refuse the first.
    let members: Vec<PeerId> = (0..201).map(|_| PeerId::random()).collect();
    for _ in 0..4 {
        alice
            .deposit(members.clone(), None, vec![1; 100])
            .await
            .unwrap();
    }
    let e = alice
        .deposit(members.clone(), None, vec![1; 100])
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::RateLimited);
    assert_eq!(
        relay.metric("tern_relay_deposit_recipients_total").await,
        4.0 * 201.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_size_and_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        "[mailbox]\nmax_messages = 3\nmax_bytes = 2000\nmax_ciphertext_bytes = 1024\nshare_percent = 100\n\
         [rate]\ndeposits_per_sec = 0.5\ndeposits_burst = 12.0\nrequests_per_sec = 1.0\nrequests_burst = 40.0\n",
    );
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, _) = connect(&relay.tcp).await;
    let (carol, _) = connect(&relay.tcp).await;
    let b = bob.local_peer_id();

    // Too large.
    let e = alice
        .deposit(vec![b], None, vec![0; 1025])
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::TooLarge);
    // Count quota.
    for _ in 0..3 {
        alice.deposit(vec![b], None, vec![1; 10]).await.unwrap();
    }
    let e = alice.deposit(vec![b], None, vec![1; 10]).await.unwrap_err();
    assert_eq!(rejected(e), ErrorCode::QuotaCount);
    // A group deposit still reaches the recipients with room and names the full one.
    let (_, over) = alice
        .deposit(vec![b, carol.local_peer_id()], None, vec![2; 10])
        .await
        .unwrap();
    assert_eq!(over.iter().map(|r| r.peer).collect::<Vec<_>>(), vec![b]);
    assert_eq!(over[0].code, ErrorCode::QuotaCount);
    // Byte quota for Carol: 10 + 1000 fits, one more 1000 does not.
    alice
        .deposit(vec![carol.local_peer_id()], None, vec![3; 1000])
        .await
        .unwrap();
    let e = alice
        .deposit(vec![carol.local_peer_id()], None, vec![3; 1000])
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::QuotaBytes);
    // Acking frees room.
    let page = bob.fetch(0, 10).await.unwrap().0;
    assert_eq!(bob.ack(vec![page[0].id]).await.unwrap(), 1);
    // Alice has used 8 of her 12 deposit tokens (the rejected ones count too); a flood
    // of deposits is cut off with a retry hint.
    let mut limited = None;
    for _ in 0..10 {
        match alice.deposit(vec![b], None, vec![4; 10]).await {
            Ok(_) => {}
            Err(RequestError::Rejected(r)) if r.code == ErrorCode::RateLimited => {
                limited = Some(r);
                break;
            }
            Err(RequestError::Rejected(r)) if r.code == ErrorCode::QuotaCount => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    let limited = limited.expect("alice got rate limited");
    assert!(limited.retry_after_ms.unwrap() > 0);
    // ...without hurting others: Carol deposits to Bob (he has room after the ack above
    // only if alice's flood did not fill it, so deposit to Alice instead).
    carol
        .deposit(vec![alice.local_peer_id()], None, vec![5; 10])
        .await
        .unwrap();

    // A request flood (any protocol) hits the per-peer request limit.
    let mut flood_limited = false;
    for _ in 0..60 {
        match bob.fetch(0, 1).await {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(rejected(e), ErrorCode::RateLimited);
                flood_limited = true;
                break;
            }
        }
    }
    assert!(flood_limited);
    assert!(carol.fetch(0, 1).await.is_ok());
    assert!(
        relay
            .metric("tern_relay_rejects_total{reason=\"rate_limited\"}")
            .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        // Also runs the relay on a multi-threaded runtime (the default is one thread).
        "worker_threads = 2\n[mailbox]\nexpiry_sweep_secs = 1\nttl_secs = 3600\n",
    );
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, _) = connect(&relay.tcp).await;
    alice
        .deposit(vec![bob.local_peer_id()], Some(1), b"short".to_vec())
        .await
        .unwrap();
    alice
        .deposit(vec![bob.local_peer_id()], None, b"long".to_vec())
        .await
        .unwrap();
    assert_eq!(bob.fetch(0, 10).await.unwrap().0.len(), 2);
    let left = eventually("the short-lived message to expire", || async {
        let page = bob.fetch(0, 10).await.unwrap().0;
        (page.len() == 1).then_some(page)
    })
    .await;
    assert_eq!(left[0].ciphertext.as_ref(), b"long");
    eventually("the sweeper to delete it", || async {
        (relay.metric("tern_relay_expired_total").await >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_get_error_replies() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), "");
    let (c, _) = connect(&relay.tcp).await;
    let code = |f: Frame| match mailbox::Response::from_frame(&f).unwrap() {
        mailbox::Response::Error(r) => r.code,
        other => panic!("expected an error, got {other:?}"),
    };
    assert_eq!(
        code(c.raw(Proto::Mailbox, vec![]).await.unwrap()),
        ErrorCode::Malformed
    );
    assert_eq!(
        code(c.raw(Proto::Mailbox, vec![1, 0xff, 0x00]).await.unwrap()),
        ErrorCode::Malformed
    );
    let mut v2 = mailbox::Request::Fetch { after: 0, limit: 1 }
        .encode()
        .unwrap();
    v2[0] = 2;
    assert_eq!(
        code(c.raw(Proto::Mailbox, v2).await.unwrap()),
        ErrorCode::UnsupportedVersion
    );
    let huge = vec![1u8; mailbox::MAX_REQUEST_BYTES + 100];
    assert_eq!(
        code(c.raw(Proto::Mailbox, huge).await.unwrap()),
        ErrorCode::TooLarge
    );
    let deliver = mailbox::Request::Deliver { messages: vec![] }
        .encode()
        .unwrap();
    assert_eq!(
        code(c.raw(Proto::Mailbox, deliver).await.unwrap()),
        ErrorCode::BadRequest
    );
    let presence_garbage = c.raw(Proto::Presence, vec![1, 0x83, 1]).await.unwrap();
    assert!(matches!(
        tern_relay::wire::presence::Response::from_frame(&presence_garbage).unwrap(),
        tern_relay::wire::presence::Response::Error(r) if r.code == ErrorCode::Malformed
    ));
    // The relay is still fine and serves the same peer.
    assert!(c.fetch(0, 1).await.unwrap().0.is_empty());
    assert_eq!(
        relay
            .metric("tern_relay_rejects_total{reason=\"malformed\"}")
            .await,
        3.0
    );
}

/// A client asked for more requests at once than its connection runs streams for queues
/// the rest: every one of them is answered, none fails for want of a stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_stream_limit_wait_for_a_stream() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        "[rate]\nrequests_per_sec = 1000000.0\nrequests_burst = 1000000.0\n\
         deposits_per_sec = 1000000.0\ndeposits_burst = 1000000.0\n\
         [connections]\nmax_concurrent_streams = 1024\n",
    );
    // The most a client may keep in flight, which the client's own stream limit allows.
    let config = client::Config {
        max_requests_in_flight: client::MAX_REQUESTS_IN_FLIGHT,
        ..client::Config::default()
    };
    let (sender, _) = Client::connect(libp2p_key(), relay.tcp.clone(), config)
        .await
        .unwrap();
    let (recipient, _) = connect(&relay.tcp).await;
    let to = recipient.local_peer_id();
    let n = 3 * client::MAX_REQUESTS_IN_FLIGHT;
    let sends: Vec<_> = (0..n)
        .map(|i| {
            let s = sender.clone();
            tokio::spawn(async move { s.deposit(vec![to], None, vec![i as u8; 64]).await })
        })
        .collect();
    for s in sends {
        s.await.unwrap().expect("every deposit is answered");
    }
    assert_eq!(fetch_all(&recipient).await.len(), n);
}
