//! Token buckets per peer.

use std::{
    collections::HashMap,
    hash::Hash,
    time::{Duration, Instant},
};

/// One token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

/// Token buckets keyed by peer: `rate` tokens per second up to `burst`.
#[derive(Debug)]
pub struct Limiter<K> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    /// A limiter refilling `rate` tokens per second, holding at most `burst`.
    pub fn new(rate: f64, burst: f64) -> Self {
        Self {
            rate,
            burst,
            buckets: HashMap::new(),
        }
    }

    /// Takes `cost` tokens for `key`, or says how long until they would be there.
    pub fn take(&mut self, key: &K, cost: f64, now: Instant) -> Result<(), Duration> {
        let b = self.buckets.entry(key.clone()).or_insert(Bucket {
            tokens: self.burst,
            updated: now,
        });
        let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.rate).min(self.burst);
        b.updated = now;
        if b.tokens >= cost {
            b.tokens -= cost;
            Ok(())
        } else {
            let missing = cost.min(self.burst) - b.tokens;
            Err(Duration::from_secs_f64((missing / self.rate).max(0.001)))
        }
    }

    /// Whether `cost` tokens for `key` are there now, without taking them.
    pub fn would_allow(&self, key: &K, cost: f64, now: Instant) -> bool {
        match self.buckets.get(key) {
            Some(b) => {
                let elapsed = now.saturating_duration_since(b.updated).as_secs_f64();
                (b.tokens + elapsed * self.rate).min(self.burst) >= cost
            }
            None => self.burst >= cost,
        }
    }

    /// Whether `key` has a bucket (is not full).
    pub fn contains(&self, key: &K) -> bool {
        self.buckets.contains_key(key)
    }

    /// Forgets buckets that have refilled completely: they hold no information, so the
    /// map stays as small as the set of recently active peers.
    pub fn prune(&mut self, now: Instant) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| {
            b.tokens + now.saturating_duration_since(b.updated).as_secs_f64() * rate < burst
        });
    }

    /// How many peers are tracked.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no peer is tracked.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill_then_prune() {
        let t0 = Instant::now();
        let mut l = Limiter::new(10.0, 5.0);
        for _ in 0..5 {
            l.take(&1, 1.0, t0).unwrap();
        }
        let wait = l.take(&1, 1.0, t0).unwrap_err();
        assert!(
            wait >= Duration::from_millis(90) && wait <= Duration::from_millis(110),
            "{wait:?}"
        );
        // Another key is unaffected.
        l.take(&2, 1.0, t0).unwrap();
        l.take(&1, 1.0, t0 + Duration::from_millis(100)).unwrap();
        l.prune(t0 + Duration::from_secs(10));
        assert!(l.is_empty());
    }
}
