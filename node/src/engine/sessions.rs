//! Pairwise sessions: loaded from the store, or started by claiming a prekey of each
//! device at its user's relays.

use tern_relay::rpc::Requests as _;

use tern_crypto::{DeviceId, prekey::ClaimedPrekey, session::PeerSessions};
use tern_store::SessionStore;

use super::{Engine, device_peer};
use crate::error::NodeError;

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

    /// Makes sure a session with each device exists, claiming prekeys where needed; fails if
    /// any device cannot be had.
    pub(crate) async fn sessions_for(
        &mut self,
        user: &str,
    ) -> Result<Vec<(DeviceId, PeerSessions)>, NodeError> {
        let (sessions, missing) = self.sessions_reachable(user).await?;
        match missing.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(sessions),
        }
    }

    /// A session with each device of `user` that has one or whose prekey can be claimed now,
    /// and the devices that could not be had, each with why (a device linked but never
    /// started has no prekey yet). Fails if no device could be had.
    pub(crate) async fn sessions_reachable(&mut self, user: &str) -> Result<Reachable, NodeError> {
        let state = self
            .known(user)
            .cloned()
            .ok_or_else(|| NodeError::UnknownContact(user.to_owned()))?;
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
            let mut sessions = self.load_sessions(&device, curve)?;
            if !sessions.has_session() {
                let peer = device_peer(&device)
                    .ok_or_else(|| NodeError::invalid("device id is not a PeerId"))?;
                let mut claim = Err(NodeError::unreachable(format!(
                    "cannot reach any relay of {} to set up a session",
                    state.contact.display_name
                )));
                for relay in state.relay_peers() {
                    match self.net.at(relay).claim_prekey(user_bytes, peer).await {
                        Ok((bytes, _fallback)) => {
                            claim = Ok(bytes);
                            break;
                        }
                        Err(e) => {
                            claim = Err(NodeError::unreachable(format!(
                                "cannot claim a prekey of {} from its relay: {e}",
                                state.contact.display_name
                            )))
                        }
                    }
                }
                let bytes = match claim {
                    Ok(b) => b,
                    Err(e) => {
                        missing.push((device, e));
                        continue;
                    }
                };
                let claimed = ClaimedPrekey::from_bytes(&bytes)?;
                let verified = claimed.verify(list.list())?;
                sessions.start(&self.me.keys.device, &verified)?;
            }
            out.push((device, sessions));
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
    pub(crate) async fn add_sync_sessions(
        &mut self,
        sessions: &mut Vec<(DeviceId, PeerSessions)>,
    ) -> Vec<(String, String)> {
        if !self.own_other_devices() {
            return Vec::new();
        }
        let me = self.me.user_hex.clone();
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
        match self.sessions_reachable(&me).await {
            Ok((own, missing)) => {
                sessions.extend(own);
                missing
                    .into_iter()
                    .map(|(d, _)| (me.clone(), d.to_peer_id_string()))
                    .collect()
            }
            Err(e) => {
                tracing::info!(
                    "no session with this user's other devices yet; the sync copy is owed: {e}"
                );
                own_other.into_iter().map(|d| (me.clone(), d)).collect()
            }
        }
    }
}
