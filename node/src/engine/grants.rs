//! Deposit grants: who may leave mail in this device's mailboxes, and what this device
//! shows to leave mail in others' (see `tern_crypto::grant` and `docs/protocol.md`).
//!
//! - **Issued.** Every user this device talks to — contacts, members of shared groups, its
//!   own user — is granted. A grant goes to that user's devices on every pairwise envelope
//!   this device encrypts for them ([`crate::envelope::Envelope::grant`]), and its token
//!   hash is registered at every home relay. The registered set follows the known users: it
//!   is sent again whenever it changes and whenever a home relay comes up.
//! - **Held.** The grant each remote device issued this user, taken from the envelopes it
//!   sends, is shown (as a token for the relay in question) with every deposit for it. A
//!   relay that refuses it (`no_grant`: revoked) makes the engine forget it; the deposit goes
//!   again as an introduction.
//! - **Asked for.** Mail from a known user that came as an introduction (the sender held no
//!   grant) is answered with a [`crate::envelope::Body::Grant`], at most once per
//!   [`GRANT_OFFER_INTERVAL`] per user, so a contact never stays in the small introductions
//!   share for long.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};
use tern_relay::rpc::Requests as _;

use libp2p::PeerId;
use tern_crypto::grant::{Grant, GrantKey};
use tern_crypto::{DeviceKeys, UserId};
use tern_store::Store;

use super::{Engine, relay_peer};
use tern_relay::wire::mailbox;

use crate::{
    envelope::Body,
    error::NodeError,
    types::{MailboxInfo, MailboxSender},
};

/// How long registering grants at a relay that refused or failed waits before it is tried
/// again (a relay comes back up sooner through its connection routine).
pub(crate) const GRANT_RETRY: Duration = Duration::from_secs(30);

/// Least time between two grants offered to the same user in answer to introductions.
pub(crate) const GRANT_OFFER_INTERVAL: Duration = Duration::from_secs(60);

/// This device's grants, issued and held.
pub(crate) struct Grants {
    key: GrantKey,
    /// Revocation epochs of users whose grant was revoked (others are at 0).
    epochs: HashMap<UserId, u32>,
    /// Grants held, by the issuing device (peer id string).
    held: HashMap<String, Grant>,
    /// The users whose grants were last registered, per home relay.
    registered: HashMap<PeerId, BTreeSet<UserId>>,
    /// Home relays where registering failed, and when to try again.
    retry_at: HashMap<PeerId, Instant>,
    /// When a grant was last offered to a user in answer to an introduction.
    offered: HashMap<UserId, Instant>,
    /// Per home relay, the user each registered token hash stands for (to name the shares
    /// of the mailbox's usage).
    hashes: HashMap<PeerId, HashMap<[u8; 32], UserId>>,
    /// The mailbox's usage at each home relay, and when it was asked (ms).
    usage: HashMap<PeerId, (mailbox::Usage, i64)>,
}

impl std::fmt::Debug for Grants {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grants")
            .field("held", &self.held.len())
            .field("revoked_users", &self.epochs.len())
            .finish_non_exhaustive()
    }
}

impl Grants {
    /// This device's grants, from its keys and the store.
    pub(crate) fn load(device: &DeviceKeys, store: &Store) -> Result<Self, NodeError> {
        Ok(Grants {
            key: GrantKey::of(device),
            epochs: store
                .grant_epochs()?
                .into_iter()
                .filter_map(|(u, e)| Some((UserId::from_hex(&u)?, e)))
                .collect(),
            held: store
                .held_grants()?
                .into_iter()
                .map(|(d, g)| (d, Grant::from_bytes(g)))
                .collect(),
            registered: HashMap::new(),
            retry_at: HashMap::new(),
            offered: HashMap::new(),
            hashes: HashMap::new(),
            usage: HashMap::new(),
        })
    }

    /// The grant this device issued `user`.
    pub(crate) fn issued(&self, user: &UserId) -> Grant {
        self.key
            .issue(user, self.epochs.get(user).copied().unwrap_or(0))
    }

    /// The grant `device` issued this user, if one arrived.
    pub(crate) fn held(&self, device: &str) -> Option<Grant> {
        self.held.get(device).cloned()
    }

    /// Whether `grant` from `device` is news (to be stored).
    fn is_new(&self, device: &str, grant: &Grant) -> bool {
        self.held.get(device) != Some(grant)
    }
}

/// The token for `relay` of a held grant.
pub(crate) fn token(grant: Option<&Grant>, relay: PeerId) -> Option<[u8; 32]> {
    grant.map(|g| g.token(&relay.to_bytes()))
}

impl Engine {
    /// Every user this device grants: contacts, members of shared groups, its own user.
    /// At most [`mailbox::MAX_GRANTS`] (this user and contacts first): past that, members of
    /// shared groups who are not contacts deposit as introductions.
    fn granted_users(&self) -> BTreeSet<UserId> {
        let mut users: BTreeSet<UserId> = std::iter::once(self.me.user)
            .chain(self.people.contacts.keys().copied())
            .take(mailbox::MAX_GRANTS)
            .collect();
        for u in self.people.peers.keys() {
            if users.len() >= mailbox::MAX_GRANTS {
                break;
            }
            users.insert(*u);
        }
        users
    }

    /// Registers the grants at every home relay that is up and whose registered set is not
    /// the current one (`force`: at `only` whatever it holds).
    pub(crate) fn push_grants(&mut self, only: Option<PeerId>) {
        let users = self.granted_users();
        for relay in self.relays.home_relays.iter().filter_map(relay_peer) {
            if !self.relays.relay_up.contains(&relay) || only.is_some_and(|o| o != relay) {
                continue;
            }
            if only.is_none()
                && (self.grants.registered.get(&relay) == Some(&users)
                    || self
                        .grants
                        .retry_at
                        .get(&relay)
                        .is_some_and(|t| self.clock.now() < *t))
            {
                continue;
            }
            self.grants.retry_at.remove(&relay);
            let rb = relay.to_bytes();
            let named: HashMap<[u8; 32], UserId> = users
                .iter()
                .map(|u| (self.grants.issued(u).token_hash(&rb), *u))
                .collect();
            let hashes: Vec<[u8; 32]> = named.keys().copied().collect();
            self.grants.hashes.insert(relay, named);
            self.grants.registered.insert(relay, users.clone());
            let net = self.net.clone();
            let tx = self.internal.clone();
            tokio::spawn(async move {
                if let Err(e) = net.at(relay).set_grants(hashes).await {
                    tracing::debug!(%relay, "registering deposit grants failed: {e}");
                    // Registered again on the next tick.
                    let _ = tx.send(super::Internal::GrantsFailed(relay)).await;
                }
            });
        }
    }

    /// Asks every connected home relay how full this device's mailbox is (answered as
    /// [`super::Internal::Usage`]).
    pub(crate) fn ask_usage(&self) {
        for ask in self.usage_requests() {
            let tx = self.internal.clone();
            tokio::spawn(async move {
                if let Some((relay, u)) = ask.await {
                    let _ = tx.send(super::Internal::Usage(relay, u)).await;
                }
            });
        }
    }

    /// One request per connected home relay for how full this device's mailbox is there:
    /// each answers the relay and its figures, or `None` if it failed.
    pub(crate) fn usage_requests(
        &self,
    ) -> Vec<impl std::future::Future<Output = Option<(PeerId, mailbox::Usage)>> + Send + use<>>
    {
        self.relays
            .home_relays
            .iter()
            .filter_map(relay_peer)
            .filter(|relay| self.relays.relay_up.contains(relay))
            .map(|relay| {
                let net = self.net.clone();
                async move {
                    match net.at(relay).usage().await {
                        Ok(u) => Some((relay, u)),
                        Err(e) => {
                            tracing::debug!(%relay, "asking for mailbox usage failed: {e}");
                            None
                        }
                    }
                }
            })
            .collect()
    }

    /// A home relay said how full this device's mailbox is.
    pub(crate) fn on_usage(&mut self, relay: PeerId, usage: mailbox::Usage) {
        self.grants
            .usage
            .insert(relay, (usage, self.clock.now_ms()));
    }

    /// The mailbox at `relay` as `status` shows it: totals, limits, and who fills it by name
    /// where this device knows them.
    pub(crate) fn mailbox_info(&self, relay: PeerId) -> Option<MailboxInfo> {
        let (u, at_ms) = self.grants.usage.get(&relay)?;
        let names = self.grants.hashes.get(&relay);
        let name_of = |user: &UserId| {
            self.known(user)
                .map(|c| c.contact.display_name.clone())
                .or_else(|| (*user == self.me.user).then(|| "this user".to_owned()))
        };
        let mut by_sender: Vec<MailboxSender> = u
            .grants
            .iter()
            .map(|(h, f)| {
                let user = names.and_then(|n| n.get(h.as_ref())).copied();
                MailboxSender {
                    kind: "grant".into(),
                    name: user.as_ref().and_then(name_of),
                    user_id: user,
                    device_id: None,
                    messages: f.messages,
                    bytes: f.bytes,
                }
            })
            .chain(u.senders.iter().map(|(p, f)| {
                let user = self.people.device_owner.get(p).copied();
                MailboxSender {
                    kind: "device".into(),
                    name: user.as_ref().and_then(name_of),
                    user_id: user,
                    device_id: super::peer_device(p),
                    messages: f.messages,
                    bytes: f.bytes,
                }
            }))
            .collect();
        by_sender.sort_by_key(|s| std::cmp::Reverse(s.bytes));
        Some(MailboxInfo {
            messages: u.total.messages,
            bytes: u.total.bytes,
            max_messages: u.quota.messages,
            max_bytes: u.quota.bytes,
            share_messages: u.share_quota.messages,
            intro_messages: u.intro.messages,
            intro_max_messages: u.intro_quota.messages,
            grants: u.registered,
            by_sender,
            at_ms: *at_ms,
        })
    }

    /// Registering grants at `relay` failed: it is tried again after [`GRANT_RETRY`] (or
    /// when the relay comes up again).
    pub(crate) fn on_grants_failed(&mut self, relay: PeerId) {
        self.grants.registered.remove(&relay);
        self.grants
            .retry_at
            .insert(relay, self.clock.now() + GRANT_RETRY);
    }

    /// A pairwise envelope from `device` carried its grant for this user.
    pub(crate) fn take_grant(&mut self, device: &str, grant: [u8; 32]) {
        let g = Grant::from_bytes(grant);
        if !self.grants.is_new(device, &g) {
            return;
        }
        let now = self.clock.now_ms();
        match self
            .store
            .transaction(|tx| tx.set_held_grant(device, &grant, now))
        {
            Ok(()) => {
                self.grants.held.insert(device.to_owned(), g);
                // A lane waiting because its deposits were refused goes on now.
                self.start_lanes(device);
            }
            Err(e) => tracing::warn!("storing a deposit grant failed: {e}"),
        }
    }

    /// `device`'s relay refused the grant held from it: forget it, so the next deposit goes
    /// as an introduction (and the device answers with its current grant).
    pub(crate) fn drop_grant(&mut self, device: &str) {
        if self.grants.held.remove(device).is_some()
            && let Err(e) = self.store.transaction(|tx| tx.forget_held_grant(device))
        {
            tracing::warn!("forgetting a deposit grant failed: {e}");
        }
    }

    /// Mail from `user` came as an introduction: it holds no grant of this device (or an
    /// old one). Send it one, unless one went lately.
    pub(crate) fn offer_grant(&mut self, user: &UserId) {
        let now = self.clock.now();
        if self
            .grants
            .offered
            .get(user)
            .is_some_and(|t| now.duration_since(*t) < GRANT_OFFER_INTERVAL)
        {
            return;
        }
        self.grants.offered.insert(*user, now);
        if self.grants.offered.len() > 4096 {
            self.grants
                .offered
                .retain(|_, t| now.duration_since(*t) < GRANT_OFFER_INTERVAL);
        }
        if let Err(e) = self.send_control_to(user, None, Body::Grant {}, |_| Ok(())) {
            tracing::warn!(contact = %user, "offering a deposit grant failed: {e}");
        }
    }

    /// Revokes `user`'s grant: a new one is derived and registered in its place, so the old
    /// one is refused at every home relay; the user's devices get the new one with the next
    /// envelope this device sends them (a removed user gets nothing more).
    pub(crate) fn revoke_grant(&mut self, user: &UserId) -> Result<(), NodeError> {
        let epoch = self
            .store
            .transaction(|tx| tx.bump_grant_epoch(&user.to_string()))?;
        self.grants.epochs.insert(*user, epoch);
        self.grants.registered.clear();
        self.push_grants(None);
        // The user's other devices hear of the new grant at once.
        self.offer_grant(user);
        Ok(())
    }
}
