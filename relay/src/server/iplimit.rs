//! Connection admission: limits on connections in all, per PeerId and per IP address.
//!
//! PeerIds cost nothing to make, so a per-peer limit alone lets one host with many PeerIds
//! take every connection slot. This behaviour also counts established inbound connections
//! by the remote IP address — an IPv4 address, or the /64 prefix of an IPv6 address (a
//! host, or a home network, is usually given a whole /64 and can pick any address in it) —
//! and refuses a connection over `max_per_ip` at the handshake, before any request is read.
//!
//! A connection without an IP address in its remote address (a relayed `/p2p-circuit`
//! connection) is counted in the total and per peer but against no IP: it must never be
//! charged to the address of the relay it came through.

use std::{
    collections::HashMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use libp2p::{
    Multiaddr, PeerId,
    core::{Endpoint, transport::PortUse},
    multiaddr::Protocol,
    swarm::{
        ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure,
        NetworkBehaviour, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
    },
};

use super::{gate::Gate, metrics::Metrics};

/// What connections are counted by: an IPv4 address, or the first 64 bits of an IPv6
/// address. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) counts as its IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpKey {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// One IPv6 /64 prefix (the address's upper 64 bits).
    V6(u64),
}

impl IpKey {
    /// The key of an IP address.
    pub fn of_ip(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => IpKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpKey::V4(v4),
                None => IpKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }

    /// The key of a remote address: its first `/ip4` or `/ip6` component, or `None` for a
    /// relayed (`/p2p-circuit`) address or one without an IP.
    pub fn of_addr(addr: &Multiaddr) -> Option<Self> {
        if addr.iter().any(|p| matches!(p, Protocol::P2pCircuit)) {
            return None;
        }
        addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(Self::of_ip(IpAddr::V4(ip))),
            Protocol::Ip6(ip) => Some(Self::of_ip(IpAddr::V6(ip))),
            _ => None,
        })
    }
}

/// Why a connection was refused; each is a `reason` label of
/// `tern_relay_connections_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `connections.max_pending_incoming` handshakes were in progress.
    Pending,
    /// `connections.max_established` connections were open.
    Total,
    /// `connections.max_per_peer` connections of this PeerId were open.
    PerPeer,
    /// `connections.max_per_ip` connections from this IPv4 address or IPv6 /64 were open.
    PerIp,
    /// This IPv4 address or IPv6 /64 connected more often than
    /// `connections.ip_connections_per_sec` allows (refused before the handshake).
    IpConnectRate,
    /// This IPv4 address or IPv6 /64 has used up its request allowance
    /// (`rate.ip_requests_per_sec`; refused before the handshake).
    IpRequests,
    /// The peer is banned (refused when its handshake shows its PeerId).
    Banned,
}

impl Refusal {
    /// Every reason, in metrics order.
    pub const ALL: [Refusal; 7] = [
        Refusal::Pending,
        Refusal::Total,
        Refusal::PerPeer,
        Refusal::PerIp,
        Refusal::IpConnectRate,
        Refusal::IpRequests,
        Refusal::Banned,
    ];

    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Pending => "pending",
            Refusal::Total => "total",
            Refusal::PerPeer => "per_peer",
            Refusal::PerIp => "per_ip",
            Refusal::IpConnectRate => "ip_connect_rate",
            Refusal::IpRequests => "ip_requests",
            Refusal::Banned => "banned",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connection limit reached ({})", self.label())
    }
}

impl std::error::Error for Refusal {}

/// The limits (from `[connections]`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Handshakes in progress.
    pub max_pending_incoming: u32,
    /// Established connections in all.
    pub max_established: u32,
    /// Established connections per PeerId.
    pub max_per_peer: u32,
    /// Established (and pending) inbound connections per [`IpKey`].
    pub max_per_ip: u32,
}

/// The counts behind the limits, apart from libp2p so they can be tested alone. Every map
/// holds only live connections, so it is bounded by the limits themselves.
#[derive(Debug)]
pub struct Counts {
    limits: Limits,
    /// Inbound handshakes in progress, with their remote's key.
    pending: HashMap<ConnectionId, Option<IpKey>>,
    /// Open connections, with their peer and remote's key.
    established: HashMap<ConnectionId, (PeerId, Option<IpKey>)>,
    per_peer: HashMap<PeerId, u32>,
    /// Open plus pending inbound connections per key.
    per_ip: HashMap<IpKey, u32>,
}

fn bump(map: &mut HashMap<IpKey, u32>, key: IpKey) {
    *map.entry(key).or_default() += 1;
}

fn drop_one<K: std::hash::Hash + Eq>(map: &mut HashMap<K, u32>, key: &K) {
    if let Some(n) = map.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(key);
        }
    }
}

impl Counts {
    /// No connections yet.
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            pending: HashMap::new(),
            established: HashMap::new(),
            per_peer: HashMap::new(),
            per_ip: HashMap::new(),
        }
    }

    fn ip_full(&self, ip: Option<IpKey>) -> bool {
        ip.is_some_and(|k| self.per_ip.get(&k).copied().unwrap_or(0) >= self.limits.max_per_ip)
    }

    /// An inbound handshake begins from `remote`.
    pub fn pending_inbound(&mut self, id: ConnectionId, remote: &Multiaddr) -> Result<(), Refusal> {
        let ip = IpKey::of_addr(remote);
        if self.pending.len() >= self.limits.max_pending_incoming as usize {
            return Err(Refusal::Pending);
        }
        // A handshake holds its slot (in all and for its IP) until it ends, so a burst of
        // handshakes cannot overshoot the limits before any of them is established.
        if self.established.len() + self.pending.len() >= self.limits.max_established as usize {
            return Err(Refusal::Total);
        }
        if self.ip_full(ip) {
            return Err(Refusal::PerIp);
        }
        self.pending.insert(id, ip);
        if let Some(k) = ip {
            bump(&mut self.per_ip, k);
        }
        Ok(())
    }

    /// A handshake failed or was refused (by this or another behaviour).
    pub fn pending_failed(&mut self, id: ConnectionId) {
        if let Some(Some(k)) = self.pending.remove(&id) {
            drop_one(&mut self.per_ip, &k);
        }
    }

    /// A connection (inbound from `remote`, or outbound) finished its handshake with `peer`:
    /// admitted and counted, or refused. Its pending slot is released either way.
    pub fn established(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        remote: Option<&Multiaddr>,
    ) -> Result<(), Refusal> {
        // Counted per IP while pending; the count moves over to established if admitted.
        let held = self.pending.remove(&id).flatten();
        let held_ip = held.is_some();
        let ip = held.or_else(|| remote.and_then(IpKey::of_addr));
        let release = |s: &mut Self| {
            if let Some(k) = held {
                drop_one(&mut s.per_ip, &k);
            }
        };
        let refusal = if self.established.len() >= self.limits.max_established as usize {
            Some(Refusal::Total)
        } else if self.per_peer.get(&peer).copied().unwrap_or(0) >= self.limits.max_per_peer {
            Some(Refusal::PerPeer)
        } else {
            // This connection's own pending count is not held against it.
            let others = ip.map_or(0, |k| {
                self.per_ip.get(&k).copied().unwrap_or(0) - u32::from(held_ip)
            });
            (ip.is_some() && others >= self.limits.max_per_ip).then_some(Refusal::PerIp)
        };
        if let Some(r) = refusal {
            release(self);
            return Err(r);
        }
        if !held_ip && let Some(k) = ip {
            bump(&mut self.per_ip, k);
        }
        *self.per_peer.entry(peer).or_default() += 1;
        self.established.insert(id, (peer, ip));
        Ok(())
    }

    /// A connection closed.
    pub fn closed(&mut self, id: ConnectionId) {
        if let Some((peer, ip)) = self.established.remove(&id) {
            drop_one(&mut self.per_peer, &peer);
            if let Some(k) = ip {
                drop_one(&mut self.per_ip, &k);
            }
        }
    }

    /// Open and pending inbound connections counted against `key`.
    pub fn from_ip(&self, key: IpKey) -> u32 {
        self.per_ip.get(&key).copied().unwrap_or(0)
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.established.len()
    }
}

/// The admission behaviour: [`Counts`] and the [`Gate`] wired into the swarm, refusals
/// counted in metrics.
#[derive(Debug)]
pub struct Behaviour {
    counts: Counts,
    gate: Gate,
    metrics: Arc<Metrics>,
}

impl Behaviour {
    /// Admission with these limits and this gate.
    pub fn new(limits: Limits, gate: Gate, metrics: Arc<Metrics>) -> Self {
        Self {
            counts: Counts::new(limits),
            gate,
            metrics,
        }
    }

    /// The per-address allowances and bans.
    pub fn gate(&mut self) -> &mut Gate {
        &mut self.gate
    }

    /// Open and pending inbound connections from `key`.
    pub fn connections_from(&self, key: IpKey) -> u32 {
        self.counts.from_ip(key)
    }

    fn deny(&self, r: Refusal) -> ConnectionDenied {
        self.metrics.refused(r);
        ConnectionDenied::new(r)
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.gate
            .admit_connection(IpKey::of_addr(remote_addr), Instant::now())
            .map_err(|r| self.deny(r))?;
        self.counts
            .pending_inbound(connection_id, remote_addr)
            .map_err(|r| self.deny(r))
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        _local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Its pending slot is released by the `ListenFailure` that follows a refusal.
        self.gate
            .admit_peer(&peer, Instant::now())
            .map_err(|r| self.deny(r))?;
        self.counts
            .established(connection_id, peer, Some(remote_addr))
            .map_err(|r| self.deny(r))?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        _addr: &Multiaddr,
        _role_override: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Outbound connections are the relay's own: counted in all and per peer, not per IP.
        self.counts
            .established(connection_id, peer, None)
            .map_err(|r| self.deny(r))?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm<'_>) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. }) => {
                self.counts.closed(connection_id)
            }
            FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                // The handshake failed, or a behaviour after this one refused the
                // connection after this one admitted it: no `ConnectionClosed` follows.
                self.counts.pending_failed(connection_id);
                self.counts.closed(connection_id);
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_per_ip: u32) -> Limits {
        Limits {
            max_pending_incoming: 100,
            max_established: 100,
            max_per_peer: 4,
            max_per_ip,
        }
    }

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    /// Runs a whole inbound handshake from `remote` with a fresh PeerId.
    fn connect(c: &mut Counts, id: usize, remote: &Multiaddr) -> Result<(), Refusal> {
        let id = ConnectionId::new_unchecked(id);
        c.pending_inbound(id, remote)?;
        c.established(id, PeerId::random(), Some(remote))
    }

    #[test]
    fn keys_ipv4_ipv6_prefix_mapped_and_circuits() {
        let a = IpKey::of_addr(&addr("/ip4/192.0.2.7/tcp/4001")).unwrap();
        assert_eq!(a, IpKey::V4(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(
            IpKey::of_addr(&addr("/ip4/192.0.2.7/udp/9/quic-v1")),
            Some(a)
        );
        let v6a = IpKey::of_addr(&addr("/ip6/2001:db8:1:2::1/tcp/1")).unwrap();
        let v6b = IpKey::of_addr(&addr("/ip6/2001:db8:1:2:ffff:1:2:3/tcp/1")).unwrap();
        let v6c = IpKey::of_addr(&addr("/ip6/2001:db8:1:3::1/tcp/1")).unwrap();
        assert_eq!(v6a, v6b, "one /64");
        assert_ne!(v6a, v6c, "another /64");
        assert_eq!(
            IpKey::of_addr(&addr("/ip6/::ffff:192.0.2.7/tcp/1")),
            Some(a),
            "an IPv4-mapped address is its IPv4 address"
        );
        let relay = PeerId::random();
        let circuit = addr(&format!(
            "/ip4/192.0.2.7/tcp/4001/p2p/{relay}/p2p-circuit/p2p/{}",
            PeerId::random()
        ));
        assert_eq!(IpKey::of_addr(&circuit), None, "circuits carry no IP");
        assert_eq!(IpKey::of_addr(&addr("/dns4/example.org/tcp/1")), None);
    }

    #[test]
    fn ipv4_counts_per_address_and_refuses_over_the_limit() {
        let mut c = Counts::new(limits(3));
        let home = addr("/ip4/198.51.100.1/tcp/5000");
        for i in 0..3 {
            connect(&mut c, i, &home).unwrap();
        }
        assert_eq!(connect(&mut c, 3, &home), Err(Refusal::PerIp));
        assert_eq!(c.from_ip(IpKey::of_addr(&home).unwrap()), 3);
        // Another address is unaffected; so are circuits (no IP).
        connect(&mut c, 4, &addr("/ip4/198.51.100.2/tcp/5000")).unwrap();
        let circuit = addr(&format!(
            "/ip4/198.51.100.1/tcp/1/p2p/{}/p2p-circuit",
            PeerId::random()
        ));
        for i in 5..10 {
            connect(&mut c, i, &circuit).unwrap();
        }
        assert_eq!(c.open(), 9);
    }

    #[test]
    fn ipv6_counts_per_slash_64() {
        let mut c = Counts::new(limits(2));
        connect(&mut c, 0, &addr("/ip6/2001:db8:a:b::1/tcp/1")).unwrap();
        connect(&mut c, 1, &addr("/ip6/2001:db8:a:b::2/udp/1/quic-v1")).unwrap();
        assert_eq!(
            connect(&mut c, 2, &addr("/ip6/2001:db8:a:b:1234::9/tcp/1")),
            Err(Refusal::PerIp),
            "any address in the same /64"
        );
        connect(&mut c, 3, &addr("/ip6/2001:db8:a:c::1/tcp/1")).unwrap();
    }

    #[test]
    fn closing_and_failing_release_slots() {
        let mut c = Counts::new(limits(2));
        let home = addr("/ip4/203.0.113.9/tcp/1");
        let key = IpKey::of_addr(&home).unwrap();
        connect(&mut c, 0, &home).unwrap();
        connect(&mut c, 1, &home).unwrap();
        assert_eq!(connect(&mut c, 2, &home), Err(Refusal::PerIp));
        c.closed(ConnectionId::new_unchecked(0));
        assert_eq!(c.from_ip(key), 1);
        connect(&mut c, 3, &home).unwrap();
        // A handshake that fails gives its pending slot back.
        c.closed(ConnectionId::new_unchecked(1));
        let id = ConnectionId::new_unchecked(4);
        c.pending_inbound(id, &home).unwrap();
        assert_eq!(c.from_ip(key), 2, "pending handshakes count");
        c.pending_failed(id);
        assert_eq!(c.from_ip(key), 1);
        // A connection refused at the end of its handshake (by the per-peer limit) too.
        let peer = PeerId::random();
        let mut c = Counts::new(Limits {
            max_per_peer: 1,
            ..limits(10)
        });
        for i in 0..2 {
            let id = ConnectionId::new_unchecked(i);
            c.pending_inbound(id, &home).unwrap();
            let r = c.established(id, peer, Some(&home));
            assert_eq!(r.is_ok(), i == 0);
        }
        assert_eq!(c.from_ip(key), 1);
        c.closed(ConnectionId::new_unchecked(0));
        c.closed(ConnectionId::new_unchecked(1));
        assert_eq!(c.from_ip(key), 0);
        assert_eq!(c.open(), 0);
        assert!(c.per_ip.is_empty() && c.per_peer.is_empty() && c.pending.is_empty());
    }

    #[test]
    fn total_and_pending_limits() {
        let mut c = Counts::new(Limits {
            max_pending_incoming: 1,
            max_established: 2,
            max_per_peer: 4,
            max_per_ip: 10,
        });
        let a = addr("/ip4/192.0.2.1/tcp/1");
        c.pending_inbound(ConnectionId::new_unchecked(0), &a)
            .unwrap();
        assert_eq!(
            c.pending_inbound(ConnectionId::new_unchecked(1), &a),
            Err(Refusal::Pending)
        );
        c.established(ConnectionId::new_unchecked(0), PeerId::random(), Some(&a))
            .unwrap();
        connect(&mut c, 2, &a).unwrap();
        assert_eq!(connect(&mut c, 3, &a), Err(Refusal::Total));
    }
}
