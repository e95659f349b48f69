//! End-to-end tests against the real `tern-relay` binary on 127.0.0.1, through the client.

mod support;

use support::{Relay, WAIT, eventually};
use tern_relay::rpc::Requests as _;
use tern_relay::{
    Multiaddr, PeerId,
    client::{self, Client, Event, Proto, RequestError},
    wire::{
        ErrorCode, Frame,
        mailbox::{self, Envelope},
        presence::{State, Status},
    },
};
use tokio::sync::mpsc;

async fn connect(addr: &Multiaddr) -> (Client, mpsc::Receiver<Event>) {
    let key = libp2p_key();
    Client::connect(key, addr.clone(), client::Config::default())
        .await
        .expect("connect to relay")
}

fn libp2p_key() -> tern_relay::client::Keypair {
    tern_relay::client::Keypair::generate_ed25519()
}

async fn next_event(rx: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("event in time")
        .expect("client alive")
}

fn rejected(e: RequestError) -> ErrorCode {
    match e {
        RequestError::Rejected(r) => r.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn fetch_all(c: &Client) -> Vec<Envelope> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (page, more) = c.fetch(after, 256).await.unwrap();
        if let Some(last) = page.last() {
            after = last.id;
        }
        out.extend(page);
        if !more {
            return out;
        }
    }
}

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
async fn presence_visibility_ttl_and_coalescing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        "[presence]\nheartbeat_ttl_secs = 2\ncoalesce_ms = 300\n",
    );
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, mut bob_events) = connect(&relay.tcp).await;
    let (eve, _) = connect(&relay.tcp).await;
    let a = alice.local_peer_id();
    alice
        .set_allow_list(vec![bob.local_peer_id()])
        .await
        .unwrap();

    let now = bob.subscribe(vec![a, eve.local_peer_id()]).await.unwrap();
    assert_eq!(now[0].state, State::Online);
    // Eve never allowed Bob: she looks like a stranger.
    assert_eq!(now[1].state, State::Unknown);
    assert_eq!(eve.query(vec![a]).await.unwrap()[0].state, State::Unknown);
    assert_eq!(
        eve.subscribe(vec![a]).await.unwrap()[0].state,
        State::Unknown
    );

    // Several changes within one coalescing window arrive as one update, latest state.
    alice.heartbeat(Status::Away).await.unwrap();
    alice.heartbeat(Status::Online).await.unwrap();
    alice.heartbeat(Status::Away).await.unwrap();
    let Event::Presence(update) = next_event(&mut bob_events).await else {
        panic!("expected presence")
    };
    assert_eq!(update.len(), 1);
    assert_eq!(update[0].peer, a);
    assert_eq!(update[0].state, State::Away);

    // Alice falls silent: after the TTL Bob sees her offline, with a last-seen time. (If a
    // coalescing tick split the three heartbeats above, one more `Away` comes first.)
    let update = loop {
        let Event::Presence(update) = next_event(&mut bob_events).await else {
            panic!("expected presence")
        };
        if update[0].state != State::Away {
            break update;
        }
    };
    assert_eq!(update[0].state, State::Offline);
    assert!(update[0].last_seen_ms.is_some());
    // A heartbeat brings her back.
    alice.heartbeat(Status::Online).await.unwrap();
    let Event::Presence(update) = next_event(&mut bob_events).await else {
        panic!("expected presence")
    };
    assert_eq!(update[0].state, State::Online);
    // Disconnecting makes her offline at once.
    drop(alice);
    let Event::Presence(update) = next_event(&mut bob_events).await else {
        panic!("expected presence")
    };
    assert_eq!(update[0].state, State::Offline);
    assert_eq!(bob.query(vec![a]).await.unwrap()[0].state, State::Offline);
    // Eve got nothing in all this.
    assert_eq!(eve.query(vec![a]).await.unwrap()[0].state, State::Unknown);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_every_acknowledged_deposit() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), "");
    let bob_key = libp2p_key();
    let bob_id = bob_key.public().to_peer_id();
    let acked = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let mut senders = Vec::new();
    for s in 0..4u32 {
        let (c, _) = connect(&relay.tcp).await;
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..1000u32 {
                let body = format!("sender {s} message {i}").into_bytes();
                match c.deposit(vec![bob_id], None, body.clone()).await {
                    Ok(_) => acked.lock().unwrap().push(body),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill the relay while deposits are in flight, right after 300 were acknowledged.
    eventually("300 acknowledged deposits", || async {
        (acked.lock().unwrap().len() >= 300).then_some(())
    })
    .await;
    relay.kill9();
    for s in senders {
        tokio::time::timeout(WAIT, s).await.unwrap().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    let relay = Relay::start(dir.path(), "");
    let (bob, _) = Client::connect(bob_key, relay.tcp.clone(), client::Config::default())
        .await
        .unwrap();
    let stored: std::collections::HashSet<Vec<u8>> = fetch_all(&bob)
        .await
        .into_iter()
        .map(|e| e.ciphertext.into_vec())
        .collect();
    let lost: Vec<_> = acked.iter().filter(|b| !stored.contains(*b)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged deposits lost",
        lost.len(),
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_identity_mail_allow_lists_and_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), "");
    let relay_id = relay.tcp.iter().last().map(|p| p.to_string());
    let (bob_key, alice_key) = (libp2p_key(), libp2p_key());
    let (alice, _) = Client::connect(
        alice_key.clone(),
        relay.tcp.clone(),
        client::Config::default(),
    )
    .await
    .unwrap();
    let (bob, _) = Client::connect(
        bob_key.clone(),
        relay.tcp.clone(),
        client::Config::default(),
    )
    .await
    .unwrap();
    alice
        .set_allow_list(vec![bob.local_peer_id()])
        .await
        .unwrap();
    alice
        .deposit(vec![bob.local_peer_id()], None, b"kept".to_vec())
        .await
        .unwrap();
    let (status, body) = relay.http_get("/health").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(relay.terminate().success(), "SIGTERM exits cleanly");
    drop((alice, bob));

    let relay = Relay::start(dir.path(), "");
    assert_eq!(
        relay.tcp.iter().last().map(|p| p.to_string()),
        relay_id,
        "same peer id after restart"
    );
    let (bob, _) = Client::connect(bob_key, relay.tcp.clone(), client::Config::default())
        .await
        .unwrap();
    let page = bob.fetch(0, 10).await.unwrap().0;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].ciphertext.as_ref(), b"kept");
    let seen = bob
        .query(vec![alice_key.public().to_peer_id()])
        .await
        .unwrap();
    assert_eq!(
        seen[0].state,
        State::Offline,
        "allow-list and last seen survived"
    );
    assert!(seen[0].last_seen_ms.is_some());
    assert_eq!(relay.metric("tern_relay_mailbox_messages").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_storage_fails_deposits_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), "[storage]\nmax_database_bytes = 524288\n");
    let (alice, _) = connect(&relay.tcp).await;
    let bob_key = libp2p_key();
    let bob_id = bob_key.public().to_peer_id();
    let mut acked = Vec::new();
    let mut full = false;
    for i in 0..200u32 {
        let mut body = vec![0u8; 16 * 1024];
        body[..4].copy_from_slice(&i.to_be_bytes());
        match alice.deposit(vec![bob_id], None, body.clone()).await {
            Ok(_) => acked.push(body),
            Err(e) => {
                assert_eq!(rejected(e), ErrorCode::StorageFull);
                full = true;
                break;
            }
        }
    }
    assert!(full, "the size limit was reached");
    assert!(acked.len() >= 5);
    relay.kill9();
    let relay = Relay::start(dir.path(), "[storage]\nmax_database_bytes = 524288\n");
    let (bob, _) = Client::connect(bob_key, relay.tcp.clone(), client::Config::default())
        .await
        .unwrap();
    let stored: Vec<Vec<u8>> = fetch_all(&bob)
        .await
        .into_iter()
        .map(|e| e.ciphertext.into_vec())
        .collect();
    assert_eq!(stored, acked);
}

/// A local HTTP receiver standing in for a push gateway: records each POST.
async fn push_receiver() -> (
    u16,
    mpsc::UnboundedReceiver<(std::time::Instant, String, String)>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            let _ = tx.send((
                                std::time::Instant::now(),
                                path,
                                String::from_utf8_lossy(&body).into_owned(),
                            ));
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_is_allow_listed_content_free_and_debounced() {
    let (port, mut posts) = push_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &format!(
            "[push]\nallowed_prefixes = [\"http://127.0.0.1:{port}/push/\"]\ndebounce_secs = 2\n"
        ),
    );
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, _) = connect(&relay.tcp).await;
    let b = bob.local_peer_id();
    for bad in [
        format!("http://127.0.0.1:{port}/admin"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://127.0.0.1:{}/push/x", port + 1),
    ] {
        assert_eq!(
            rejected(bob.register_push(Some(bad)).await.unwrap_err()),
            ErrorCode::NotAllowed
        );
    }
    bob.register_push(Some(format!("http://127.0.0.1:{port}/push/bob")))
        .await
        .unwrap();
    drop(bob);
    eventually("bob offline", || async {
        (relay.metric("tern_relay_connections").await == 1.0).then_some(())
    })
    .await;

    for i in 0..5u8 {
        alice.deposit(vec![b], None, vec![i; 100]).await.unwrap();
    }
    let (t1, path, body) = tokio::time::timeout(WAIT, posts.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(path, "/push/bob");
    let first: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(first["v"], 1);
    assert_eq!(first["type"], "wakeup");
    assert!(first["unread"].as_u64().unwrap() >= 1);
    assert_eq!(
        first.as_object().unwrap().len(),
        3,
        "nothing but version, type and count"
    );
    // The rest of the burst is coalesced into one trailing wake-up with the final count,
    // no sooner than the debounce interval.
    let (t2, _, body) = tokio::time::timeout(WAIT, posts.recv())
        .await
        .unwrap()
        .unwrap();
    let second: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(second["unread"], 5);
    assert!(
        t2 - t1 >= std::time::Duration::from_millis(1900),
        "{:?}",
        t2 - t1
    );
    assert!(posts.try_recv().is_err());
    // The relay counts a wake-up once the gateway has answered it.
    eventually("both wake-ups counted", || async {
        (relay.metric("tern_relay_push_sent_total").await == 2.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_relay_reservation_and_relayed_connection() {
    use tern_relay::libp2p::{
        self, StreamProtocol, SwarmBuilder, futures::StreamExt, identify, multiaddr::Protocol,
        noise, ping, relay as circuit, swarm::NetworkBehaviour, swarm::SwarmEvent, tcp, yamux,
    };
    #[derive(NetworkBehaviour)]
    #[behaviour(prelude = "tern_relay::libp2p::swarm::derive_prelude")]
    struct Node {
        relay: circuit::client::Behaviour,
        identify: identify::Behaviour,
        ping: ping::Behaviour,
    }
    fn node() -> libp2p::Swarm<Node> {
        SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|key, relay| Node {
                relay,
                identify: identify::Behaviour::new(identify::Config::new(
                    "/test/1".into(),
                    key.public(),
                )),
                ping: ping::Behaviour::new(
                    ping::Config::new().with_interval(std::time::Duration::from_millis(200)),
                ),
            })
            .unwrap()
            .build()
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), "");
    let hop = StreamProtocol::new("/libp2p/circuit/relay/0.2.0/hop");

    // The listener reserves a slot; the relay must offer hop without any external
    // address confirmation.
    let mut listener = node();
    let listener_id = *listener.local_peer_id();
    listener
        .listen_on(relay.tcp.clone().with(Protocol::P2pCircuit))
        .unwrap();
    let (mut reserved, mut saw_hop) = (false, false);
    tokio::time::timeout(WAIT, async {
        while !(reserved && saw_hop) {
            match listener.select_next_some().await {
                SwarmEvent::Behaviour(NodeEvent::Relay(
                    circuit::client::Event::ReservationReqAccepted { .. },
                )) => reserved = true,
                SwarmEvent::Behaviour(NodeEvent::Identify(identify::Event::Received {
                    info,
                    ..
                })) => {
                    saw_hop |= info.protocols.contains(&hop);
                }
                _ => {}
            }
        }
    })
    .await
    .expect("reservation accepted and hop advertised");
    let listener_task = tokio::spawn(async move {
        loop {
            listener.select_next_some().await;
        }
    });

    // Another node reaches it through the relay and pings it.
    let mut dialer = node();
    dialer
        .dial(
            relay
                .tcp
                .clone()
                .with(Protocol::P2pCircuit)
                .with(Protocol::P2p(listener_id)),
        )
        .unwrap();
    tokio::time::timeout(WAIT, async {
        loop {
            if let SwarmEvent::Behaviour(NodeEvent::Ping(ping::Event {
                peer,
                result: Ok(_),
                ..
            })) = dialer.select_next_some().await
                && peer == listener_id
            {
                return;
            }
        }
    })
    .await
    .expect("ping through the relay circuit");
    listener_task.abort();
    assert!(relay.metric("tern_relay_circuits_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_versions_signatures_and_single_use_prekeys() {
    use tern_crypto::{
        DeviceKeys, DeviceList, IdentityKey, SignedDeviceList,
        prekey::{ClaimedPrekey, PrekeyBundle},
    };
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), "");
    let id = IdentityKey::generate().unwrap();
    let user = *id.user_id().as_bytes();
    let mut laptop = DeviceKeys::generate().unwrap();
    let cert = laptop.certify(&id, "laptop", 1).unwrap();
    let list1 = DeviceList::first(&id, cert.clone(), 1);
    let signed1 = list1.sign(&id).unwrap();
    let key = |d: &DeviceKeys| {
        let mut secret = *d.network_secret();
        client::Keypair::ed25519_from_bytes(&mut secret).unwrap()
    };
    let (device, _) = Client::connect(key(&laptop), relay.tcp.clone(), client::Config::default())
        .await
        .unwrap();
    let (stranger, _) = connect(&relay.tcp).await;

    // Only a device in the list may publish it; then anyone may fetch it.
    let e = stranger
        .publish_device_list(signed1.as_bytes().to_vec())
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::NotAllowed);
    assert_eq!(
        rejected(stranger.fetch_device_list(user).await.unwrap_err()),
        ErrorCode::NotFound
    );
    device
        .publish_device_list(signed1.as_bytes().to_vec())
        .await
        .unwrap();
    assert_eq!(
        stranger.fetch_device_list(user).await.unwrap(),
        signed1.as_bytes()
    );
    // A tampered list fails its signature check.
    let mut tampered = signed1.as_bytes().to_vec();
    let n = tampered.len();
    tampered[n - 10] ^= 1;
    let code = rejected(device.publish_device_list(tampered).await.unwrap_err());
    assert!(
        matches!(code, ErrorCode::BadSignature | ErrorCode::Malformed),
        "{code:?}"
    );
    // Versions only grow.
    let code = rejected(
        device
            .publish_device_list(signed1.as_bytes().to_vec())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::Stale);
    let phone = DeviceKeys::generate().unwrap();
    let list2 = list1
        .with_device(phone.certify(&id, "phone", 2).unwrap(), 2)
        .unwrap();
    let signed2 = list2.sign(&id).unwrap();
    device
        .publish_device_list(signed2.as_bytes().to_vec())
        .await
        .unwrap();
    let code = rejected(
        device
            .publish_device_list(signed1.as_bytes().to_vec())
            .await
            .unwrap_err(),
    );
    assert_eq!(code, ErrorCode::Stale);
    let fetched =
        SignedDeviceList::from_bytes(&stranger.fetch_device_list(user).await.unwrap()).unwrap();
    assert_eq!(fetched.list().version, list2.version);

    // Prekeys: three one-time keys, each handed out once, then the fallback key.
    let bundle = PrekeyBundle::generate(&mut laptop, cert, 3).unwrap();
    let e = stranger
        .publish_prekeys(bundle.to_bytes().unwrap())
        .await
        .unwrap_err();
    assert_eq!(
        rejected(e),
        ErrorCode::NotAllowed,
        "only the device itself publishes its bundle"
    );
    assert_eq!(
        device
            .publish_prekeys(bundle.to_bytes().unwrap())
            .await
            .unwrap(),
        3
    );
    let laptop_peer = device.local_peer_id();
    let mut keys = std::collections::HashSet::new();
    let claims = futures_claims(&stranger, user, laptop_peer, 3).await;
    for (claim, fallback) in claims {
        assert!(!fallback);
        let verified = ClaimedPrekey::from_bytes(&claim)
            .unwrap()
            .verify(fetched.list())
            .unwrap();
        assert!(!verified.is_fallback());
        keys.insert(ClaimedPrekey::from_bytes(&claim).unwrap().prekey.key);
    }
    assert_eq!(keys.len(), 3, "each one-time key handed out once");
    let (claim, fallback) = stranger.claim_prekey(user, laptop_peer).await.unwrap();
    assert!(fallback);
    let verified = ClaimedPrekey::from_bytes(&claim)
        .unwrap()
        .verify(fetched.list())
        .unwrap();
    assert!(verified.is_fallback());
    // Unknown device, or the right device under the wrong user: nothing.
    let e = stranger
        .claim_prekey(user, PeerId::random())
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::NotFound);
    let e = stranger
        .claim_prekey([0; 16], laptop_peer)
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::NotFound);
}

/// Claims `n` prekeys concurrently (the relay must still hand each out once).
async fn futures_claims(
    c: &Client,
    user: [u8; 16],
    device: PeerId,
    n: usize,
) -> Vec<(Vec<u8>, bool)> {
    let calls = (0..n).map(|_| c.claim_prekey(user, device));
    futures::future::join_all(calls)
        .await
        .into_iter()
        .map(|r| r.unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_over_https_with_operator_root() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    // A local HTTPS push gateway with a self-signed certificate the operator trusts.
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca = dir.path().join("gateway-ca.pem");
    std::fs::write(&ca, key.cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.key_pair.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut posts) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let body = req.into_body().collect().await?.to_bytes();
                            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let relay = Relay::start(
        dir.path(),
        &format!(
            "[push]\nallowed_prefixes = [\"https://127.0.0.1:{port}/push/\"]\nextra_root_certs = {:?}\n",
            ca.display().to_string()
        ),
    );
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, _) = connect(&relay.tcp).await;
    let b = bob.local_peer_id();
    bob.register_push(Some(format!("https://127.0.0.1:{port}/push/bob")))
        .await
        .unwrap();
    drop(bob);
    alice.deposit(vec![b], None, vec![1; 10]).await.unwrap();
    let body = tokio::time::timeout(WAIT, posts.recv())
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["unread"], 1);
}

/// The data directory holds who writes to whom, allow-lists, last-seen times and push URLs:
/// only the relay's user may read it.
#[cfg(unix)]
#[test]
fn the_data_directory_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(tmp.path(), "");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let data = relay.data.join("db");
    assert_eq!(mode(&data), 0o700, "data directory");
    let db = data.join(tern_relay::server::storage::DB_FILE);
    assert_eq!(mode(&db), 0o600, "database");
    for extra in ["sqlite3-wal", "sqlite3-shm"] {
        let f = db.with_extension(extra);
        if f.exists() {
            assert_eq!(mode(&f), 0o600, "{extra}");
        }
    }
}

/// Introductions into one mailbox are rate-limited for all strangers together: past the
/// burst they are refused as `IntroFull` (remembered, held), whoever sends them, while the
/// same strangers still introduce themselves to another mailbox and a granted sender still
/// gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn introductions_are_rate_limited_per_mailbox() {
    use tern_crypto::grant::Grant;
    let dir = tempfile::tempdir().unwrap();
    // Three at once, then one every 1,000 s: nothing refills during the test.
    let cfg = "[mailbox]\nintro_burst = 3.0\nintro_per_sec = 0.001\n";
    let relay = Relay::start(dir.path(), cfg);
    let Some(tern_relay::libp2p::multiaddr::Protocol::P2p(relay_peer)) = relay.tcp.iter().last()
    else {
        panic!("relay address without /p2p");
    };
    let rb = relay_peer.to_bytes();
    let grant = Grant::from_bytes([7; 32]);
    let (owner, _) = connect(&relay.tcp).await;
    let (other, _) = connect(&relay.tcp).await;
    for o in [&owner, &other] {
        o.set_grants(vec![grant.token_hash(&rb)]).await.unwrap();
    }
    let (o, o2) = (owner.local_peer_id(), other.local_peer_id());
    let (s1, _) = connect(&relay.tcp).await;
    let (s2, _) = connect(&relay.tcp).await;
    for _ in 0..3 {
        s1.deposit(vec![o], None, vec![3; 10]).await.unwrap();
    }
    for s in [&s1, &s2] {
        let e = s.deposit(vec![o], None, vec![3; 10]).await.unwrap_err();
        assert_eq!(
            rejected(e),
            ErrorCode::IntroFull,
            "past the burst, for everyone"
        );
    }
    // Another mailbox has an allowance of its own; a granted sender is not an introduction.
    s2.deposit(vec![o2], None, vec![4; 10]).await.unwrap();
    s2.deposit_with(vec![o], vec![Some(grant.token(&rb))], None, vec![5; 10])
        .await
        .unwrap();
    let u = owner.usage().await.unwrap();
    assert_eq!((u.intro.messages, u.total.messages), (3, 4));
    assert!(
        relay
            .metric("tern_relay_rejects_total{reason=\"intro_full\"}")
            .await
            >= 2.0,
        "the refusals are counted"
    );
}

/// A mailbox closed by its owner's grants: a granted sender and an allow-listed contact get
/// in, each in its own share; strangers only into the capped introductions share; a grant the
/// owner rotated away (revoked) is refused with `NoGrant`, also after a restart; and the
/// owner's `Usage` names who fills the mailbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_shares_and_introductions() {
    use tern_crypto::grant::Grant;
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[mailbox]\nmax_messages = 40\nshare_percent = 25\nintro_max_messages = 6\n\
               intro_per_sender = 2\n";
    let mut relay = Relay::start(dir.path(), cfg);
    let (owner, _) = connect(&relay.tcp).await;
    let (friend, _) = connect(&relay.tcp).await;
    let (contact, _) = connect(&relay.tcp).await;
    let o = owner.local_peer_id();
    let Some(tern_relay::libp2p::multiaddr::Protocol::P2p(relay_peer)) = relay.tcp.iter().last()
    else {
        panic!("relay address without /p2p");
    };
    let rb = relay_peer.to_bytes();
    let (old, new) = (Grant::from_bytes([1; 32]), Grant::from_bytes([2; 32]));
    owner.set_grants(vec![old.token_hash(&rb)]).await.unwrap();
    owner
        .set_allow_list(vec![contact.local_peer_id()])
        .await
        .unwrap();

    // The granted friend: its share is a quarter of 40.
    for _ in 0..10 {
        friend
            .deposit_with(vec![o], vec![Some(old.token(&rb))], None, vec![1; 10])
            .await
            .unwrap();
    }
    let e = friend
        .deposit_with(vec![o], vec![Some(old.token(&rb))], None, vec![1; 10])
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::ShareFull);
    // The contact needs no token: the allow-list admits it, in its own share.
    contact.deposit(vec![o], None, vec![2; 10]).await.unwrap();
    // Strangers: two each, six in all.
    let mut took = 0;
    for _ in 0..5 {
        let (stranger, _) = connect(&relay.tcp).await;
        for _ in 0..3 {
            match stranger.deposit(vec![o], None, vec![3; 10]).await {
                Ok(_) => took += 1,
                Err(e) => assert_eq!(rejected(e), ErrorCode::IntroFull),
            }
        }
    }
    assert_eq!(took, 6);
    // A stranger with a made-up token is refused outright.
    let (stranger, _) = connect(&relay.tcp).await;
    let e = stranger
        .deposit_with(vec![o], vec![Some([9; 32])], None, vec![3; 10])
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::NoGrant);

    // What the owner sees: its mailbox by share, and which messages were introductions.
    let u = owner.usage().await.unwrap();
    assert_eq!(u.total.messages, 17);
    assert_eq!(u.intro.messages, 6);
    assert_eq!(u.registered, 1);
    assert_eq!(u.grants.len(), 1);
    assert_eq!(u.grants[0].1.messages, 10);
    assert!(
        u.senders
            .iter()
            .any(|(p, f)| *p == contact.local_peer_id() && f.messages == 1)
    );
    let mail = fetch_all(&owner).await;
    assert_eq!(mail.iter().filter(|m| m.intro).count(), 6);

    // The owner rotates the friend's grant (a revocation); it survives a restart.
    owner.set_grants(vec![new.token_hash(&rb)]).await.unwrap();
    drop((owner, friend, contact, stranger));
    assert!(relay.terminate().success());
    let relay = Relay::start(dir.path(), cfg);
    let (friend, _) = connect(&relay.tcp).await;
    let e = friend
        .deposit_with(vec![o], vec![Some(old.token(&rb))], None, vec![1; 10])
        .await
        .unwrap_err();
    assert_eq!(
        rejected(e),
        ErrorCode::NoGrant,
        "a revoked grant is refused"
    );
    // A fan-out names the refused recipient and reaches the rest.
    let (other, _) = connect(&relay.tcp).await;
    let (_, refused) = friend
        .deposit_with(
            vec![o, other.local_peer_id()],
            vec![Some(old.token(&rb)), None],
            None,
            vec![1; 10],
        )
        .await
        .unwrap();
    assert_eq!(refused.len(), 1);
    assert_eq!((refused[0].peer, refused[0].code), (o, ErrorCode::NoGrant));
    // The token made for another relay is worth nothing here.
    let e = friend
        .deposit_with(
            vec![o],
            vec![Some(new.token(b"another relay"))],
            None,
            vec![1; 10],
        )
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::NoGrant);
}

/// Below the disk reserve the relay takes nothing new (deposits, registrations) but still
/// serves what it holds, so mailboxes drain; with room again it takes mail as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_disk_reserve_nothing_new_is_taken_and_mail_drains() {
    let dir = tempfile::tempdir().unwrap();
    let bob_key = libp2p_key();
    let bob_of = |relay: &Relay| {
        Client::connect(
            bob_key.clone(),
            relay.tcp.clone(),
            client::Config::default(),
        )
    };
    let mut relay = Relay::start(dir.path(), "");
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, _) = bob_of(&relay).await.unwrap();
    let b = bob.local_peer_id();
    alice
        .deposit(vec![b], None, b"before".to_vec())
        .await
        .unwrap();
    drop((alice, bob));
    assert!(relay.terminate().success());

    // A reserve no disk has: every write that grows the database is refused.
    let mut relay = Relay::start(
        dir.path(),
        "[storage]\nreserve_bytes = 18000000000000000000\n",
    );
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, _) = bob_of(&relay).await.unwrap();
    let e = alice
        .deposit(vec![b], None, b"refused".to_vec())
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::StorageFull);
    let e = bob
        .set_allow_list(vec![alice.local_peer_id()])
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::StorageFull);
    // What is held still comes out and is acknowledged.
    let mail = fetch_all(&bob).await;
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].ciphertext.as_ref(), b"before");
    assert_eq!(bob.ack(vec![mail[0].id]).await.unwrap(), 1);
    drop((alice, bob));
    assert!(relay.terminate().success());

    let relay = Relay::start(dir.path(), "");
    let (alice, _) = connect(&relay.tcp).await;
    alice
        .deposit(vec![b], None, b"after".to_vec())
        .await
        .unwrap();
}

/// A peer that keeps depositing with tokens the owner never registered is disconnected and
/// its reconnections refused for a while; an honest peer on the same relay is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_grant_refusals_get_a_peer_banned() {
    use tern_crypto::grant::Grant;
    let dir = tempfile::tempdir().unwrap();
    let cfg = "[rate]\nrefusals_per_sec = 0.01\nrefusals_burst = 5.0\nban_secs = 600\n";
    let relay = Relay::start(dir.path(), cfg);
    let (owner, _) = connect(&relay.tcp).await;
    let o = owner.local_peer_id();
    let Some(tern_relay::libp2p::multiaddr::Protocol::P2p(relay_peer)) = relay.tcp.iter().last()
    else {
        panic!("relay address without /p2p");
    };
    let friend_grant = Grant::from_bytes([5; 32]);
    owner
        .set_grants(vec![friend_grant.token_hash(&relay_peer.to_bytes())])
        .await
        .unwrap();

    let bad_key = libp2p_key();
    let (bad, _) = Client::connect(
        bad_key.clone(),
        relay.tcp.clone(),
        client::Config::default(),
    )
    .await
    .unwrap();
    let mut refused = 0;
    let mut cut_off = false;
    for _ in 0..20 {
        match bad
            .deposit_with(vec![o], vec![Some([9; 32])], None, vec![1; 8])
            .await
        {
            Err(RequestError::Rejected(r)) => {
                assert_eq!(r.code, ErrorCode::NoGrant);
                refused += 1;
            }
            Err(_) => {
                cut_off = true;
                break;
            }
            Ok(_) => panic!("a made-up token is never taken"),
        }
    }
    assert!(cut_off, "the peer was disconnected");
    assert!(refused <= 6, "after its allowance ({refused} refusals)");
    eventually("the ban in the metrics", || async {
        (relay.metric("tern_relay_peers_banned_total").await == 1.0).then_some(())
    })
    .await;
    // Coming back under the same identity does not help.
    let back = Client::connect(bad_key, relay.tcp.clone(), client::Config::default()).await;
    if let Ok((c, _)) = back {
        assert!(
            c.deposit(vec![o], None, vec![1; 8]).await.is_err(),
            "a banned peer's requests are not served"
        );
    }
    // A granted friend still deposits.
    let (friend, _) = connect(&relay.tcp).await;
    friend
        .deposit_with(
            vec![o],
            vec![Some(friend_grant.token(&relay_peer.to_bytes()))],
            None,
            vec![2; 8],
        )
        .await
        .unwrap();
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
