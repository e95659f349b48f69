//! Where outbox rows go: the one seam between the engine's delivery decisions (which lane
//! goes, in what order, when a row is tried again) and the network that carries a row.
//!
//! A lane task hands its rows to the engine's [`Courier`], and a fan-out each group
//! deposit, and reports what it answered; everything the engine decides from that (rows
//! taken by a relay or the device, a failed row and those behind it waiting for the backoff
//! or the relay's `retry_after`) is the same whatever carries the rows. The node's courier is
//! its network handle ([`super::lanes::deliver_lane`]: directly when connected, else mailbox
//! deposits at the lane's relay, a window of them at once on its deposit stream;
//! `net::rpc::deposit_many` for a group); tests use one in memory.

use std::sync::Arc;

use futures::future::BoxFuture;
use libp2p::PeerId;
use tokio::sync::mpsc;

use tern_relay::wire::mailbox::Refusal;

use crate::net::{self, NetError};

/// How to reach one recipient device in one of its lanes.
#[derive(Debug, Clone)]
pub(crate) struct Route {
    /// The device's peer id.
    pub peer: PeerId,
    /// The relay this lane deposits at (`None`: its user has no relay known; only a direct
    /// connection can carry the row).
    pub relay: Option<PeerId>,
    /// Whether a direct connection may be used (the lane at the user's first relay, so a
    /// connected device is not sent each row once per relay).
    pub direct: bool,
    /// The grant that device issued to this one, if any (shown to its relay).
    pub grant: Option<tern_crypto::grant::Grant>,
    /// The relay refused this device's deposits for their rate lately: one row at a time,
    /// this long apart, instead of a window of them (of which all but the first would be
    /// refused too, each read by the relay for nothing).
    pub pace: Option<std::time::Duration>,
}

/// Who took a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Taken {
    /// The device itself (a direct delivery): no relay needs the row any more.
    Device,
    /// The route's relay, after its commit: the device's other relays still need it.
    Relay,
}

/// Carries ciphertexts to devices; `Ok` once durable there (stored by the peer, or committed
/// by a relay).
pub(crate) trait Courier: Send + Sync + 'static {
    /// Delivers a lane's `payloads` over `route` in order, then those that come through
    /// `more` while it runs (rows queued behind them meanwhile), stopping at the first that
    /// fails: who took each delivered one (a prefix of all those, in order) and, if one
    /// failed, why. None after a failed one is taken, so it goes again after that one. It
    /// may end without taking what `more` still holds: those rows go on the lane's next run.
    fn deliver_lane(
        &self,
        route: Route,
        payloads: Vec<Vec<u8>>,
        more: mpsc::Receiver<Vec<u8>>,
    ) -> BoxFuture<'static, (Vec<Taken>, Option<NetError>)>;

    /// Deposits one group `payload` at `relay` for many devices, each with the token of the
    /// grant it issued (the relay stores it once); returns the recipients it refused.
    fn deposit_many(
        &self,
        relay: PeerId,
        recipients: Vec<(PeerId, Option<[u8; 32]>)>,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<Refusal>, NetError>>;
}

impl Courier for net::Client {
    fn deliver_lane(
        &self,
        route: Route,
        payloads: Vec<Vec<u8>>,
        more: mpsc::Receiver<Vec<u8>>,
    ) -> BoxFuture<'static, (Vec<Taken>, Option<NetError>)> {
        let net = self.clone();
        Box::pin(async move { super::lanes::deliver_lane(&net, route, payloads, more).await })
    }

    fn deposit_many(
        &self,
        relay: PeerId,
        recipients: Vec<(PeerId, Option<[u8; 32]>)>,
        payload: Vec<u8>,
    ) -> BoxFuture<'static, Result<Vec<Refusal>, NetError>> {
        let net = self.clone();
        Box::pin(async move { net::rpc::deposit_many(&net, relay, recipients, payload).await })
    }
}

/// The courier an engine uses (shared with its lane tasks).
pub(crate) type Shared = Arc<dyn Courier>;
