//! Group members who are not contacts: their device lists, fetched from their relays and
//! kept when the identity key the group vouches for signed them, so they can be addressed
//! and their messages read.

use std::collections::HashMap;

use tern_crypto::{SignedDeviceList, UserId};
use tern_store::Contact;

use crate::engine::{ContactState, Engine, Internal, relay_peer, send};
use crate::error::NodeError;

impl Engine {
    /// A user this device can reach: a contact, or a member of a shared group.
    pub(crate) fn known(&self, user: &UserId) -> Option<&ContactState> {
        self.people
            .contacts
            .get(user)
            .or_else(|| self.people.peers.get(user))
    }

    /// A group member who is not a contact, from the group state and their device list.
    pub(super) fn peer_state(&self, user: &UserId, list_bytes: &[u8]) -> Option<ContactState> {
        let ub = *user.as_bytes();
        // A member, or a former member whose late messages may still be shown.
        let now = self.clock.now_ms();
        let (identity_key, name, relays) = self
            .groups
            .by_id
            .values()
            .filter_map(|g| g.resolved.as_ref())
            .find_map(|r| r.state.members.get(&ub))
            .map(|m| (m.identity_key, m.name.clone(), m.relays.clone()))
            .or_else(|| {
                self.groups.by_id.values().find_map(|g| {
                    g.recently_left(now)
                        .into_iter()
                        .find(|(u, _)| *u == ub)
                        .map(|(_, e)| (e.identity_key.into_array(), e.name, e.relays))
                })
            })?;
        let list = SignedDeviceList::from_bytes(list_bytes).ok()?;
        let key = tern_crypto::IdentityPublicKey::from_bytes(identity_key);
        list.check_identity(&key).ok()?;
        if list.list().user_id.as_bytes() != &ub {
            return None;
        }
        Some(ContactState {
            contact: Contact {
                user_id: user.to_string(),
                display_name: name,
                verified: false,
                identity_key: identity_key.to_vec(),
                device_list: Some(list_bytes.to_vec()),
                device_list_version: list.list().version,
                relays: relays.clone(),
            },
            list: Some(list),
            relays: relays.iter().filter_map(|r| r.parse().ok()).collect(),
        })
    }

    /// Keeps a group member's device list if the identity key the group gave for them
    /// signed it; returns whether it was kept.
    fn keep_peer(&mut self, user: &UserId, bytes: &[u8]) -> Result<bool, NodeError> {
        let Some(state) = self.peer_state(user, bytes) else {
            return Ok(false);
        };
        self.store
            .transaction(|tx| tx.save_group_peer(&user.to_string(), bytes))?;
        self.people.peers.insert(*user, state);
        Ok(true)
    }

    /// Whether a group member's device list is known. When it is not, a lookup is asked
    /// for ([`Engine::fetch_missing_peers`] runs it in a task on the next tick, never on the
    /// engine) and this fails: the caller owes the member what it was sending, which goes
    /// once the lookup has learned the list (`owed_due`).
    pub(crate) fn ensure_peer(&mut self, user: &UserId) -> Result<(), NodeError> {
        if self.known(user).is_some_and(|c| c.list.is_some()) {
            return Ok(());
        }
        let ub = *user.as_bytes();
        let member = self
            .groups
            .by_id
            .values()
            .filter_map(|g| g.resolved.as_ref())
            .find_map(|r| r.state.members.get(&ub).cloned())
            .ok_or_else(|| NodeError::UnknownContact(user.to_string()))?;
        self.people.peers_due = true;
        Err(NodeError::unreachable(format!(
            "the device list of {} is being looked up",
            member.name
        )))
    }

    /// Fetches the device lists of group members not known yet (on a tick), in a task so a
    /// big group never stalls the engine; [`Engine::on_peer_lists`] takes them. Mail kept for
    /// them is fetched again afterwards.
    pub(crate) fn fetch_missing_peers(&mut self) {
        if !self.people.peers_due
            || self.people.peers_fetching
            || self.people.peers_retry.1 > self.clock.now()
        {
            return;
        }
        self.people.peers_due = false;
        let me = *self.me.user.as_bytes();
        let mut missing: HashMap<[u8; 16], Vec<String>> = HashMap::new();
        let now = self.clock.now_ms();
        for g in self.groups.by_id.values() {
            let Some(r) = g.resolved.as_ref() else {
                continue;
            };
            let former = g.recently_left(now).into_iter().map(|(u, e)| (u, e.relays));
            let current = r.state.members.iter().map(|(u, m)| (*u, m.relays.clone()));
            for (u, relays) in current.chain(former) {
                if u != me
                    && self
                        .known(&UserId::from_bytes(u))
                        .is_none_or(|c| c.list.is_none())
                {
                    missing.entry(u).or_insert(relays);
                }
            }
        }
        let mut targets = Vec::new();
        for (user, relays) in missing {
            let addrs: Vec<libp2p::Multiaddr> =
                relays.iter().filter_map(|r| r.parse().ok()).collect();
            for a in &addrs {
                self.net.add_relay_soon(a.clone(), false);
            }
            // Only connected relays are asked; the others are tried when they come up.
            let up: Vec<libp2p::PeerId> = addrs
                .iter()
                .filter_map(relay_peer)
                .filter(|r| self.relays.relay_up.contains(r))
                .collect();
            if up.is_empty() {
                self.people.peers_due = true;
            } else {
                targets.push((UserId::from_bytes(user), up));
            }
        }
        if targets.is_empty() {
            self.peers_looked_up(false);
            return;
        }
        self.people.peers_fetching = true;
        self.fetch_lists(targets, |lists, failed| Internal::PeerLists {
            lists,
            failed,
        });
    }

    /// Device lists of group members fetched by [`Engine::fetch_missing_peers`]: each one
    /// the group's identity key for that member signed is kept.
    pub(crate) fn on_peer_lists(&mut self, lists: Vec<(UserId, Vec<u8>)>, failed: bool) {
        self.people.peers_fetching = false;
        let mut learned = false;
        for (user, bytes) in lists {
            match self.keep_peer(&user, &bytes) {
                Ok(true) => learned = true,
                Ok(false) => {
                    tracing::warn!(member = %user, "a member's device list does not match the key the group gave");
                }
                Err(e) => {
                    tracing::error!(member = %user, "saving a member's device list failed: {e}");
                    self.people.peers_due = true;
                }
            }
        }
        if failed {
            self.people.peers_due = true;
        }
        self.peers_looked_up(learned);
    }

    /// After a round of member lookups: failures are retried with backoff (and at once when a
    /// relay comes up); what was learned gets its kept mail and owed messages.
    fn peers_looked_up(&mut self, learned: bool) {
        self.people.peers_retry = if self.people.peers_due {
            let attempts = self.people.peers_retry.0.saturating_add(1);
            (attempts, self.clock.now() + send::backoff(attempts))
        } else {
            (0, self.clock.now())
        };
        if learned {
            self.rebuild_device_owner();
            self.groups.owed_due = true;
            self.fetch_home_mailboxes();
            self.retry_stash(None);
        }
    }
}
