//! Pairwise sessions: loaded from the store, or started by claiming a prekey of each
//! device at its user's relays.

use tern_relay::rpc::Requests as _;

use tern_crypto::{DeviceId, UserId, prekey::ClaimedPrekey, session::PeerSessions};
use tern_store::SessionStore;

use libp2p::PeerId;

use super::{Engine, Internal, device_peer};
use crate::{consts::MAX_CLAIMS_IN_FLIGHT, error::NodeError, net::hedge::HEDGE_AFTER};

/// Sessions with the devices of a user that could be had, and those that could not (why).
pub(crate) type Reachable = (Vec<(DeviceId, PeerSessions)>, Vec<(DeviceId, NodeError)>);

impl Engine {
    /// The sessions with a device, from the store (or a fresh, empty set).
    pub(crate) fn load_sessions(
        &mut self,
        device: &DeviceId,
        curve: [u8; 32],
    ) -> Result<PeerSessions, NodeError> {
        let key = device.to_peer_id_string();
        let stored = self
            .store
            .transaction(|tx| tx.current_session(&key))
            .map_err(NodeError::from)?;
        match stored {
            Some(s) => Ok(PeerSessions::from_pickle(&s.pickle)?),
            None => Ok(PeerSessions::new(*device, curve)),
        }
    }

    /// The sessions with each device of `user`; fails if any device has none yet (its
    /// prekey is then claimed, see [`Self::sessions_reachable`]).
    pub(crate) fn sessions_for(
        &mut self,
        user: &UserId,
    ) -> Result<Vec<(DeviceId, PeerSessions)>, NodeError> {
        let (sessions, missing) = self.sessions_reachable(user)?;
        match missing.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(sessions),
        }
    }

    /// A session with each device of `user` that has one, and the devices that have none
    /// yet, each with why. For each of those a prekey claim starts in a task (one per device
    /// at a time, [`Self::claim_prekey`]); when it answers the session is set up and what
    /// waited for it is tried again at once ([`Self::on_prekey_claimed`]). Fails if no
    /// device has a session. Nothing here waits on the network.
    pub(crate) fn sessions_reachable(&mut self, user: &UserId) -> Result<Reachable, NodeError> {
        let state = self
            .known(user)
            .cloned()
            .ok_or_else(|| NodeError::UnknownContact(user.to_string()))?;
        let list = state.list.clone().ok_or_else(|| {
            NodeError::invalid(format!(
                "no device list for {user}; add their contact link again"
            ))
        })?;
        let user_bytes = *list.list().user_id.as_bytes();
        let mut out = Vec::new();
        let mut missing = Vec::new();
        let own_device = self.me.keys.device.device_id();
        for (device, curve) in state.devices() {
            if device == own_device {
                continue;
            }
            let sessions = self.load_sessions(&device, curve)?;
            if sessions.has_session() {
                out.push((device, sessions));
                continue;
            }
            // The claim asks the network, so it runs in a task; what needs this session
            // waits for it (owed, or stored to encrypt) and goes once it is set up.
            self.claim_prekey(*user, user_bytes, device, state.relay_peers());
            missing.push((
                device,
                NodeError::unreachable(format!(
                    "setting up a session with a device of {}: its prekey is being claimed",
                    state.contact.display_name
                )),
            ));
        }
        if out.is_empty() {
            return Err(missing.into_iter().next().map_or_else(
                || NodeError::invalid(format!("{user} has no active device")),
                |(_, e)| e,
            ));
        }
        Ok((out, missing))
    }

    /// Adds sessions with this user's other devices, for sync copies. Returns the (user,
    /// device) pairs that could not be had now (their relay unreachable, no prekey yet): the
    /// caller owes them the copy.
    pub(crate) fn add_sync_sessions(
        &mut self,
        sessions: &mut Vec<(DeviceId, PeerSessions)>,
    ) -> Vec<(String, String)> {
        if !self.own_other_devices() {
            return Vec::new();
        }
        let me = self.me.user;
        let own_other: Vec<String> = self
            .me
            .keys
            .device_list
            .list()
            .active()
            .map(|e| e.device_id())
            .filter(|d| *d != self.me.keys.device.device_id())
            .map(|d| d.to_peer_id_string())
            .collect();
        match self.sessions_reachable(&me) {
            Ok((own, missing)) => {
                sessions.extend(own);
                missing
                    .into_iter()
                    .map(|(d, _)| (me.to_string(), d.to_peer_id_string()))
                    .collect()
            }
            Err(e) => {
                tracing::info!(
                    "no session with this user's other devices yet; the sync copy is owed: {e}"
                );
                own_other.into_iter().map(|d| (me.to_string(), d)).collect()
            }
        }
    }

    /// Claims a prekey of `device` at its user's relays in a task, unless a claim for it is
    /// already running (or too many are); the answer comes back as
    /// [`Internal::PrekeyClaimed`].
    fn claim_prekey(
        &mut self,
        user: UserId,
        user_bytes: [u8; 16],
        device: DeviceId,
        relays: Vec<PeerId>,
    ) {
        if self.people.claiming.len() >= MAX_CLAIMS_IN_FLIGHT
            || !self.people.claiming.insert(device)
        {
            return;
        }
        let Some(peer) = device_peer(&device) else {
            self.people.claiming.remove(&device);
            return;
        };
        let (net, tx) = (self.net.clone(), self.internal.clone());
        tokio::spawn(async move {
            // Each relay of the contact holds the prekey: a hung one must not hold up the
            // session (and what waits for it) until its request times out.
            let net = &net;
            let answer = crate::net::hedge::first_ok(relays, HEDGE_AFTER, |relay| async move {
                net.at(relay).claim_prekey(user_bytes, peer).await
            })
            .await;
            let result = match answer {
                Some(Ok((bytes, _fallback))) => Ok(bytes),
                Some(Err(e)) => Err(NodeError::from(e)),
                None => Err(NodeError::unreachable(
                    "the contact has no relay to claim a prekey at",
                )),
            };
            let _ = tx
                .send(Internal::PrekeyClaimed {
                    user,
                    device,
                    result,
                })
                .await;
        });
    }

    /// A prekey claim answered: the session is set up and stored, and what waited for it —
    /// own messages stored before it could be encrypted, texts and group messages owed to
    /// the device — is tried again now.
    pub(crate) fn on_prekey_claimed(
        &mut self,
        user: UserId,
        device: DeviceId,
        result: Result<Vec<u8>, NodeError>,
    ) {
        self.people.claiming.remove(&device);
        let started = result.and_then(|bytes| self.start_session(&user, device, &bytes));
        if let Err(e) = started {
            tracing::info!(contact = %user, %device, "no session yet: {e}");
            return;
        }
        self.outbox.encrypt_retry.remove(&user);
        self.lists.resync_due = true;
        self.groups.owed_due = true;
        self.encrypt_waiting(false);
    }

    /// Sets up a session with `device` of `user` from its claimed prekey, verified against
    /// the user's device list (identity key → certificate → prekey signature), and stores it.
    /// Nothing is done when a session came meanwhile (the device wrote first) or the device
    /// left the list.
    pub(super) fn start_session(
        &mut self,
        user: &UserId,
        device: DeviceId,
        bytes: &[u8],
    ) -> Result<(), NodeError> {
        let Some(state) = self.known(user).cloned() else {
            return Ok(());
        };
        let Some(list) = state.list.clone() else {
            return Ok(());
        };
        let Some((_, curve)) = state.devices().into_iter().find(|(d, _)| *d == device) else {
            return Ok(());
        };
        let mut sessions = self.load_sessions(&device, curve)?;
        if sessions.has_session() {
            return Ok(());
        }
        let verified = ClaimedPrekey::from_bytes(bytes)?.verify(list.list())?;
        sessions.start(&self.me.keys.device, &verified)?;
        let pickle = (
            device.to_peer_id_string(),
            sessions.current_session_id().unwrap_or_default(),
            sessions.pickle()?,
        );
        let now = self.clock.now_ms();
        self.store
            .transaction(|tx| tx.apply_crypto(&super::send::crypto_updates(&[pickle]), now))?;
        Ok(())
    }
}
