//! Peers that keep asking for what they were refused are cut off for a while.
//!
//! A stranger flooding a closed mailbox is refused (`IntroFull` once its part of the
//! introductions share is used, `NoGrant` for a made-up token) — but every refusal still
//! costs the relay a stream, a decode and an answer, and a flood of them slows everyone's
//! deposits. An honest node backs off after such a refusal (exponentially, per row), so it
//! sees few; a peer that collects more than `rate.refusals_burst` of them, beyond
//! `rate.refusals_per_sec`, is disconnected and its connections refused for
//! `rate.ban_secs`. Rate-limit refusals are left to the token buckets: they come with a
//! `retry_after_ms` that honest clients follow.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::PeerId;

use super::ratelimit::Limiter;
use crate::wire::ErrorCode;

/// Most banned peers remembered (the oldest bans are forgotten first when full).
pub const MAX_BANNED: usize = 65_536;

/// Refusal counting and bans.
#[derive(Debug)]
pub struct Penalties {
    refusals: Limiter<PeerId>,
    banned: HashMap<PeerId, Instant>,
    ban: Duration,
}

impl Penalties {
    /// `rate` refusals per second tolerated, up to `burst`; bans last `ban`.
    pub fn new(rate: f64, burst: f64, ban: Duration) -> Self {
        Penalties {
            refusals: Limiter::new(rate, burst),
            banned: HashMap::new(),
            ban,
        }
    }

    /// Whether a refusal with `code` counts against the peer.
    pub fn counts(code: ErrorCode) -> bool {
        matches!(code, ErrorCode::IntroFull | ErrorCode::NoGrant)
    }

    /// Counts a refusal; true when the peer is now banned (disconnect it).
    pub fn refused(&mut self, peer: PeerId, now: Instant) -> bool {
        if self.refusals.take(&peer, 1.0, now).is_ok() {
            return false;
        }
        if self.banned.len() >= MAX_BANNED {
            self.prune(now);
            if self.banned.len() >= MAX_BANNED
                && let Some(oldest) = self.banned.iter().min_by_key(|(_, t)| **t).map(|(p, _)| *p)
            {
                self.banned.remove(&oldest);
            }
        }
        self.banned.insert(peer, now + self.ban);
        true
    }

    /// Whether `peer` is banned now.
    pub fn is_banned(&self, peer: &PeerId, now: Instant) -> bool {
        self.banned.get(peer).is_some_and(|until| *until > now)
    }

    /// Forgets expired bans and full buckets.
    pub fn prune(&mut self, now: Instant) {
        self.banned.retain(|_, until| *until > now);
        self.refusals.prune(now);
    }
}

/// How long a counted refusal (`IntroFull`, `NoGrant`) is held back before it is answered,
/// on average (see [`hold`]).
pub const REFUSAL_DELAY: Duration = Duration::from_secs(1);

/// The `n`th held refusal's hold: spread evenly over half to one and a half times
/// [`REFUSAL_DELAY`] (the fractional parts of `n` times the golden ratio), so that the
/// refusals of a flood that began at one moment are not all answered, and tried again, at
/// one moment a second later.
pub fn hold(n: u64) -> Duration {
    // 2^64 / golden ratio: multiplying by it wraps to n·φ's fractional part, in 64 bits.
    let frac = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) as f64 / 2f64.powi(64);
    REFUSAL_DELAY.mul_f64(0.5 + frac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_past_its_allowance_is_banned_for_a_while() {
        let t0 = Instant::now();
        let mut p = Penalties::new(1.0, 3.0, Duration::from_secs(60));
        let (bad, good) = (PeerId::random(), PeerId::random());
        for _ in 0..3 {
            assert!(!p.refused(bad, t0));
        }
        assert!(p.refused(bad, t0), "the fourth at once bans");
        assert!(p.is_banned(&bad, t0 + Duration::from_secs(59)));
        assert!(!p.is_banned(&bad, t0 + Duration::from_secs(61)));
        // One refusal a second is within the allowance.
        for s in 0..10 {
            assert!(!p.refused(good, t0 + Duration::from_secs(s)));
        }
        p.prune(t0 + Duration::from_secs(61));
        assert!(!p.is_banned(&bad, t0 + Duration::from_secs(61)));
        assert!(Penalties::counts(ErrorCode::IntroFull));
        assert!(!Penalties::counts(ErrorCode::RateLimited));
    }

    #[test]
    fn holds_are_spread_over_half_to_one_and_a_half_seconds() {
        // 200 consecutive holds, in ten slices of a tenth of a second each: every slice gets
        // its share (about 20), none is empty or crowded.
        let mut slices = [0u32; 10];
        for n in 1..=200 {
            let h = hold(n);
            assert!(h >= REFUSAL_DELAY / 2 && h < REFUSAL_DELAY * 3 / 2, "{h:?}");
            let slice = ((h.as_secs_f64() / REFUSAL_DELAY.as_secs_f64() - 0.5) * 10.0) as usize;
            slices[slice] += 1;
        }
        assert!(slices.iter().all(|&c| (15..=25).contains(&c)), "{slices:?}");
    }
}
