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
pub mod live;
pub mod pipeline;
pub mod rpc;
#[cfg(feature = "server")]
pub mod server;
pub mod wire;

pub use libp2p::{self, Multiaddr, PeerId};

/// The yamux configuration of every Tern connection (node, relay, relay client): the
/// default, whose stream windows start at 256 KiB and auto-tune up to the bandwidth-delay
/// product, which a 100 MB file needs on any link with a real round trip. Do not add setters
/// here without reading `tests/tests/yamux_window.rs`: `set_max_num_streams` alone can pin
/// every window at 256 KiB (the connection's 1 GiB budget divided among the streams).
pub fn yamux_config() -> libp2p::yamux::Config {
    libp2p::yamux::Config::default()
}
