//! Where outbox rows go: the one seam between the engine's delivery decisions (which lane
//! goes, in what order, when a row is tried again) and the network that carries a row.
//!
//! A lane task hands each row to the engine's [`Courier`] and reports what it answered;
//! everything the engine decides from that (acknowledged rows leave the outbox, a failed
//! row and those behind it wait for the backoff or the relay's `retry_after`) is the same
//! whatever carries the rows. The node's courier is its network handle
//! ([`super::lanes::deliver`]: directly when connected, else a mailbox deposit); tests use
//! one in memory.

use std::sync::Arc;

use futures::future::BoxFuture;
use libp2p::PeerId;

use crate::net::{self, NetError};

/// How to reach one recipient device.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// The device's peer id.
    pub peer: PeerId,
    /// Its user's relays, in the order to try them.
    pub relays: Vec<PeerId>,
    /// Whether a direct connection may be used.
    pub direct: bool,
    /// The grant that device issued to this one, if any (shown to its relay).
    pub grant: Option<tern_crypto::grant::Grant>,
}

/// Carries one pairwise ciphertext to one device; `Ok` once it is durable there (stored by
/// the peer, or committed by its relay).
pub(crate) trait Courier: Send + Sync + 'static {
    /// Delivers `payload` over `route`.
    fn deliver(&self, route: Route, payload: Vec<u8>) -> BoxFuture<'static, Result<(), NetError>>;
}

impl Courier for net::Client {
    fn deliver(&self, route: Route, payload: Vec<u8>) -> BoxFuture<'static, Result<(), NetError>> {
        let net = self.clone();
        Box::pin(async move {
            super::lanes::deliver(
                &net,
                route.peer,
                &route.relays,
                payload,
                route.direct,
                route.grant.as_ref(),
            )
            .await
        })
    }
}

/// The courier an engine uses (shared with its lane tasks).
pub(crate) type Shared = Arc<dyn Courier>;
