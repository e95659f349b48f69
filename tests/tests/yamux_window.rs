//! Yamux must keep auto-tuning a stream's receive window: a blob upload of 100 MiB on one
//! stream would otherwise move at most 256 KiB per round trip.
//!
//! In yamux 0.14 (libp2p-yamux 0.48) a stream's receive window starts at 256 KiB and doubles
//! whenever the sender used half of it within two round trips, up to what the connection's
//! limit leaves (1 GiB less 256 KiB for each of `max_num_streams`). A configuration that
//! leaves nothing (`set_max_num_streams(4096)`) silently pins every window at 256 KiB.
//!
//! The test: two in-process swarms with the transport the node and relay build (TCP + Noise +
//! yamux, `tern_relay::yamux_config()` as both use it), joined through a loopback proxy
//! that delays every byte by [`LINK_DELAY`] each way, so the round trip yamux measures is
//! that of a real link and not loopback's microseconds (on loopback a window has no reason to
//! grow, on the internet it must). The receiver reads [`WARM_UP`] bytes, then stops reading;
//! the sender then has [`UNREAD`] more bytes to write. With a tuned window (several MiB)
//! the write completes while nobody reads; with a 256 KiB window it never can. The only
//! wait is for that condition, bounded.
//!
//! The two `#[ignore]`d tests are the negative controls, run by hand with `--ignored`: the
//! same body with a pinned window, and without the warm-up, must both stall.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tern_relay::libp2p::{
    Multiaddr, StreamProtocol, Swarm, SwarmBuilder,
    futures::{AsyncReadExt, AsyncWriteExt, StreamExt},
    multiaddr::Protocol,
    noise,
    swarm::SwarmEvent,
    tcp, yamux,
};
use tern_tests::support::link::delay_proxy;
use tokio::task::JoinHandle;

const PROTOCOL: StreamProtocol = StreamProtocol::new("/tern-test/window/1");
/// Bytes the receiver reads at once, so the window is tuned up.
const WARM_UP: usize = 32 << 20;
/// Bytes the sender writes after that, which nobody reads: eight times a fixed window.
const UNREAD: usize = 2 << 20;
/// One-way delay of the simulated link (a 100 ms round trip).
const LINK_DELAY: Duration = Duration::from_millis(50);
/// Size of each write and read.
const PIECE: usize = 64 << 10;
/// Longest wait for the unread write to complete.
const BOUND: Duration = Duration::from_secs(30);
/// How long the negative controls wait before calling the write stalled (a pinned window
/// stalls for ever; this only ends the test).
const STALL_BOUND: Duration = Duration::from_secs(10);
/// Longest wait for a connection or a stream.
const SETUP: Duration = Duration::from_secs(20);

/// How the unread write ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Every byte was accepted by the stream.
    Completed,
    /// Still blocked at the bound, after writing this many bytes.
    Stalled { written: u64 },
}

/// The node's and relay's yamux configuration: the one function every Tern connection uses.
fn tern_yamux() -> yamux::Config {
    tern_relay::yamux_config()
}

/// A configuration whose streams keep a fixed 256 KiB window: 4096 streams × 256 KiB use up
/// the whole 1 GiB connection limit, so no stream may grow.
fn pinned_yamux() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(4096);
    c
}

fn swarm(muxer: fn() -> yamux::Config) -> Swarm<libp2p_stream::Behaviour> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            muxer,
        )
        .expect("TCP transport")
        .with_behaviour(|_| libp2p_stream::Behaviour::new())
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build()
}

/// Drives a swarm in the background until dropped.
struct Running(JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn drive(mut s: Swarm<libp2p_stream::Behaviour>) -> Running {
    Running(tokio::spawn(async move {
        loop {
            s.select_next_some().await;
        }
    }))
}

/// One stream from a sender to a receiver over the delayed link, both swarms built with
/// `muxer`. The receiver reads `warm_up` bytes and then holds the stream without reading;
/// the sender writes `warm_up + unread` bytes. Returns whether that write completed within
/// `bound`.
async fn write_while_unread(
    muxer: fn() -> yamux::Config,
    warm_up: usize,
    unread: usize,
    bound: Duration,
) -> Outcome {
    let mut receiver = swarm(muxer);
    let receiver_id = *receiver.local_peer_id();
    let mut incoming = receiver
        .behaviour()
        .new_control()
        .accept(PROTOCOL)
        .expect("first registration of the protocol");
    receiver
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().expect("multiaddr"))
        .expect("listen");
    let listen: SocketAddr = tokio::time::timeout(SETUP, async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = receiver.select_next_some().await {
                break tcp_socket(&address);
            }
        }
    })
    .await
    .expect("the receiver listens in time");
    let _receiver = drive(receiver);
    let proxy = delay_proxy(listen, LINK_DELAY).await.expect("proxy");

    let mut sender = swarm(muxer);
    let mut control = sender.behaviour().new_control();
    let dial: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", proxy.addr.port())
        .parse::<Multiaddr>()
        .expect("multiaddr")
        .with(Protocol::P2p(receiver_id));
    sender.dial(dial).expect("dial");
    tokio::time::timeout(SETUP, async {
        loop {
            match sender.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => break,
                SwarmEvent::OutgoingConnectionError { error, .. } => panic!("dial failed: {error}"),
                _ => {}
            }
        }
    })
    .await
    .expect("connected in time");
    let _sender = drive(sender);

    let mut out = tokio::time::timeout(SETUP, control.open_stream(receiver_id, PROTOCOL))
        .await
        .expect("stream opened in time")
        .expect("stream opened");
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let written = written.clone();
        tokio::spawn(async move {
            let piece = vec![0x5au8; PIECE];
            let mut left = warm_up + unread;
            while left > 0 {
                let n = left.min(PIECE);
                out.write_all(&piece[..n]).await.expect("write");
                written.fetch_add(n as u64, Ordering::Relaxed);
                left -= n;
            }
            out.flush().await.expect("flush");
            // Kept open: closing is not what is being tested.
            out
        })
    };

    let (_, mut inbound) = tokio::time::timeout(SETUP, incoming.next())
        .await
        .expect("inbound stream in time")
        .expect("inbound stream");
    let mut buf = vec![0u8; PIECE];
    let mut read = 0;
    while read < warm_up {
        let n = (warm_up - read).min(PIECE);
        tokio::time::timeout(BOUND, inbound.read_exact(&mut buf[..n]))
            .await
            .expect("warm-up read in time")
            .expect("warm-up read");
        read += n;
    }
    // From here on nobody reads `inbound`; it stays open until the end of the test.
    let outcome = match tokio::time::timeout(bound, writer).await {
        Ok(done) => {
            done.expect("writer task");
            Outcome::Completed
        }
        Err(_) => Outcome::Stalled {
            written: written.load(Ordering::Relaxed),
        },
    };
    drop(inbound);
    outcome
}

fn tcp_socket(addr: &Multiaddr) -> SocketAddr {
    let mut ip = None;
    let mut port = None;
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    SocketAddr::from((
        ip.expect("an IPv4 listen address"),
        port.expect("a TCP port"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tuned_window_takes_megabytes_nobody_reads_yet() {
    let outcome = write_while_unread(tern_yamux, WARM_UP, UNREAD, BOUND).await;
    assert_eq!(
        outcome,
        Outcome::Completed,
        "after a {} MiB warm-up the stream's window should have grown past {} MiB; \
         is yamux's window auto-tuning off (a fixed 256 KiB window)?",
        WARM_UP >> 20,
        UNREAD >> 20,
    );
}

/// Negative control: with windows pinned at 256 KiB the same body must stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "negative control for tuned_window_takes_megabytes_nobody_reads_yet; waits STALL_BOUND"]
async fn pinned_window_stalls() {
    let outcome = write_while_unread(pinned_yamux, WARM_UP, UNREAD, STALL_BOUND).await;
    assert!(
        matches!(outcome, Outcome::Stalled { written } if written < (WARM_UP + UNREAD) as u64),
        "{outcome:?}"
    );
    eprintln!("pinned window: {outcome:?} (warm-up {WARM_UP}, unread {UNREAD})");
}

/// Negative control: without a warm-up the window is still 256 KiB and the write must stall.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "negative control for tuned_window_takes_megabytes_nobody_reads_yet; waits STALL_BOUND"]
async fn untuned_window_stalls() {
    let outcome = write_while_unread(tern_yamux, 0, UNREAD, STALL_BOUND).await;
    assert!(
        matches!(outcome, Outcome::Stalled { written } if written < UNREAD as u64),
        "{outcome:?}"
    );
    eprintln!("no warm-up: {outcome:?} (unread {UNREAD})");
}
