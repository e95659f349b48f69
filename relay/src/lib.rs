//! Tern relay: the wire protocol and a client (always built), and the relay server
//! (feature `server`, with the `tern-relay` binary).
//!
//! A relay keeps ciphertext for offline devices (`/tern/mailbox/1`) and pushes new mail to
//! listening ones on a long-lived stream (`/tern/live/1`), takes pipelined deposits on
//! another (`/tern/deposit/1`, [`pipeline`]), tells authorised
//! contacts who is online (`/tern/presence/1`), POSTs content-free wake-ups to push
//! endpoints, keeps encrypted media as blobs (`/tern/blob/1`, [`blob`]), serves Tern's
//! Kademlia DHT of signed relay records (`/tern/kad/1`, [`dht`]), and is a libp2p
//! circuit relay v2 so devices behind NAT can be reached and hole-punch. It sees device ids,
//! sizes and times, never plaintext. `docs/protocol.md` describes every frame;
//! `docs/relay.md` is the operator guide.

#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![deny(missing_docs)]

pub mod blob;
pub mod client;
pub mod dht;
pub mod inbound;
pub mod live;
pub mod pipeline;
pub mod rpc;
#[cfg(feature = "server")]
pub mod server;
pub mod wire;

pub use libp2p::{self, Multiaddr, PeerId};

/// How often each end of every Tern connection (node, relay, relay client) pings the other.
pub const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a ping may go unanswered. libp2p reports the second such ping in a row, and
/// then each end closes the connection ([`ping_failed`]): a hung peer, or a half-open
/// connection whose other end went without a word (a phone that lost its network, a NAT
/// mapping dropped, a host powered off), is let go within 2 × ([`PING_INTERVAL`] +
/// `PING_TIMEOUT`) (libp2p waits the interval again after a failure) instead of counting
/// as connected until TCP gives up, which with nothing to send it never does.
pub const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The ping behaviour of every Tern connection: [`PING_INTERVAL`], [`PING_TIMEOUT`].
pub fn ping_behaviour() -> libp2p::ping::Behaviour {
    libp2p::ping::Behaviour::new(
        libp2p::ping::Config::new()
            .with_interval(PING_INTERVAL)
            .with_timeout(PING_TIMEOUT),
    )
}

/// What every end does with a ping event: a ping that timed out (the second failure in a
/// row, as libp2p reports them; waiting for the answer, or for the ping stream to be
/// agreed on, which a peer that answers nothing never does) closes the connection, so what
/// uses it learns it is gone and dials again. A peer that does not speak ping (a DHT-only
/// client) keeps its connection.
pub fn ping_failed<B: libp2p::swarm::NetworkBehaviour>(
    swarm: &mut libp2p::Swarm<B>,
    event: &libp2p::ping::Event,
) {
    use libp2p::ping::Failure;
    let Err(failure) = &event.result else {
        return;
    };
    let timed_out = match failure {
        Failure::Timeout => true,
        Failure::Other { error } => error
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::TimedOut),
        _ => false,
    };
    if !timed_out {
        tracing::debug!(peer = %event.peer, error = %failure, "ping failed");
        return;
    }
    tracing::info!(peer = %event.peer, "pings unanswered; closing the connection");
    swarm.close_connection(event.connection);
}

/// The swarm settings of every Tern end (node, relay, relay client), with its idle
/// connection timeout. Streams are opened with multistream-select's lazy variant
/// (`V1Lazy`, identical on the wire): a stream that proposes one protocol sends its first
/// bytes with the proposal instead of a round trip later, so a request (a deposit, a
/// prekey claim, a fetch) is answered after one round trip instead of two. A peer that
/// does not speak the protocol refuses it as before; the opener learns it from its first
/// read (an I/O error rather than "unsupported"), and nothing in Tern tells the two apart.
pub fn swarm_config(
    config: libp2p::swarm::Config,
    idle_timeout: std::time::Duration,
) -> libp2p::swarm::Config {
    config
        .with_idle_connection_timeout(idle_timeout)
        .with_substream_upgrade_protocol_override(libp2p::core::upgrade::Version::V1Lazy)
}

/// The yamux configuration of every Tern connection (node, relay, relay client): the
/// default, whose stream windows start at 256 KiB and auto-tune up to the bandwidth-delay
/// product, which a 100 MB file needs on any link with a real round trip. Do not add setters
/// here without reading `tests/tests/yamux_window.rs`: `set_max_num_streams` alone can pin
/// every window at 256 KiB (the connection's 1 GiB budget divided among the streams).
pub fn yamux_config() -> libp2p::yamux::Config {
    libp2p::yamux::Config::default()
}
