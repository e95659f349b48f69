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
use crate::consts::{DIRECT_REDIAL_HEARTBEATS, DIRECT_REDIAL_MAX_DOUBLINGS};
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

    /// A device's presence: the best any relay that told of it says.
    fn device_presence(&self, peer: &PeerId) -> Option<&presence::Entry> {
        best_entry(self.relays.presence.get(peer)?.values())
    }

    /// A device's presence as shown: what its best relay says, and online while this node
    /// has a connection to it, which proves it is up whatever a relay that lost sight of it
    /// (or went down) says; an away a relay told stays away.
    fn shown_presence(&self, peer: &PeerId) -> Option<presence::Entry> {
        let told = self.device_presence(peer);
        if !self.relays.peers_up.contains(peer) {
            return told.cloned();
        }
        match told {
            Some(e) if is_up(e.state) => Some(e.clone()),
            _ => Some(presence::Entry {
                peer: *peer,
                state: State::Online,
                last_seen_ms: None,
            }),
        }
    }

    pub(super) fn presence_of(&self, id: &UserId) -> PresenceInfo {
        let c = &self.people.contacts[id];
        let shown: Vec<presence::Entry> = c
            .devices()
            .iter()
            .filter_map(|(d, _)| device_peer(d).and_then(|p| self.shown_presence(&p)))
            .collect();
        let best = best_entry(&shown);
        PresenceInfo {
            user_id: *id,
            name: c.contact.display_name.clone(),
            state: state_name(best.map_or(State::Unknown, |e| e.state)).into(),
            last_seen: best.and_then(|e| e.last_seen_ms),
        }
    }

    /// Presence changes `relay` told of. A contact's device that comes online (or away)
    /// drains its mailboxes, so what waits for it goes at once (see
    /// [`Self::deliver_now_to`]).
    pub(crate) fn on_presence(&mut self, relay: PeerId, entries: Vec<presence::Entry>) {
        let mut changed = HashSet::new();
        let mut came_up = Vec::new();
        for e in entries {
            if let Some(user) = self.people.device_owner.get(&e.peer).copied() {
                changed.insert(user);
                if is_up(e.state) {
                    let was_up = self
                        .device_presence(&e.peer)
                        .is_some_and(|p| is_up(p.state));
                    self.maybe_dial(e.peer, &user, Some(relay), 0);
                    self.relays.redials.remove(&e.peer);
                    if !was_up {
                        came_up.push(e.peer.to_string());
                    }
                }
            }
            self.keep_presence(relay, e);
        }
        self.deliver_now_to(&came_up);
        self.emit_presence(changed);
    }

    /// Keeps what `relay` said of a device, if it is a contact's (a relay cannot make the
    /// node keep entries for devices it never asked about).
    fn keep_presence(&mut self, relay: PeerId, e: presence::Entry) {
        if self.people.device_owner.contains_key(&e.peer) {
            self.relays
                .presence
                .entry(e.peer)
                .or_default()
                .insert(relay, e);
        }
    }

    /// `relay` went down: its word that a device is online or away no longer counts (it
    /// cannot tell when the device leaves), so a device it alone saw online is not shown
    /// online for good; when it was last seen still holds.
    pub(super) fn forget_presence_at(&mut self, relay: PeerId) {
        let mut changed = HashSet::new();
        self.relays.presence.retain(|peer, by_relay| {
            let here = by_relay.get(&relay).is_some_and(|e| is_up(e.state));
            if here {
                by_relay.remove(&relay);
                if let Some(user) = self.people.device_owner.get(peer) {
                    changed.insert(*user);
                }
            }
            !by_relay.is_empty()
        });
        self.emit_presence(changed);
    }

    /// Changes the set of peers this node has a connection to with `change`, and tells of
    /// the contacts whose shown presence that changed.
    pub(super) fn peers_up(&mut self, change: impl FnOnce(&mut HashSet<PeerId>)) {
        let before = self.relays.peers_up.clone();
        change(&mut self.relays.peers_up);
        let changed: HashSet<UserId> = before
            .symmetric_difference(&self.relays.peers_up)
            .filter_map(|p| self.people.device_owner.get(p).copied())
            .collect();
        self.emit_presence(changed);
    }

    /// Asks the network task which peers it has connections to (see [`Internal::PeersUp`]).
    pub(super) fn ask_peers_up(&self) {
        let net = self.net.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let peers = net.peers().await.into_iter().map(|c| c.peer).collect();
            let _ = tx.send(Internal::PeersUp(peers)).await;
        });
    }

    pub(super) fn emit_presence(&self, users: HashSet<UserId>) {
        for user in users {
            if self.people.contacts.contains_key(&user) {
                let presence = self.presence_of(&user);
                self.emit(Event::Presence { presence });
            }
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
        if !self.net.dial_via(peer, relay) {
            tracing::debug!(%peer, "the network is busy; the dial waits for the next redial");
        }
    }

    /// Dials again the contact devices presence says are online: a dial that failed (the
    /// device's circuit reservation was not up yet, its relay was down, a hole punch failed
    /// and the relay ended the circuit) is not left for the next presence change. The first
    /// redial comes [`DIRECT_REDIAL_HEARTBEATS`] heartbeats after presence or a connection
    /// told of the device, each next one twice as long after (up to
    /// [`DIRECT_REDIAL_MAX_DOUBLINGS`] doublings), each through the next of the contact's
    /// relays; a device connected directly is passed over by the network task.
    pub(super) fn redial_online(&mut self) {
        let beat = self.relays.heartbeats;
        let online: HashMap<PeerId, UserId> = self
            .relays
            .presence
            .keys()
            .filter(|peer| self.device_presence(peer).is_some_and(|e| is_up(e.state)))
            .filter_map(|peer| Some((*peer, *self.people.device_owner.get(peer)?)))
            .collect();
        self.relays
            .redials
            .retain(|peer, _| online.contains_key(peer));
        for (peer, user) in online {
            let (dials, next) = self
                .relays
                .redials
                .entry(peer)
                .or_insert((0, beat + DIRECT_REDIAL_HEARTBEATS));
            if beat < *next {
                continue;
            }
            *dials += 1;
            *next = beat + (DIRECT_REDIAL_HEARTBEATS << (*dials).min(DIRECT_REDIAL_MAX_DOUBLINGS));
            let turn = *dials as usize;
            self.maybe_dial(peer, &user, None, turn);
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
                    Ok(entries) => (relay, entries),
                    Err(e) => {
                        tracing::debug!(%relay, "presence query failed: {e}");
                        (relay, Vec::new())
                    }
                }
            }
        });
        let work = futures::future::join_all(queries);
        self.off_task(reply, work, move |engine, answers, reply| {
            for (relay, entries) in answers {
                for e in entries {
                    engine.keep_presence(relay, e);
                }
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

/// The most present of `entries`: the best state, then the latest seen.
fn best_entry<'a>(
    entries: impl IntoIterator<Item = &'a presence::Entry>,
) -> Option<&'a presence::Entry> {
    entries.into_iter().max_by(|a, b| {
        (state_rank(a.state), a.last_seen_ms).cmp(&(state_rank(b.state), b.last_seen_ms))
    })
}

/// Whether a device in state `s` is up: online, or away (connected, its user idle).
fn is_up(s: State) -> bool {
    matches!(s, State::Online | State::Away)
}

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
