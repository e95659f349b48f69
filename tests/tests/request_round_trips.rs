//! A request costs one round trip, not two: a stream that proposes one protocol sends its
//! first bytes with the proposal (multistream-select's lazy variant, `tern_relay::swarm_config`,
//! which the node, the relay and the relay client all use), instead of waiting for the
//! other end to agree to the protocol first. On a phone's link that wait is a whole round
//! trip (50–300 ms) added to every deposit, prekey claim and fetch, and to every new stream.
//!
//! The test needs no clock: a sender reaches a real `tern-relay` process through a loopback
//! proxy that, once the connection is up, holds back everything the relay sends to it. A
//! deposit sent then (as a request, and as the first deposit on a new deposit stream) must
//! still be stored: it left with its protocol proposal. With the eager variant the sender
//! waits for the relay's agreement, which the proxy holds, and nothing is stored. Releasing
//! the proxy then lets each deposit's answer through. (Checked by hand: with the override
//! taken out of `swarm_config`, the waits for the stored deposits run out.)
//!
//! The other side of opening a stream unconfirmed: a relay that does not take deposit
//! streams refuses the protocol only when the first deposit is on its way. Such a deposit
//! must fail as `Unsupported` (certain not to be stored), and a node's deposit then goes as
//! a request at once, not after a retry.
//!
//! A node coming up at its home relay asks everything at once, not one question per
//! answer: its device list, prekey bundle and live delivery go together, and the drain of
//! its mailbox does not wait for them. On a 100 ms link a restarted node then has its
//! waiting mail after about two round trips (the handshake and the fetch) instead of five
//! (`tern-bench paths`). Here a proxy lets the node's handshake through and then holds back
//! everything the relay sends: the relay must still get the bundle and the fetch.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tern_relay::{
    Multiaddr,
    client::{Client, Config, Keypair},
    libp2p::{SwarmBuilder, futures::StreamExt, noise, request_response, swarm::SwarmEvent, tcp},
    pipeline,
    rpc::{RequestError, Requests as _, deposit_request},
    wire::{Frame, mailbox},
};
use tern_tests::support::{
    Node, Relay,
    link::{tcp_target, via},
    relay_db, runtime, tern_command, wait_for,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, tcp::OwnedReadHalf, tcp::OwnedWriteHalf},
    sync::watch,
};

/// Longest wait for any one condition (a 2-core CI machine, debug build).
const WAIT: Duration = Duration::from_secs(30);

/// Forwards every TCP connection accepted on a loopback port to `to`: what the client
/// sends goes through as it is, what `to` sends back through `back`.
async fn proxy<F, Fut>(to: SocketAddr, back: F) -> SocketAddr
where
    F: Fn(OwnedReadHalf, OwnedWriteHalf) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let back = Arc::new(back);
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let back = back.clone();
            tokio::spawn(async move {
                let Ok(outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                let (in_r, in_w) = inbound.into_split();
                let (out_r, out_w) = outbound.into_split();
                let (_, never_held) = watch::channel(false);
                tokio::join!(forward(in_r, out_w, never_held), back(out_r, in_w));
            });
        }
    });
    addr
}

/// A [`proxy`] to `to` that forwards what comes back only while `held` is false.
async fn holding_proxy(to: SocketAddr, held: watch::Receiver<bool>) -> SocketAddr {
    proxy(to, move |from, back| forward(from, back, held.clone())).await
}

/// Copies `from` to `to`, reading nothing while `held` is true.
async fn forward(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut held: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        if held.wait_for(|h| !*h).await.is_err() {
            return;
        }
        match from.read(&mut buf).await {
            Ok(n @ 1..) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ => {
                let _ = to.shutdown().await;
                return;
            }
        }
    }
}

/// A [`proxy`] to `to` of whose answers only the start of a libp2p handshake goes through
/// (multistream-select's two lines agreeing on Noise, and the responder's Noise message),
/// which is all a dialer needs to finish its side of the handshake. Everything after it is
/// read and dropped, and counted in `dropped`.
async fn handshake_only_proxy(to: SocketAddr, dropped: Arc<AtomicUsize>) -> SocketAddr {
    proxy(to, move |from, back| {
        let dropped = dropped.clone();
        async move { handshake_only(from, back, &dropped).await }
    })
    .await
}

/// Copies the start of a handshake from `from` to `to` (see [`handshake_only_proxy`]), then
/// drops what follows.
async fn handshake_only(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, dropped: &AtomicUsize) {
    let mut buf = vec![0u8; 64 << 10];
    let mut seen = Vec::new();
    // The start of the handshake goes through…
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        let passed = seen.len();
        seen.extend_from_slice(&buf[..n]);
        let end = handshake_end(&seen);
        if to
            .write_all(&seen[passed..end.unwrap_or(seen.len())])
            .await
            .is_err()
        {
            return;
        }
        if let Some(end) = end {
            dropped.fetch_add(seen.len() - end, Ordering::Relaxed);
            break;
        }
    }
    // …and nothing after it.
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        dropped.fetch_add(n, Ordering::Relaxed);
    }
}

/// Where the responder's first handshake message ends in `bytes`: two multistream-select
/// messages (each an unsigned varint length and that many bytes), then one Noise message
/// (a 16-bit big-endian length and that many bytes). None while it is incomplete.
fn handshake_end(bytes: &[u8]) -> Option<usize> {
    fn varint(b: &[u8]) -> Option<(usize, usize)> {
        let mut v = 0usize;
        for (i, x) in b.iter().enumerate().take(4) {
            v |= usize::from(x & 0x7f) << (7 * i);
            if x & 0x80 == 0 {
                return Some((v, i + 1));
            }
        }
        None
    }
    let mut at = 0;
    for _ in 0..2 {
        let (len, n) = varint(bytes.get(at..)?)?;
        at += n + len;
    }
    let len = bytes.get(at..at + 2)?;
    let end = at + 2 + usize::from(u16::from_be_bytes([len[0], len[1]]));
    (end <= bytes.len()).then_some(end)
}

/// Every prekey bundle the relay in `data` stores, read from its database.
fn bundles(data: &std::path::Path) -> Vec<Vec<u8>> {
    let db = relay_db(data).unwrap();
    let mut stmt = db
        .prepare("SELECT bundle FROM prekey_bundle ORDER BY device")
        .unwrap();
    stmt.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// Every ciphertext in `owner`'s mailbox, fetched over a connection of its own.
async fn mailbox_of(relay: &Relay, owner: &Keypair) -> Vec<Vec<u8>> {
    let (c, _) = Client::connect(
        owner.clone(),
        relay.addr.parse().unwrap(),
        Config::default(),
    )
    .await
    .unwrap();
    let (page, _) = c.fetch(0, mailbox::MAX_FETCH_MESSAGES).await.unwrap();
    page.into_iter().map(|e| e.ciphertext.into_vec()).collect()
}

/// Waits (bounded by [`WAIT`]) until `owner`'s mailbox holds `n` messages; false if it
/// never does.
async fn stored(relay: &Relay, owner: &Keypair, n: usize) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if mailbox_of(relay, owner).await.len() >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[test]
fn a_request_leaves_with_its_protocol_proposal() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), "").unwrap();
    let rt = runtime();
    rt.block_on(async {
        let owner = Keypair::generate_ed25519();
        let to = owner.public().to_peer_id();
        let (hold, held) = watch::channel(false);
        let proxy = holding_proxy(tcp_target(&relay.addr).unwrap(), held).await;
        let via_proxy = via(&relay.addr, proxy).unwrap();
        let (sender, _events) = Client::connect(
            Keypair::generate_ed25519(),
            via_proxy.parse().unwrap(),
            Config::default(),
        )
        .await
        .unwrap();
        // The connection works both ways before anything is held.
        tokio::time::timeout(WAIT, sender.deposit(vec![to], None, b"first".to_vec()))
            .await
            .expect("a deposit through the proxy is answered")
            .expect("and stored");

        hold.send(true).unwrap();
        let request = tokio::spawn({
            let sender = sender.clone();
            async move { sender.deposit(vec![to], None, b"request".to_vec()).await }
        });
        assert!(
            stored(&relay, &owner, 2).await,
            "a deposit request reaches the relay while nothing of the relay's reaches the sender"
        );
        let piped = tokio::spawn({
            let sender = sender.clone();
            async move {
                let pipe = sender.open_pipeline(4).await?;
                pipe.deposit_with(vec![to], Vec::new(), None, b"stream".to_vec())
                    .await
            }
        });
        assert!(
            stored(&relay, &owner, 3).await,
            "a new deposit stream carries its first deposit while nothing of the relay's \
             reaches the sender"
        );

        hold.send(false).unwrap();
        for (what, task) in [("request", request), ("stream", piped)] {
            tokio::time::timeout(WAIT, task)
                .await
                .unwrap_or_else(|_| panic!("the {what} deposit is answered once released"))
                .unwrap()
                .unwrap_or_else(|e| panic!("the {what} deposit is stored: {e}"));
        }
        let all = mailbox_of(&relay, &owner).await;
        assert_eq!(
            all,
            [&b"first"[..], b"request", b"stream"].map(<[u8]>::to_vec),
            "each deposit is stored once, in order"
        );
    });
}

/// A peer on Tern's transport that takes deposits only as requests (a relay from before
/// deposit streams), answering each with message id 7; its address.
async fn requests_only_relay() -> Multiaddr {
    let mut swarm = SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            tern_relay::yamux_config,
        )
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                mailbox::codec(),
                [(mailbox::PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default(),
            )
        })
        .unwrap()
        .with_swarm_config(|c| tern_relay::swarm_config(c, Duration::from_secs(60)))
        .build();
    swarm
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let id = *swarm.local_peer_id();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address.with_p2p(id).unwrap();
        }
    };
    let answer = mailbox::Response::Deposited {
        message: 7,
        recipients: 1,
        refused: Vec::new(),
    }
    .encode()
    .unwrap();
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = swarm.select_next_some().await
            {
                let _ = swarm
                    .behaviour_mut()
                    .send_response(channel, Frame::Data(answer.clone()));
            }
        }
    });
    addr
}

#[test]
fn a_deposit_stream_the_relay_refuses_fails_as_unsupported_and_goes_as_a_request() {
    let rt = runtime();
    rt.block_on(async {
        let addr = requests_only_relay().await;
        let (client, _events) =
            Client::connect(Keypair::generate_ed25519(), addr, Config::default())
                .await
                .unwrap();
        let to = Keypair::generate_ed25519().public().to_peer_id();
        let deposit = || deposit_request(vec![to], Vec::new(), None, b"x".to_vec());

        // Opening the stream does not wait for the relay; its first deposits learn the answer.
        let pipe = client.open_pipeline(4).await.unwrap();
        let tickets = [
            pipe.submit(&deposit()).await.unwrap(),
            pipe.submit(&deposit()).await.unwrap(),
        ];
        for ticket in tickets {
            let answer = tokio::time::timeout(WAIT, ticket.answer())
                .await
                .expect("a refused deposit stream fails its deposits, it does not hang");
            assert!(
                matches!(answer, Err(RequestError::Unsupported)),
                "refused as a protocol: {answer:?}"
            );
        }
        assert!(!pipe.is_open(), "the refused stream is closed");

        // What the node does: the deposit goes as a request, answered.
        let pipe = client.open_pipeline(4).await.unwrap();
        let answer = tokio::time::timeout(WAIT, pipeline::deposit(Some(&pipe), &client, deposit()))
            .await
            .expect("answered");
        assert_eq!(answer.unwrap(), (7, Vec::new()), "answered as a request");
    });
}

/// A child process killed (and reaped) on drop.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a node logs when a step of its relay setup fails (here: times out, unanswered).
const SETUP_FAILED: [&str; 3] = [
    "publishing the device list failed",
    "publishing prekeys failed",
    "turning on live delivery failed",
];

#[test]
fn a_node_coming_up_asks_its_relay_everything_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_metrics(&dir.path().join("relay"), "").unwrap();
    // Bob's first run registers him there (device list, bundle) over loopback.
    let mut bob = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    bob.stop().unwrap();
    let bundles_before = bundles(&relay.data);
    assert_eq!(bundles_before.len(), 1, "bob's bundle is stored");
    let fetches_before = relay.metric("tern_relay_fetches_total").unwrap();

    let rt = runtime();
    let dropped = Arc::new(AtomicUsize::new(0));
    let proxy = rt.block_on(handshake_only_proxy(
        tcp_target(&relay.addr).unwrap(),
        dropped.clone(),
    ));
    let via_proxy = via(&relay.addr, proxy).unwrap();
    let mut up = Killed(
        tern_command(
            &bob.home,
            &[
                "up",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--no-direct",
                "--relay",
                &via_proxy,
            ],
        )
        .env("TERN_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap(),
    );
    // A setup step that waited for an answer fails only when its request times out.
    let gave_up = Arc::new(AtomicBool::new(false));
    let stderr = up.0.stderr.take().unwrap();
    std::thread::spawn({
        let gave_up = gave_up.clone();
        move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if SETUP_FAILED.iter().any(|m| line.contains(m)) {
                    gave_up.store(true, Ordering::SeqCst);
                }
            }
        }
    });
    // Nothing the relay answers reaches Bob: what it gets, Bob sent without an answer, and
    // before any request of the setup gave up waiting for one (each poll looks at that
    // first, then at the relay).
    let before_any_gave_up = |what: &str, seen: &dyn Fn() -> bool| {
        wait_for(what, WAIT, || {
            let gave_up = gave_up.load(Ordering::SeqCst);
            seen().then_some(gave_up)
        })
        .unwrap_or_else(|e| panic!("{e}"))
    };
    assert!(
        !before_any_gave_up("a fetch of bob's mailbox", &|| {
            relay
                .metric("tern_relay_fetches_total")
                .is_ok_and(|n| n > fetches_before)
        }),
        "the drain of the mailbox does not wait for the relay's setup"
    );
    assert!(
        !before_any_gave_up("bob's new bundle", &|| bundles(&relay.data)
            != bundles_before),
        "the prekey bundle goes with the device list, not after its answer"
    );
    assert!(
        dropped.load(Ordering::Relaxed) > 0,
        "the proxy held back the relay's answers"
    );
}
