//! The set of relays a user's mailboxes are at, changed at run time: this device's home
//! relays (`relay.add`, `relay.remove`, `relay.list`), and a contact's as its device list
//! messages name them.
//!
//! - **Own**: a home relay added is saved in `config.json`, connected, set up like one
//!   configured at start (device list, prekeys, allow-list, live delivery) and drained; one
//!   removed is no longer set up or named, but its mailbox is still drained for
//!   [`RELAY_DRAIN`] (kept in `config.json`), so mail a contact left there before learning
//!   the new set is taken, not lost. Either way the new set goes into the
//!   contact link, to this user's other devices and to every contact and group member (in
//!   the device list message, `Body::DeviceList`'s `relays`), so their rows for this device go
//!   to every relay of the new set.
//! - **A contact's**: a device list message naming relays replaces the contact's set (the
//!   message is end-to-end authenticated: it came over a pairwise session with one of the
//!   contact's devices). A relay that leaves the set is not waited for any more (rows every
//!   remaining relay took leave the outbox); one that joins gets every row still queued.

use libp2p::Multiaddr;
use tern_crypto::UserId;
use tern_relay::rpc::Requests as _;

use super::{Engine, command::Reply, relay_peer};
use crate::{
    consts::{MAX_DRAINING_RELAYS, MAX_LINK_RELAYS, RELAY_ADD_TIMEOUT, RELAY_DRAIN},
    error::NodeError,
    home::DrainingRelay,
    types::RelayInfo,
};

/// A `relay.*` command.
#[derive(Debug)]
pub(crate) enum RelayCommand {
    /// Add a home relay.
    Add {
        addr: String,
        reply: Reply<Vec<RelayInfo>>,
    },
    /// Remove a home relay (one must stay).
    Remove {
        addr: String,
        reply: Reply<Vec<RelayInfo>>,
    },
    /// The home relays and where each stands.
    List(Reply<Vec<RelayInfo>>),
}

fn too_many_relays() -> NodeError {
    NodeError::BadRequest(format!("at most {MAX_LINK_RELAYS} home relays"))
}

/// Whether a Tern relay answers at `addr` as the peer it names: dialled there on a
/// connection of its own (so a connection to the same relay at its old address, `moved_from`,
/// proves nothing; the handshake proves the peer id), then asked a mailbox request. At most
/// [`RELAY_ADD_TIMEOUT`].
async fn check_relay(
    net: crate::net::Client,
    addr: Multiaddr,
    moved_from: Option<Multiaddr>,
) -> Result<(), NodeError> {
    use crate::net::DialProblem;
    let Some(peer) = relay_peer(&addr) else {
        return Err(NodeError::BadRequest(
            "a relay address ends in /p2p/<peer id>".into(),
        ));
    };
    let stays = moved_from
        .as_ref()
        .map(|old| format!("; it stays at {old}"))
        .unwrap_or_default();
    // Nothing is registered before the check answers: the address is dialled as given, and
    // the network task's relays (a contact's at this peer id, say) keep theirs.
    let check = async {
        match net.probe(addr.clone()).await {
            Ok(()) => {}
            Err(DialProblem::OtherIdentity(other)) => {
                return Err(format!("it answers there as {other}, not as {peer}"));
            }
            Err(DialProblem::Unreachable(why)) => return Err(why),
        }
        // The probe's handshake proved the identity at the address; now whether that peer
        // is a Tern relay. Any answer of the mailbox protocol will do, a refusal (a rate
        // limit) included. (It may go over another connection to the same peer.)
        match net.at(peer).usage().await {
            Ok(_) | Err(tern_relay::rpc::RequestError::Rejected(_)) => Ok(()),
            Err(e) => Err(format!("it does not answer as a Tern relay ({e})")),
        }
    };
    match tokio::time::timeout(RELAY_ADD_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(why)) => Err(NodeError::unreachable(format!(
            "relay {addr} cannot be used: {why}{stays}"
        ))),
        Err(_) => Err(NodeError::unreachable(format!(
            "relay {addr} did not answer within {} s{stays}",
            RELAY_ADD_TIMEOUT.as_secs()
        ))),
    }
}

/// A relay address as given: a multiaddr ending in `/p2p/<peer id>`.
pub(super) fn parse_relay(addr: &str) -> Result<Multiaddr, NodeError> {
    let parsed: Multiaddr = addr
        .trim()
        .parse()
        .map_err(|e| NodeError::BadRequest(format!("not a multiaddr: {e}")))?;
    if relay_peer(&parsed).is_none() {
        return Err(NodeError::BadRequest(
            "a relay address ends in /p2p/<peer id>".into(),
        ));
    }
    Ok(parsed)
}

impl Engine {
    /// Answers a `relay.*` command.
    pub(crate) fn on_relay_command(&mut self, cmd: RelayCommand) {
        match cmd {
            RelayCommand::List(reply) => {
                let _ = reply.send(Ok(self.home_relay_infos()));
            }
            RelayCommand::Add { addr, reply } => self.relay_add(&addr, reply),
            RelayCommand::Remove { addr, reply } => {
                let _ = reply.send(self.relay_remove(&addr));
            }
        }
    }

    /// Adds a home relay, or a home relay's new address, once something answered there as
    /// that relay (`check_relay`, off the engine, at most [`RELAY_ADD_TIMEOUT`]): an address
    /// that does not is neither saved nor told to contacts and own devices.
    fn relay_add(&mut self, addr: &str, reply: Reply<Vec<RelayInfo>>) {
        let checked = parse_relay(addr).and_then(|a| self.check_not_embedded().map(|()| a));
        let addr = match checked {
            Ok(a) => a,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let peer = relay_peer(&addr);
        let known = self
            .relays
            .home_relays
            .iter()
            .find(|a| relay_peer(a) == peer)
            .cloned();
        if known.as_ref() == Some(&addr) {
            let _ = reply.send(Ok(self.home_relay_infos()));
            return;
        }
        if known.is_none() && self.relays.home_relays.len() >= MAX_LINK_RELAYS {
            let _ = reply.send(Err(too_many_relays()));
            return;
        }
        let net = self.net.clone();
        let target = addr.clone();
        self.off_task(
            reply,
            check_relay(net, target, known),
            move |engine, checked, reply| {
                let _ = reply.send(checked.and_then(|()| engine.relay_added(addr)));
            },
        );
    }

    /// Saves a home relay checked by [`Engine::relay_add`] (or its new address), connects it,
    /// and tells contacts and own devices.
    pub(super) fn relay_added(&mut self, addr: Multiaddr) -> Result<Vec<RelayInfo>, NodeError> {
        let peer = relay_peer(&addr);
        if let Some(known) = self
            .relays
            .home_relays
            .iter_mut()
            .find(|a| relay_peer(a) == peer)
        {
            if *known == addr {
                return Ok(self.home_relay_infos());
            }
            // The same relay (the same peer id) at a new address: it moved. The address is
            // replaced, dialled from now on, and contacts and own devices are told.
            *known = addr.clone();
            self.save_home_relays()?;
            self.net.add_relay_soon(addr, true);
            self.own_relays_changed();
            return Ok(self.home_relay_infos());
        }
        if self.relays.home_relays.len() >= MAX_LINK_RELAYS {
            return Err(too_many_relays());
        }
        self.relays.home_relays.push(addr.clone());
        // A removed relay added again is a home relay, no longer only drained.
        self.relays.draining.retain(|(a, _)| relay_peer(a) != peer);
        self.save_home_relays()?;
        // Queued for the network task, not waited for: it connects on its own time and the
        // setup below starts once the relay is up.
        self.net.add_relay_soon(addr, true);
        if let Some(p) = peer {
            // Set up (device list, prekeys, allow-list, live delivery) once connected.
            self.relays.setup_pending.insert(p);
            self.relays.setup_soon = true;
        }
        self.own_relays_changed();
        Ok(self.home_relay_infos())
    }

    fn relay_remove(&mut self, addr: &str) -> Result<Vec<RelayInfo>, NodeError> {
        let peer = relay_peer(&parse_relay(addr)?);
        self.check_not_embedded()?;
        let Some(at) = self
            .relays
            .home_relays
            .iter()
            .position(|a| relay_peer(a) == peer)
        else {
            if self
                .relays
                .draining
                .iter()
                .any(|(a, _)| relay_peer(a) == peer)
            {
                return Err(NodeError::BadRequest(format!(
                    "{addr} was removed already (its mailbox is still drained)"
                )));
            }
            return Err(NodeError::BadRequest(format!("{addr} is not a home relay")));
        };
        if self.relays.home_relays.len() == 1 {
            return Err(NodeError::BadRequest(
                "the last home relay cannot be removed (add another first)".into(),
            ));
        }
        let removed = self.relays.home_relays.remove(at);
        let until = self
            .clock
            .now_ms()
            .saturating_add(i64::try_from(RELAY_DRAIN.as_millis()).unwrap_or(i64::MAX));
        self.start_drain(removed, until);
        self.save_home_relays()?;
        if let Some(p) = peer {
            self.relays.setup_pending.remove(&p);
            // Still connected and drained, but it no longer carries circuits to this node.
            self.net.stop_home_soon(p);
        }
        self.own_relays_changed();
        Ok(self.home_relay_infos())
    }

    /// The embedded relay (none saved: `tern up` started one on loopback) is not a home
    /// relay to keep: saving it beside others would make the next start skip it and name an
    /// address nothing serves. Real relays are set with `tern up --relay` first.
    fn check_not_embedded(&self) -> Result<(), NodeError> {
        if self.me.config.relays.is_empty() {
            return Err(NodeError::BadRequest(
                "this node runs on its embedded relay: start it with `tern up --relay ADDR` to \
                 use relays of its own, then add more"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Writes the home relays and the drained ones to `config.json` (read again first, so
    /// nothing else in it is overwritten with an older copy).
    fn save_home_relays(&mut self) -> Result<(), NodeError> {
        let mut config = self.me.home.config()?;
        config.relays = self.home_relay_addrs();
        config.draining_relays = self
            .relays
            .draining
            .iter()
            .map(|(a, until_ms)| DrainingRelay {
                addr: a.to_string(),
                until_ms: *until_ms,
            })
            .collect();
        self.me.home.save_config(&config)?;
        self.me.config.relays = config.relays;
        self.me.config.draining_relays = config.draining_relays;
        Ok(())
    }

    /// Keeps draining a removed home relay's mailbox until `until_ms`: it stays connected,
    /// is drained on every poll like a home relay, and is no longer set up or named.
    fn start_drain(&mut self, addr: Multiaddr, until_ms: i64) {
        let peer = relay_peer(&addr);
        self.relays.draining.retain(|(a, _)| relay_peer(a) != peer);
        if self.relays.draining.len() >= MAX_DRAINING_RELAYS
            && let Some(first) =
                (0..self.relays.draining.len()).min_by_key(|i| self.relays.draining[*i].1)
        {
            let (old, _) = self.relays.draining.remove(first);
            tracing::warn!(relay = %old, "more than {MAX_DRAINING_RELAYS} removed relays: the oldest is no longer drained");
            self.forget_relay_unless_used(relay_peer(&old));
        }
        self.relays.draining.push((addr, until_ms));
        if let Some(p) = peer
            && self.relays.relay_up.contains(&p)
        {
            self.fetch_mailbox(p);
        }
    }

    /// Stops draining removed relays whose time is over (at each heartbeat).
    pub(super) fn end_drains(&mut self) {
        let now = self.clock.now_ms();
        if self.relays.draining.iter().all(|(_, until)| *until > now) {
            return;
        }
        let (over, left): (Vec<_>, Vec<_>) = std::mem::take(&mut self.relays.draining)
            .into_iter()
            .partition(|(_, until)| *until <= now);
        self.relays.draining = left;
        for (addr, _) in &over {
            tracing::info!(relay = %addr, "a removed relay's drain is over");
            self.forget_relay_unless_used(relay_peer(addr));
        }
        if let Err(e) = self.save_home_relays() {
            tracing::warn!("saving the relays drained failed: {e}");
        }
    }

    /// The removed relays still drained, as `status` shows them.
    pub(super) fn draining_infos(&self) -> Vec<RelayInfo> {
        self.relays
            .draining
            .iter()
            .map(|(a, until_ms)| RelayInfo {
                addr: a.to_string(),
                connected: relay_peer(a).is_some_and(|p| self.relays.relay_up.contains(&p)),
                home: false,
                mailbox: None,
                waiting: 0,
                draining_until_ms: Some(*until_ms),
                problem: self.dial_problem(a, super::views::RelayRole::Removed),
                held: Vec::new(),
            })
            .collect()
    }

    /// This device's home relays changed: own devices' rows follow the new set, and every
    /// contact, group member and own device is told (with the device list).
    fn own_relays_changed(&mut self) {
        self.refresh_me();
        let me = self.me.user;
        self.settle_relay_set(&me);
        self.announce_list();
        self.fetch_home_mailboxes();
    }

    /// A device list message from `user`, sent at `sent_at_ms`, named its relays: they
    /// replace the set held (see the module documentation), unless a message sent later
    /// already gave one. Relays that are not relay addresses leave it unchanged.
    pub(crate) fn take_relays(&mut self, user: &UserId, relays: &[String], sent_at_ms: i64) {
        if relays.is_empty() || *user == self.me.user {
            return;
        }
        if self
            .people
            .relays_sent_at
            .get(user)
            .is_some_and(|&last| sent_at_ms < last)
        {
            tracing::debug!(contact = %user, "an older relay set arrived late; the newer one stays");
            return;
        }
        let parsed: Option<Vec<Multiaddr>> = relays.iter().map(|r| parse_relay(r).ok()).collect();
        let Some(parsed) = parsed else {
            tracing::warn!(contact = %user, "a device list named something that is not a relay");
            return;
        };
        let Some(state) = self.known(user) else {
            return;
        };
        let (same, mut contact) = (state.relays == parsed, state.contact.clone());
        self.people.relays_sent_at.insert(*user, sent_at_ms);
        if same {
            return;
        }
        contact.relays = relays.to_vec();
        if self.people.contacts.contains_key(user) {
            let now = self.clock.now_ms();
            if let Err(e) = self.store.transaction(|tx| tx.save_contact(&contact, now)) {
                tracing::warn!(contact = %user, "saving a contact's relays failed: {e}");
                return;
            }
        }
        for state in [
            self.people.contacts.get_mut(user),
            self.people.peers.get_mut(user),
        ]
        .into_iter()
        .flatten()
        {
            state.relays = parsed.clone();
            state.contact.relays = relays.to_vec();
        }
        tracing::info!(contact = %user, relays = parsed.len(), "a contact's relays changed");
        for addr in parsed {
            self.net.add_relay_soon(addr, false);
        }
        self.settle_relay_set(user);
    }
}
