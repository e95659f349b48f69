//! Presence and who may reach this device: the allow-list of contacts' devices given to the
//! home relays, presence subscriptions and what they tell, and dialling contacts who come
//! online.

use std::collections::{HashMap, HashSet};

use futures::stream::{FuturesUnordered, StreamExt};

use tern_relay::rpc::Requests as _;

use libp2p::PeerId;
use tern_crypto::UserId;
use tern_relay::wire::presence::{self, State};

use super::{Engine, Internal, command::Reply, device_peer, relay_peer};
use crate::consts::DIRECT_REDIAL_HEARTBEATS;
use crate::types::*;

impl Engine {
    /// Every active device of every contact: who may see this device's presence and deposit
    /// to it without a grant. Group members who are not contacts are not in it.
    pub(super) fn allow_list(&self) -> Vec<PeerId> {
        self.people
            .contacts
            .values()
            .flat_map(|c| c.devices())
            .filter_map(|(d, _)| device_peer(&d))
            .collect()
    }

    /// [`Engine::push_allow_list`], in a task per home relay; the future returned waits
    /// until one of them took it (a new contact may then deposit there, and deposits at
    /// every relay), or until each took it, failed or gave up after [`ALLOW_LIST_WAIT`]. A
    /// hung relay holds up the answer only when no other relay takes the list.
    pub(crate) fn push_allow_list_now(
        &self,
    ) -> impl std::future::Future<Output = ()> + Send + use<> {
        let peers = self.allow_list();
        let mut sets: FuturesUnordered<_> = self
            .up_home_relays()
            .into_iter()
            .map(|relay| tokio::spawn(self.set_allow_list_at(relay, peers.clone())))
            .collect();
        async move {
            while let Some(done) = sets.next().await {
                if matches!(done, Ok(true)) {
                    // The others go on in their tasks.
                    return;
                }
            }
        }
    }

    /// Tells the home relays which devices may see this device's presence and deposit to
    /// it without a grant: every active device of every contact.
    pub(crate) fn push_allow_list(&self) {
        let peers = self.allow_list();
        for relay in self.up_home_relays() {
            tokio::spawn(self.set_allow_list_at(relay, peers.clone()));
        }
    }

    /// Gives the allow-list again to the home relays that failed to take it and are due
    /// ([`ALLOW_LIST_RETRY`] after the failure) and connected; one that is down gets it when
    /// it is next set up.
    pub(crate) fn retry_allow_lists(&mut self) {
        let now = self.clock.now();
        let due: Vec<PeerId> = self
            .relays
            .allow_list_retry
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(r, _)| *r)
            .collect();
        if due.is_empty() {
            return;
        }
        let up = self.up_home_relays();
        let peers = self.allow_list();
        for relay in due {
            self.relays.allow_list_retry.remove(&relay);
            if up.contains(&relay) {
                tokio::spawn(self.set_allow_list_at(relay, peers.clone()));
            }
        }
    }

    /// A home relay failed to take the allow-list: it is given it again after
    /// [`ALLOW_LIST_RETRY`].
    pub(crate) fn on_allow_list_failed(&mut self, relay: PeerId) {
        let at = self.clock.now() + ALLOW_LIST_RETRY;
        self.relays.allow_list_retry.insert(relay, at);
    }

    /// The connected home relays.
    fn up_home_relays(&self) -> Vec<PeerId> {
        self.relays
            .home_relays
            .iter()
            .filter_map(relay_peer)
            .filter(|r| self.relays.relay_up.contains(r))
            .collect()
    }

    /// Sets `peers` as the allow-list at `relay` (at most [`ALLOW_LIST_WAIT`]), in the
    /// future returned; a failure is reported to the engine
    /// ([`Engine::on_allow_list_failed`]). Yields whether the relay took it.
    fn set_allow_list_at(
        &self,
        relay: PeerId,
        peers: Vec<PeerId>,
    ) -> impl std::future::Future<Output = bool> + Send + use<> {
        let (net, tx) = (self.net.clone(), self.internal.clone());
        async move {
            let why =
                match tokio::time::timeout(ALLOW_LIST_WAIT, net.at(relay).set_allow_list(peers))
                    .await
                {
                    Ok(Ok(())) => return true,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "timed out".to_owned(),
                };
            tracing::debug!(%relay, "setting the allow-list failed ({why}); retried later");
            let _ = tx.send(Internal::AllowListFailed(relay)).await;
            false
        }
    }

    pub(super) fn devices_at(&self, relay: PeerId) -> Vec<PeerId> {
        let mut peers = HashSet::new();
        for c in self.people.contacts.values() {
            if c.relay_peers().contains(&relay) {
                for (d, _) in c.devices() {
                    if let Some(p) = device_peer(&d) {
                        peers.insert(p);
                    }
                }
            }
        }
        peers.into_iter().collect()
    }

    /// Subscribes at `relay` to the presence of the contact devices homed there.
    pub(crate) fn subscribe_presence(&self, relay: PeerId) {
        let peers = self.devices_at(relay);
        if peers.is_empty() {
            return;
        }
        let net = self.net.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            match net.at(relay).subscribe(peers).await {
                Ok(entries) => {
                    let _ = tx.send(Internal::Presence { relay, entries }).await;
                }
                Err(e) => tracing::debug!(%relay, "presence subscription failed: {e}"),
            }
        });
    }

    pub(super) fn presence_of(&self, id: &UserId) -> PresenceInfo {
        let c = &self.people.contacts[id];
        let mut best: Option<&presence::Entry> = None;
        for (d, _) in c.devices() {
            if let Some(e) = device_peer(&d).and_then(|p| self.relays.presence.get(&p)) {
                let better = match best {
                    None => true,
                    Some(b) => {
                        state_rank(e.state) > state_rank(b.state)
                            || (e.state == b.state && e.last_seen_ms > b.last_seen_ms)
                    }
                };
                if better {
                    best = Some(e);
                }
            }
        }
        PresenceInfo {
            user_id: *id,
            name: c.contact.display_name.clone(),
            state: state_name(best.map_or(State::Unknown, |e| e.state)).into(),
            last_seen: best.and_then(|e| e.last_seen_ms),
        }
    }

    /// Presence changes `relay` told of.
    pub(crate) fn on_presence(&mut self, relay: PeerId, entries: Vec<presence::Entry>) {
        let mut changed = HashSet::new();
        for e in entries {
            if let Some(user) = self.people.device_owner.get(&e.peer) {
                changed.insert(*user);
                if matches!(e.state, State::Online | State::Away) {
                    self.maybe_dial(e.peer, user, Some(relay), 0);
                }
            }
            self.relays.presence.insert(e.peer, e);
        }
        for user in changed {
            let presence = self.presence_of(&user);
            self.emit(Event::Presence { presence });
        }
    }

    /// Dials an online contact device through a relay circuit, so messages can go direct
    /// (DCUtR and the device's own addresses upgrade the circuit where NAT allows): through
    /// `via` if it is one of the contact's relays (the one that said the device is online),
    /// else through the contact's relay `turn` picks. The network task does nothing for a
    /// device connected directly, and for one reached only through a circuit it dials the
    /// device's own addresses again (at most once a minute).
    pub(super) fn maybe_dial(&self, peer: PeerId, user: &UserId, via: Option<PeerId>, turn: usize) {
        if !self.relays.direct {
            return;
        }
        let Some(c) = self.people.contacts.get(user) else {
            return;
        };
        let relay = via
            .and_then(|v| c.relays.iter().find(|a| relay_peer(a) == Some(v)))
            .or_else(|| c.relays.get(turn % c.relays.len().max(1)))
            .cloned();
        let Some(relay) = relay else {
            return;
        };
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.dial_via(peer, relay).await;
        });
    }

    /// Every [`DIRECT_REDIAL_HEARTBEATS`] heartbeats, dials again the contact devices
    /// presence says are online: a dial that failed (the device's circuit reservation was
    /// not up yet, its relay was down) is not left for the next presence change, and each
    /// try goes through the next of the contact's relays.
    pub(super) fn redial_online(&self) {
        let beat = self.relays.heartbeats;
        if !beat.is_multiple_of(DIRECT_REDIAL_HEARTBEATS) {
            return;
        }
        let turn = (beat / DIRECT_REDIAL_HEARTBEATS) as usize;
        for (peer, e) in &self.relays.presence {
            if matches!(e.state, State::Online | State::Away)
                && let Some(user) = self.people.device_owner.get(peer)
            {
                self.maybe_dial(*peer, user, None, turn);
            }
        }
    }

    /// Answers a presence query: the contacts' relays are asked in a task, and the answer
    /// is given from what they said once they all have (a relay that fails is passed over).
    pub(crate) fn query_presence(
        &mut self,
        contact: Option<&str>,
        reply: Reply<Vec<PresenceInfo>>,
    ) {
        let ids: Vec<UserId> = match contact {
            Some(c) => match self.resolve(c) {
                Ok(id) => vec![id],
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            },
            None => {
                let mut ids: Vec<UserId> = self.people.contacts.keys().copied().collect();
                ids.sort();
                ids
            }
        };
        let mut by_relay: HashMap<PeerId, Vec<PeerId>> = HashMap::new();
        for id in &ids {
            let c = &self.people.contacts[id];
            for relay in c.relay_peers() {
                for (d, _) in c.devices() {
                    if let Some(p) = device_peer(&d) {
                        by_relay.entry(relay).or_default().push(p);
                    }
                }
            }
        }
        let net = self.net.clone();
        let queries = by_relay.into_iter().map(move |(relay, peers)| {
            let net = net.clone();
            async move {
                match net.at(relay).query(peers).await {
                    Ok(entries) => entries,
                    Err(e) => {
                        tracing::debug!(%relay, "presence query failed: {e}");
                        Vec::new()
                    }
                }
            }
        });
        let work = futures::future::join_all(queries);
        self.off_task(reply, work, move |engine, answers, reply| {
            for e in answers.into_iter().flatten() {
                engine.relays.presence.insert(e.peer, e);
            }
            let out = ids
                .iter()
                .filter(|id| engine.people.contacts.contains_key(id))
                .map(|id| engine.presence_of(id))
                .collect();
            let _ = reply.send(Ok(out));
        });
    }
}

/// Longest a home relay is given to take the allow-list (`contact add` waits at most this
/// for one of them to).
const ALLOW_LIST_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long after a home relay failed to take the allow-list it is given it again.
const ALLOW_LIST_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

fn state_rank(s: State) -> u8 {
    match s {
        State::Online => 3,
        State::Away => 2,
        State::Offline => 1,
        State::Unknown => 0,
    }
}

fn state_name(s: State) -> &'static str {
    match s {
        State::Online => "online",
        State::Away => "away",
        State::Offline => "offline",
        State::Unknown => "unknown",
    }
}
