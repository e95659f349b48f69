//! Tern relay: the wire protocol and a client (always built), and the relay server
//! (feature `server`, with the `tern-relay` binary).
//!
//! A relay keeps ciphertext for offline devices (`/tern/mailbox/1`) and pushes new mail to
//! listening ones on a long-lived stream (`/tern/live/1`), tells authorised
//! contacts who is online (`/tern/presence/1`), POSTs content-free wake-ups to push
//! endpoints, keeps encrypted media as blobs (`/tern/blob/1`, [`blob`]), and is a libp2p
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
pub mod live;
#[cfg(feature = "server")]
pub mod server;
pub mod wire;

pub use libp2p::{self, Multiaddr, PeerId};
