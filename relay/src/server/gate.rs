//! Refusals that cost the relay no request: made at the network layer, before a stream is
//! opened or a byte of a request is read.
//!
//! Every request the relay refuses still costs it a stream, a read, a decode and an answer
//! on its network thread. So what can be told from the address or the PeerId alone is
//! refused earlier:
//!
//! - a new connection from an IP address (IPv6 /64) that connects more often than
//!   `connections.ip_connections_per_sec` (bursts of `ip_connections_burst`), or whose
//!   request allowance (`rate.ip_requests_per_sec`) is used up, is refused before its
//!   handshake: a fresh PeerId per connection buys an attacker nothing, and a refused
//!   connection costs no key exchange;
//! - a banned peer (see `penalty.rs`) is refused at the end of its handshake, the first
//!   moment its PeerId is known, before any stream is accepted.
//!
//! The request allowance per IP lives here too (the event loop takes from it for each
//! request), so both sides see one bucket.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::PeerId;

use super::{
    iplimit::{IpKey, Refusal},
    penalty::MAX_BANNED,
    ratelimit::Limiter,
};

/// Per-address allowances and bans.
#[derive(Debug)]
pub struct Gate {
    /// Banned peers, until when.
    bans: HashMap<PeerId, Instant>,
    /// New inbound connections per IP address.
    connects: Limiter<IpKey>,
    /// Requests per IP address, all its peers and protocols together.
    requests: Limiter<IpKey>,
}

impl Gate {
    /// `connects` and `requests`: (per second, burst) per IP address.
    pub fn new(connects: (f64, f64), requests: (f64, f64)) -> Self {
        Self {
            bans: HashMap::new(),
            connects: Limiter::new(connects.0, connects.1),
            requests: Limiter::new(requests.0, requests.1),
        }
    }

    /// A new inbound connection from `ip` (none for a relayed one), before its handshake.
    pub fn admit_connection(&mut self, ip: Option<IpKey>, now: Instant) -> Result<(), Refusal> {
        let Some(ip) = ip else { return Ok(()) };
        // Checked first, so connecting while told to wait does not also use up connections.
        if !self.requests.would_allow(&ip, 1.0, now) {
            return Err(Refusal::IpRequests);
        }
        self.connects
            .take(&ip, 1.0, now)
            .map_err(|_| Refusal::IpConnectRate)
    }

    /// A connection whose handshake showed `peer`.
    pub fn admit_peer(&self, peer: &PeerId, now: Instant) -> Result<(), Refusal> {
        match self.bans.get(peer) {
            Some(until) if *until > now => Err(Refusal::Banned),
            _ => Ok(()),
        }
    }

    /// Refuses `peer`'s connections until `until`.
    pub fn ban(&mut self, peer: PeerId, until: Instant, now: Instant) {
        if self.bans.len() >= MAX_BANNED {
            self.bans.retain(|_, u| *u > now);
            if self.bans.len() >= MAX_BANNED
                && let Some(oldest) = self.bans.iter().min_by_key(|(_, u)| **u).map(|(p, _)| *p)
            {
                self.bans.remove(&oldest);
            }
        }
        self.bans.insert(peer, until);
    }

    /// Takes one request from `ip`'s allowance, or says how long until there is one.
    pub fn take_request(&mut self, ip: &IpKey, now: Instant) -> Result<(), Duration> {
        self.requests.take(ip, 1.0, now)
    }

    /// Forgets expired bans and full buckets.
    pub fn prune(&mut self, now: Instant) {
        self.bans.retain(|_, u| *u > now);
        self.connects.prune(now);
        self.requests.prune(now);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn connections_are_refused_by_rate_by_spent_requests_and_by_ban() {
        let t0 = Instant::now();
        let mut g = Gate::new((1.0, 3.0), (1.0, 2.0));
        let (home, other) = (
            IpKey::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpKey::V4(Ipv4Addr::new(192, 0, 2, 2)),
        );
        for _ in 0..3 {
            g.admit_connection(Some(home), t0).unwrap();
        }
        assert_eq!(
            g.admit_connection(Some(home), t0),
            Err(Refusal::IpConnectRate)
        );
        g.admit_connection(Some(other), t0).unwrap();
        // Relayed connections carry no address and are never refused here.
        g.admit_connection(None, t0).unwrap();
        g.admit_connection(Some(home), t0 + Duration::from_secs(1))
            .unwrap();
        // An address whose requests are spent cannot connect either, until they refill.
        g.take_request(&other, t0).unwrap();
        g.take_request(&other, t0).unwrap();
        assert!(g.take_request(&other, t0).is_err());
        assert_eq!(
            g.admit_connection(Some(other), t0),
            Err(Refusal::IpRequests)
        );
        g.admit_connection(Some(other), t0 + Duration::from_secs(1))
            .unwrap();
        // Bans end.
        let bad = PeerId::random();
        g.ban(bad, t0 + Duration::from_secs(60), t0);
        assert_eq!(g.admit_peer(&bad, t0), Err(Refusal::Banned));
        assert!(g.admit_peer(&PeerId::random(), t0).is_ok());
        g.prune(t0 + Duration::from_secs(61));
        assert!(g.admit_peer(&bad, t0 + Duration::from_secs(61)).is_ok());
    }
}
