//! Admission: whether a request (or a deposit from a stream, or a live acknowledgement) of a
//! peer is served at all: not while shutting down, nor over its or its address's request
//! rate; a peer that keeps sending while told to wait is disconnected.
//!
//! Depends only on the event loop's state (`mod.rs`).

use std::{
    sync::atomic::Ordering::Relaxed,
    time::{Duration, Instant},
};

use libp2p::PeerId;

use super::{EventLoop, MAX_IP_RETRY_AFTER, now_ms};
use crate::{
    server::SHUTDOWN_GRACE,
    wire::{ErrorCode, Rejection},
};

impl EventLoop {
    /// Whether a request (or a deposit on a stream) of `peer` is served: not while shutting
    /// down, nor over its or its address's rate (`None`: dropped unanswered, see
    /// `disregards_limit`). A request served is a sign of life for presence.
    pub(super) fn admit(&mut self, peer: PeerId) -> Result<(), Option<Rejection>> {
        if self.shutting_down {
            return Err(Some(Rejection {
                code: ErrorCode::Unavailable,
                retry_after_ms: Some(SHUTDOWN_GRACE.as_millis() as u64),
            }));
        }
        if let Err(wait) = self.admit_request(peer) {
            if self.disregards_limit(peer, wait) {
                return Err(None);
            }
            return Err(Some(Rejection {
                code: ErrorCode::RateLimited,
                retry_after_ms: Some(wait.as_millis() as u64 + 1),
            }));
        }
        self.presence.touch(peer, Instant::now(), now_ms());
        Ok(())
    }

    /// Takes one request token from `peer` and one from its IP address (IPv6 /64), or says
    /// how long until both would be there.
    pub(super) fn admit_request(&mut self, peer: PeerId) -> Result<(), Duration> {
        let now = Instant::now();
        self.requests.take(&peer, 1.0, now)?;
        if let Some(ip) = self.peer_ips.get(&peer).copied() {
            let limits = &mut self.swarm.behaviour_mut().limits;
            if let Err(wait) = limits.gate().take_request(&ip, now) {
                self.metrics.rate_limited_by_ip.fetch_add(1, Relaxed);
                // The address's allowance is shared by its connections: each is asked to
                // wait for its share, so that all of them together come back at its rate
                // rather than at once.
                let share = limits.connections_from(ip).max(1);
                return Err(wait.saturating_mul(share).min(MAX_IP_RETRY_AFTER));
            }
        }
        Ok(())
    }

    /// Notes that `peer` is told to wait `wait`; true when it has kept sending while told to
    /// wait and was disconnected for it (its request is then dropped unanswered).
    fn disregards_limit(&mut self, peer: PeerId, wait: Duration) -> bool {
        let now = Instant::now();
        // What its connections could have had in flight when it was told: three request
        // protocols, each with its streams, and a deposit stream's window.
        let c = &self.cfg.connections;
        let tolerated = (c.max_concurrent_streams as u32)
            .saturating_mul(3)
            .saturating_add(c.deposit_window as u32)
            .saturating_mul(c.max_per_peer);
        match self.rate_limited.get_mut(&peer) {
            Some((until, sent)) if *until > now => {
                *sent += 1;
                if *sent <= tolerated {
                    return false;
                }
                self.rate_limited.remove(&peer);
                self.metrics.peers_cut_off.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "disconnected for ignoring its retry time");
                let _ = self.swarm.disconnect_peer_id(peer);
                true
            }
            _ => {
                self.rate_limited.insert(peer, (now + wait, 1));
                false
            }
        }
    }
}
