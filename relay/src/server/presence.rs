//! Presence state: who is connected and heartbeating, who may see whom, and who
//! subscribed to whom. Pure logic; the event loop feeds it events and times.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use libp2p::PeerId;

use crate::wire::presence::{Entry, State, Status};

/// A connected device.
#[derive(Debug, Clone, Copy)]
struct Live {
    /// Open connections; the device is gone when this reaches zero.
    connections: usize,
    /// What it last said.
    status: Status,
    /// Last heartbeat (or connection), for the TTL.
    heartbeat: Instant,
    /// The same, as wall-clock ms, for last-seen.
    heartbeat_ms: u64,
    /// Silent for longer than the TTL: reported offline until it speaks again.
    silent: bool,
}

/// The presence table.
#[derive(Debug)]
pub struct Presence {
    ttl: Duration,
    live: HashMap<PeerId, Live>,
    last_seen: HashMap<PeerId, u64>,
    /// Owner → viewers allowed to see it.
    allow: HashMap<PeerId, HashSet<PeerId>>,
    /// Target → subscribers.
    subscribers: HashMap<PeerId, HashSet<PeerId>>,
    /// Subscriber → targets (to undo a subscription).
    subscriptions: HashMap<PeerId, Vec<PeerId>>,
    /// Targets whose state changed since the last flush.
    dirty: HashSet<PeerId>,
}

impl Presence {
    /// An empty table with a heartbeat TTL.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            live: HashMap::new(),
            last_seen: HashMap::new(),
            allow: HashMap::new(),
            subscribers: HashMap::new(),
            subscriptions: HashMap::new(),
            dirty: HashSet::new(),
        }
    }

    /// Restores persisted state.
    pub fn load(&mut self, last_seen: Vec<(PeerId, u64)>, allow: Vec<(PeerId, Vec<PeerId>)>) {
        self.last_seen.extend(last_seen);
        for (o, vs) in allow {
            self.allow.insert(o, vs.into_iter().collect());
        }
    }

    /// A connection to `peer` opened.
    pub fn connected(&mut self, peer: PeerId, now: Instant, now_ms: u64) {
        let e = self.live.entry(peer).or_insert(Live {
            connections: 0,
            status: Status::Online,
            heartbeat: now,
            heartbeat_ms: now_ms,
            silent: false,
        });
        e.connections += 1;
        if e.connections == 1 || e.silent {
            e.status = Status::Online;
            e.heartbeat = now;
            e.heartbeat_ms = now_ms;
            e.silent = false;
            self.dirty.insert(peer);
        }
    }

    /// A connection to `peer` closed. Returns the last-seen time to persist when it was
    /// the device's last connection.
    pub fn disconnected(&mut self, peer: PeerId, now_ms: u64) -> Option<u64> {
        let e = self.live.get_mut(&peer)?;
        e.connections = e.connections.saturating_sub(1);
        if e.connections > 0 {
            return None;
        }
        let seen = if e.silent { e.heartbeat_ms } else { now_ms };
        self.live.remove(&peer);
        self.unsubscribe(peer);
        self.dirty.insert(peer);
        // Last seen matters only to peers allowed to see it; keeping it for everyone else
        // would let fresh peer ids grow this table without bound.
        if !self.allow.contains_key(&peer) {
            return None;
        }
        self.last_seen.insert(peer, seen);
        Some(seen)
    }

    /// `peer` sent a heartbeat. Ignored for a peer with no connection.
    pub fn heartbeat(&mut self, peer: PeerId, status: Status, now: Instant, now_ms: u64) {
        if let Some(e) = self.live.get_mut(&peer) {
            if e.silent || e.status != status {
                self.dirty.insert(peer);
            }
            e.status = status;
            e.heartbeat = now;
            e.heartbeat_ms = now_ms;
            e.silent = false;
        }
    }

    /// `peer` made some request: refreshes its heartbeat without changing its status.
    pub fn touch(&mut self, peer: PeerId, now: Instant, now_ms: u64) {
        if let Some(e) = self.live.get(&peer) {
            let status = e.status;
            self.heartbeat(peer, status, now, now_ms);
        }
    }

    /// Marks devices silent past the TTL offline. Returns their last-seen times to persist.
    pub fn sweep(&mut self, now: Instant) -> Vec<(PeerId, u64)> {
        let mut out = Vec::new();
        for (p, e) in self.live.iter_mut() {
            if !e.silent && now.saturating_duration_since(e.heartbeat) > self.ttl {
                e.silent = true;
                self.dirty.insert(*p);
                if self.allow.contains_key(p) {
                    self.last_seen.insert(*p, e.heartbeat_ms);
                    out.push((*p, e.heartbeat_ms));
                }
            }
        }
        out
    }

    /// Devices currently connected and not silent.
    pub fn online_peers(&self) -> Vec<PeerId> {
        self.live
            .iter()
            .filter(|(_, e)| !e.silent)
            .map(|(p, _)| *p)
            .collect()
    }

    /// Whether the device is connected and not silent.
    pub fn is_online(&self, peer: &PeerId) -> bool {
        self.live.get(peer).is_some_and(|e| !e.silent)
    }

    fn entry(&self, peer: PeerId) -> Entry {
        match self.live.get(&peer) {
            Some(e) if !e.silent => Entry {
                peer,
                state: match e.status {
                    Status::Online => State::Online,
                    Status::Away => State::Away,
                },
                last_seen_ms: None,
            },
            _ => match self.last_seen.get(&peer) {
                Some(ms) => Entry {
                    peer,
                    state: State::Offline,
                    last_seen_ms: Some(*ms),
                },
                None => Entry {
                    peer,
                    state: State::Unknown,
                    last_seen_ms: None,
                },
            },
        }
    }

    /// Whether `owner` allowed `viewer` (its contacts' devices; also who may deposit to it
    /// without a grant, see `grants.rs`).
    pub fn allows(&self, owner: &PeerId, viewer: &PeerId) -> bool {
        self.allow.get(owner).is_some_and(|v| v.contains(viewer))
    }

    fn visible(&self, owner: &PeerId, viewer: &PeerId) -> bool {
        owner == viewer || self.allow.get(owner).is_some_and(|v| v.contains(viewer))
    }

    /// The presence of `peers` as `viewer` may see it: a peer that has not allowed the
    /// viewer is `Unknown`, exactly like a peer never seen.
    pub fn query(&self, viewer: &PeerId, peers: &[PeerId]) -> Vec<Entry> {
        peers
            .iter()
            .map(|p| {
                if self.visible(p, viewer) {
                    self.entry(*p)
                } else {
                    Entry {
                        peer: *p,
                        state: State::Unknown,
                        last_seen_ms: None,
                    }
                }
            })
            .collect()
    }

    /// Replaces `owner`'s allow-list.
    pub fn set_allow(&mut self, owner: PeerId, viewers: &[PeerId]) {
        if viewers.is_empty() {
            self.allow.remove(&owner);
        } else {
            self.allow.insert(owner, viewers.iter().copied().collect());
        }
        // Newly allowed subscribers should learn the current state.
        self.dirty.insert(owner);
    }

    fn unsubscribe(&mut self, subscriber: PeerId) {
        for t in self.subscriptions.remove(&subscriber).unwrap_or_default() {
            if let Some(s) = self.subscribers.get_mut(&t) {
                s.remove(&subscriber);
                if s.is_empty() {
                    self.subscribers.remove(&t);
                }
            }
        }
    }

    /// Replaces `subscriber`'s subscription (only while it is connected) and returns the
    /// current state of the targets as it may see them.
    pub fn subscribe(&mut self, subscriber: PeerId, targets: &[PeerId]) -> Vec<Entry> {
        self.unsubscribe(subscriber);
        if self.live.contains_key(&subscriber) {
            for t in targets {
                self.subscribers.entry(*t).or_default().insert(subscriber);
            }
            self.subscriptions.insert(subscriber, targets.to_vec());
        }
        self.query(&subscriber, targets)
    }

    /// Takes the changes since the last call, grouped per subscriber allowed to see them.
    pub fn flush(&mut self) -> Vec<(PeerId, Vec<Entry>)> {
        let mut out: HashMap<PeerId, Vec<Entry>> = HashMap::new();
        for t in std::mem::take(&mut self.dirty) {
            let Some(subs) = self.subscribers.get(&t) else {
                continue;
            };
            let entry = self.entry(t);
            for s in subs {
                if self.visible(&t, s) {
                    out.entry(*s).or_default().push(entry.clone());
                }
            }
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn visibility_ttl_and_coalescing() {
        let t0 = Instant::now();
        let mut p = Presence::new(Duration::from_secs(30));
        let (alice, bob, eve) = (PeerId::random(), PeerId::random(), PeerId::random());
        p.connected(bob, t0, 1_000);
        p.connected(eve, t0, 1_000);
        p.connected(alice, t0, 1_000);
        p.set_allow(alice, &[bob]);
        assert_eq!(p.query(&bob, &[alice])[0].state, State::Online);
        assert_eq!(p.query(&eve, &[alice])[0].state, State::Unknown);
        assert_eq!(p.subscribe(bob, &[alice])[0].state, State::Online);
        assert_eq!(p.subscribe(eve, &[alice])[0].state, State::Unknown);
        p.flush();
        // Several changes within one window give one update with the latest state.
        p.heartbeat(alice, Status::Away, t0, 1_000);
        p.heartbeat(alice, Status::Online, t0, 1_000);
        p.heartbeat(alice, Status::Away, t0 + Duration::from_secs(1), 2_000);
        let f = p.flush();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].0, bob);
        assert_eq!(
            f[0].1,
            vec![Entry {
                peer: alice,
                state: State::Away,
                last_seen_ms: None
            }]
        );
        // Silence past the TTL makes alice offline with her last heartbeat as last seen.
        assert!(p.sweep(t0 + Duration::from_secs(20)).is_empty());
        p.heartbeat(bob, Status::Online, t0 + Duration::from_secs(20), 21_000);
        p.touch(eve, t0 + Duration::from_secs(20), 21_000);
        assert_eq!(p.sweep(t0 + Duration::from_secs(32)), vec![(alice, 2_000)]);
        let f = p.flush();
        assert_eq!(f[0].1[0].state, State::Offline);
        assert_eq!(f[0].1[0].last_seen_ms, Some(2_000));
        // A heartbeat brings her back.
        p.heartbeat(alice, Status::Online, t0 + Duration::from_secs(40), 41_000);
        assert!(p.is_online(&alice));
        assert_eq!(p.disconnected(alice, 50_000), Some(50_000));
        assert_eq!(p.query(&bob, &[alice])[0].last_seen_ms, Some(50_000));
        assert!(!p.is_online(&alice));
    }
}
