//! This user's relay record in Tern's DHT, and contacts found through it.
//!
//! **Publishing:** once a home relay is up, the device publishes the user's relay record
//! (home relays and device list, signed by the identity key; `tern_crypto::relay_record`)
//! and again whenever the home relays or the device list change; the network's Kademlia
//! client publishes it again periodically (`net::dht::REPUBLISH_INTERVAL`). Versions are
//! milliseconds of the time of issue, above the last this device published, so a later
//! record from any device of the user replaces an earlier one.
//!
//! **Looking up:** when a delivery to a contact's device fails without an answer from any
//! relay (all of the contact's relays unreachable), the contact is looked up, at most once
//! per [`LOOKUP_INTERVAL`]; on demand (`contact.find`), at once; and every contact again
//! once its last lookup is [`REFRESH_INTERVAL`] old (one per heartbeat), for a contact whose
//! old relays still take mail they will never fetch. A value is used only if it verifies, sits under the contact's
//! key and names the pinned identity key; of those found the highest version counts, and
//! only if it is newer than any this device took for that contact. Its relays replace the
//! contact's, its device list goes the way of every fetched list, and the waiting rows go
//! at once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tern_crypto::{
    IdentityPublicKey, UserId,
    relay_record::{RelayRecord, SignedRelayRecord, dht_key},
};

use super::{Engine, Internal, command::Reply, relay_set::parse_relay};
use crate::{error::NodeError, types::ContactInfo};

/// Shortest time between two lookups of one contact.
pub(crate) const LOOKUP_INTERVAL: Duration = Duration::from_secs(30);

/// How old a contact's last lookup may be before the heartbeat looks them up again: a
/// contact whose old relays still take mail would otherwise never be looked up.
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(3600);

/// Most lookups in flight at once.
const MAX_LOOKUPS: usize = 8;

/// What the DHT part keeps.
#[derive(Debug, Default)]
pub(crate) struct Dht {
    /// What the last successful publication carried: home relays and device list version.
    published: Option<(Vec<String>, u64)>,
    /// The version of the last record this device published.
    version: u64,
    /// A publication is in flight.
    publishing: bool,
    /// When each contact was last looked up (ms), and which lookups are in flight.
    looked_up: HashMap<UserId, i64>,
    in_flight: HashSet<UserId>,
    /// The newest record version taken for each contact.
    taken: HashMap<UserId, u64>,
    /// Callers waiting for a lookup asked on demand, by contact.
    waiting: HashMap<UserId, Vec<Reply<ContactInfo>>>,
}

/// What a DHT task reports back.
#[derive(Debug)]
pub(crate) enum Report {
    /// A publication ended.
    Published {
        /// What it carried.
        carried: (Vec<String>, u64),
        /// Whether any relay took it.
        ok: bool,
    },
    /// A lookup of `user` ended with the newest record that verified, if any.
    Found {
        user: UserId,
        record: Option<Box<SignedRelayRecord>>,
    },
}

impl Engine {
    /// Publishes this user's relay record if it changed since the last publication and a
    /// home relay is up.
    pub(crate) fn publish_relay_record(&mut self) {
        if self.dht.publishing || self.relays.relay_up.is_empty() || self.me.revoked {
            return;
        }
        let list = &self.me.keys.device_list;
        let carried = (self.home_relay_addrs(), list.list().version);
        if self.dht.published.as_ref() == Some(&carried) {
            return;
        }
        let now = self.clock.now_ms();
        let version = u64::try_from(now)
            .unwrap_or(0)
            .max(self.dht.version.saturating_add(1));
        let identity = &self.me.keys.identity;
        let record = RelayRecord {
            user_id: identity.user_id(),
            identity_key: identity.public(),
            version,
            issued_at: self.clock.now_secs(),
            relays: carried.0.clone(),
            device_list: list.clone(),
        };
        let signed = match record.sign(identity) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot make the relay record: {e}");
                // Not again until something changes.
                self.dht.published = Some(carried);
                return;
            }
        };
        self.dht.version = version;
        self.dht.publishing = true;
        let (net, tx) = (self.net.clone(), self.internal.clone());
        let key = record.dht_key();
        tokio::spawn(async move {
            let ok = match net.dht_put(key, signed.as_bytes().to_vec()).await {
                Ok(()) => true,
                Err(e) => {
                    tracing::debug!("publishing the relay record failed: {e}");
                    false
                }
            };
            let _ = tx
                .send(Internal::Dht(Report::Published { carried, ok }))
                .await;
        });
    }

    /// A delivery to `device` failed: if no relay answered (all unreachable), its owner is
    /// looked up in the DHT.
    pub(crate) fn delivery_unanswered(&mut self, device: &str) {
        let owner = device
            .parse()
            .ok()
            .and_then(|peer| self.people.device_owner.get(&peer).copied());
        if let Some(user) = owner {
            self.look_up_contact(&user);
        }
    }

    /// Looks up the contact looked up longest ago (or never), if that is over
    /// [`REFRESH_INTERVAL`] ago: one per heartbeat, so contacts stay current without a burst.
    pub(crate) fn refresh_contacts(&mut self) {
        let now = self.clock.now_ms();
        let due = i64::try_from(REFRESH_INTERVAL.as_millis()).unwrap_or(i64::MAX);
        let oldest = self
            .people
            .contacts
            .keys()
            .map(|u| (self.dht.looked_up.get(u).copied().unwrap_or(i64::MIN), u))
            .filter(|(t, _)| now.saturating_sub(*t) >= due)
            .min();
        if let Some((_, user)) = oldest {
            let user = *user;
            self.look_up_contact(&user);
        }
    }

    /// Looks a contact up in the DHT now, on demand, and answers `reply` with the contact
    /// once the lookup ended (a lookup already under way serves it too).
    pub(crate) fn find_contact(&mut self, user: &UserId, reply: Reply<ContactInfo>) {
        let waiters = self.dht.waiting.entry(*user).or_default();
        if waiters.len() >= MAX_LOOKUPS {
            let _ = reply.send(Err(NodeError::unreachable(
                "too many lookups of this contact under way",
            )));
            return;
        }
        waiters.push(reply);
        self.dht.looked_up.remove(user);
        self.look_up_contact(user);
        if !self.dht.in_flight.contains(user) {
            // Not started (too many under way, or no identity key to look up by).
            self.answer_waiting(user);
        }
    }

    fn answer_waiting(&mut self, user: &UserId) {
        for reply in self.dht.waiting.remove(user).unwrap_or_default() {
            let info = self
                .contact_info(user)
                .ok_or_else(|| NodeError::UnknownContact(user.to_string()));
            let _ = reply.send(info);
        }
    }

    /// When `user` was last looked up in the DHT (ms), if ever.
    #[cfg(test)]
    pub(crate) fn looked_up_at(&self, user: &UserId) -> Option<i64> {
        self.dht.looked_up.get(user).copied()
    }

    /// Looks a contact up in the DHT (at most once per [`LOOKUP_INTERVAL`]).
    pub(crate) fn look_up_contact(&mut self, user: &UserId) {
        let now = self.clock.now_ms();
        let recent = self.dht.looked_up.get(user).is_some_and(|t| {
            now.saturating_sub(*t) < i64::try_from(LOOKUP_INTERVAL.as_millis()).unwrap_or(0)
        });
        if recent || self.dht.in_flight.len() >= MAX_LOOKUPS || self.dht.in_flight.contains(user) {
            return;
        }
        let Some(c) = self.people.contacts.get(user) else {
            return;
        };
        let Ok(key) = <[u8; 32]>::try_from(c.contact.identity_key.as_slice()) else {
            return;
        };
        let user_id = *user;
        let identity = IdentityPublicKey::from_bytes(key);
        self.dht.looked_up.insert(user_id, now);
        self.dht.in_flight.insert(user_id);
        let (net, tx, user) = (self.net.clone(), self.internal.clone(), user_id);
        tokio::spawn(async move {
            let key = dht_key(&user_id, &identity);
            let values = net.dht_get(key).await.unwrap_or_default();
            let record = newest_valid(&values, &key, &user_id, &identity).map(Box::new);
            let _ = tx.send(Internal::Dht(Report::Found { user, record })).await;
        });
    }

    pub(crate) fn on_dht_report(&mut self, report: Report) {
        match report {
            Report::Published { carried, ok } => {
                self.dht.publishing = false;
                if ok {
                    tracing::debug!(version = self.dht.version, "relay record published");
                    self.dht.published = Some(carried);
                }
            }
            Report::Found { user, record } => {
                self.dht.in_flight.remove(&user);
                if let Some(record) = record
                    && let Err(e) = self.take_relay_record(&user, *record)
                {
                    tracing::warn!(contact = %user, "taking the contact's relay record failed: {e}");
                }
                self.answer_waiting(&user);
            }
        }
    }

    /// Takes a verified record of a contact, if newer than any taken before: its relays as a
    /// device-list message's are taken ([`Engine::take_relays`]: not over a set from a
    /// message sent after the record was made, and rows that waited only for a relay taken
    /// out of the set leave), and its device list if newer.
    pub(crate) fn take_relay_record(
        &mut self,
        user: &UserId,
        record: SignedRelayRecord,
    ) -> Result<(), NodeError> {
        let r = record.record();
        if self.dht.taken.get(user).is_some_and(|v| *v >= r.version) {
            return Ok(());
        }
        self.dht.taken.insert(*user, r.version);
        let Some(c) = self.people.contacts.get(user) else {
            return Ok(());
        };
        let list_newer = c
            .list
            .as_ref()
            .is_none_or(|l| l.list().version < r.device_list.list().version);
        let relays: Vec<String> = r
            .relays
            .iter()
            .filter(|a| parse_relay(a).is_ok())
            .cloned()
            .collect();
        tracing::debug!(contact = %user, version = r.version, relays = relays.len(), "a contact's relay record found in the DHT");
        // The version is the publisher's clock when the record was made, as a device-list
        // message's sending time is: whichever was made later names the set.
        let made_at = i64::try_from(r.version).unwrap_or(i64::MAX);
        self.take_relays(user, &relays, made_at);
        if list_newer {
            self.on_device_lists(vec![(*user, r.device_list.as_bytes().to_vec())]);
        }
        Ok(())
    }
}

/// Of the values a lookup found, the newest that verifies as the relay record of `user`
/// with identity key `identity` under `key`.
fn newest_valid(
    values: &[Vec<u8>],
    key: &[u8; 32],
    user: &UserId,
    identity: &IdentityPublicKey,
) -> Option<SignedRelayRecord> {
    values
        .iter()
        .filter_map(|v| {
            let r = SignedRelayRecord::from_bytes(v).ok()?;
            r.check_key(key).ok()?;
            r.check_identity(user, identity).ok()?;
            Some(r)
        })
        .max_by_key(|r| r.record().version)
}

#[cfg(test)]
pub(crate) mod tests {
    use tern_crypto::{DeviceKeys, DeviceList, IdentityKey};

    use super::*;

    /// A relay record of `id`'s at `version`, naming `relays`.
    pub(crate) fn signed(id: &IdentityKey, version: u64, relays: Vec<String>) -> SignedRelayRecord {
        let cert = DeviceKeys::generate()
            .unwrap()
            .certify(id, "phone", 1)
            .unwrap();
        let record = RelayRecord {
            user_id: id.user_id(),
            identity_key: id.public(),
            version,
            issued_at: 1,
            relays,
            device_list: DeviceList::first(id, cert, 1).sign(id).unwrap(),
        };
        record.sign(id).unwrap()
    }

    #[test]
    fn newest_valid_takes_the_highest_verified_version_of_the_pinned_key() {
        let id = IdentityKey::generate().unwrap();
        let squatter = IdentityKey::generate().unwrap();
        let key = dht_key(&id.user_id(), &id.public());
        let values = vec![
            signed(&id, 5, vec![]).as_bytes().to_vec(),
            signed(&id, 9, vec![]).as_bytes().to_vec(),
            // Another key's record, even at a higher version, is not the contact's.
            signed(&squatter, 99, vec![]).as_bytes().to_vec(),
            b"junk".to_vec(),
        ];
        let best = newest_valid(&values, &key, &id.user_id(), &id.public()).unwrap();
        assert_eq!(best.record().version, 9);
        assert!(newest_valid(&values[2..], &key, &id.user_id(), &id.public()).is_none());
    }
}
