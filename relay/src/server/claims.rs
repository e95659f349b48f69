//! Limits on one-time prekeys handed out by directory claims (`[prekeys]`).
//!
//! Anyone connected may claim a device's prekey, and each claim used to take one of its
//! one-time keys, so one identity could empty them. Now a claimer gets at most
//! `one_time_per_claimer` one-time keys of one device per window, and a device hands out at
//! most `one_time_per_device` per window to everybody together; beyond either, the claim is
//! answered with the fallback key (never an error), so a legitimate claimer still makes a
//! session. State lives in memory only: a restart forgets it, which at worst hands out one
//! more window's worth.

use std::time::Instant;

use libp2p::PeerId;

use super::{config::PrekeyConfig, ratelimit::Limiter};

/// Most (claimer, device) pairs, and most devices, tracked at once. A full table makes new
/// claims fall back to the fallback key (after pruning refilled buckets), so memory stays
/// bounded (a few MiB) whatever claimers do.
pub const MAX_TRACKED: usize = 65_536;

/// The claim limits.
#[derive(Debug)]
pub struct ClaimLimits {
    per_claimer: Limiter<(PeerId, PeerId)>,
    per_device: Limiter<PeerId>,
    enabled: bool,
}

impl ClaimLimits {
    /// Limits as configured.
    pub fn new(cfg: &PrekeyConfig) -> Self {
        let window = cfg.claim_window_secs.max(1) as f64;
        let (claimer, device) = (
            f64::from(cfg.one_time_per_claimer),
            f64::from(cfg.one_time_per_device),
        );
        Self {
            per_claimer: Limiter::new(claimer / window, claimer),
            per_device: Limiter::new(device / window, device),
            enabled: cfg.one_time_per_claimer > 0 && cfg.one_time_per_device > 0,
        }
    }

    fn full(&self, pair: &(PeerId, PeerId)) -> bool {
        (!self.per_claimer.contains(pair) && self.per_claimer.len() >= MAX_TRACKED)
            || (!self.per_device.contains(&pair.1) && self.per_device.len() >= MAX_TRACKED)
    }

    /// Whether `claimer` may be given one of `device`'s one-time keys now; if so, it is
    /// counted against both limits.
    pub fn allow_one_time(&mut self, claimer: PeerId, device: PeerId, now: Instant) -> bool {
        if !self.enabled {
            return false;
        }
        let pair = (claimer, device);
        if self.full(&pair) {
            self.prune(now);
            if self.full(&pair) {
                return false;
            }
        }
        if !self.per_claimer.would_allow(&pair, 1.0, now)
            || !self.per_device.would_allow(&device, 1.0, now)
        {
            return false;
        }
        self.per_claimer.take(&pair, 1.0, now).is_ok()
            && self.per_device.take(&device, 1.0, now).is_ok()
    }

    /// Forgets buckets that have refilled.
    pub fn prune(&mut self, now: Instant) {
        self.per_claimer.prune(now);
        self.per_device.prune(now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn limits(per_claimer: u32, per_device: u32) -> ClaimLimits {
        ClaimLimits::new(&PrekeyConfig {
            one_time_per_claimer: per_claimer,
            one_time_per_device: per_device,
            claim_window_secs: 3600,
        })
    }

    #[test]
    fn per_claimer_and_per_device_then_refill() {
        let t0 = Instant::now();
        let mut l = limits(3, 5);
        let (a, b, c, dev) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let got = (0..20).filter(|_| l.allow_one_time(a, dev, t0)).count();
        assert_eq!(got, 3, "three per claimer");
        // Another claimer gets the device's remaining two.
        assert_eq!((0..20).filter(|_| l.allow_one_time(b, dev, t0)).count(), 2);
        assert!(!l.allow_one_time(c, dev, t0), "the device's five are out");
        // Another device is unaffected.
        assert!(l.allow_one_time(c, PeerId::random(), t0));
        // A claimer's bucket refills at 3 an hour: one after 20 minutes.
        let later = t0 + Duration::from_secs(20 * 60 + 1);
        assert!(l.allow_one_time(a, dev, later));
        assert!(!l.allow_one_time(a, dev, later));
        // After a full window everything is forgotten.
        l.prune(t0 + Duration::from_secs(2 * 3600));
        assert_eq!(l.per_claimer.len() + l.per_device.len(), 0);
    }

    #[test]
    fn zero_means_fallback_only() {
        let mut l = limits(0, 100);
        assert!(!l.allow_one_time(PeerId::random(), PeerId::random(), Instant::now()));
    }

    #[test]
    fn the_table_is_bounded() {
        let t0 = Instant::now();
        let mut l = limits(3, 100);
        let dev = PeerId::random();
        // Each claimer takes one key of its own device: MAX_TRACKED pairs and devices.
        for _ in 0..MAX_TRACKED {
            assert!(l.allow_one_time(PeerId::random(), PeerId::random(), t0));
        }
        assert!(
            !l.allow_one_time(PeerId::random(), dev, t0),
            "full: fallback"
        );
        assert_eq!(l.per_claimer.len(), MAX_TRACKED);
        // Once the buckets have refilled, pruning makes room again.
        assert!(l.allow_one_time(PeerId::random(), dev, t0 + Duration::from_secs(3600)));
    }
}
