//! Revoking a device of this user, and what a revocation means wherever it is learned.
//!
//! `device.revoke` on any device of the user signs a new list with the device marked revoked
//! (it stays listed, so it can never come back), stores it, drops every outbox row still
//! queued for that device, retires this device's sender keys in every group (the next
//! message makes a new key, shared only with the devices listed then), publishes the list
//! at every home relay and tells every contact, group member and the user's other devices
//! ([`Engine::announce_list`]); the revoked device gets the list too, and then its sessions
//! are archived.
//!
//! Any device that takes a list in which a device it addressed is now revoked
//! ([`Engine::on_devices_revoked`]) does the same on its side: nothing more is queued for
//! the revoked device, its sender keys in the groups shared with that user are retired, and
//! messages from the revoked device are refused (pairwise and group). The revoked device
//! itself learns it from its own list (fetched from its relays, or sent by another device of
//! the user): it then refuses every command that would send, with a clear error, and stops
//! delivering its outbox. The grant this device issued `user` is revoked too
//! ([`Engine::revoke_grant`]): the revoked device cannot fill this device's mailbox under it.

use libp2p::PeerId;
use tern_crypto::{DeviceId, UserId};

use super::{Engine, command::Reply, relay_peer};
use crate::{error::NodeError, net::rpc, types::DeviceInfo};

impl Engine {
    /// Refuses work that would send from a revoked device.
    pub(crate) fn check_not_revoked(&self) -> Result<(), NodeError> {
        if self.me.revoked {
            return Err(NodeError::Revoked);
        }
        Ok(())
    }

    /// Revokes one of this user's other devices, named by device id or by its (unique) name,
    /// and answers `reply` once the new list is published (in a task) and announced.
    pub(crate) fn device_revoke(&mut self, which: &str, reply: Reply<DeviceInfo>) {
        let info = match self.revoke_in_list(which) {
            Ok(info) => info,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let publish = self.publish_own_list();
        self.off_task(reply, publish, move |engine, failed, reply| {
            engine.own_list_published(failed);
            let _ = reply.send(engine.tell_revoked(info));
        });
    }

    /// Marks a device revoked in this user's list and stores it, with nothing more queued
    /// for the device and new group sender keys.
    fn revoke_in_list(&mut self, which: &str) -> Result<DeviceInfo, NodeError> {
        self.check_not_revoked()?;
        let list = self.me.keys.device_list.list().clone();
        let by_id = list
            .devices
            .iter()
            .find(|e| e.device_id().to_peer_id_string() == which);
        let entry = match by_id {
            Some(e) => e,
            None => {
                let named: Vec<_> = list
                    .active()
                    .filter(|e| e.certificate.certificate().name == which)
                    .collect();
                match named.as_slice() {
                    [one] => *one,
                    [] => {
                        return Err(NodeError::BadRequest(format!(
                            "no device {which:?} in this user's list (see `tern device list`)"
                        )));
                    }
                    _ => {
                        return Err(NodeError::BadRequest(format!(
                            "{which:?} names more than one device; use the device id"
                        )));
                    }
                }
            }
        };
        let id = entry.device_id();
        if !entry.is_active() {
            return Err(NodeError::BadRequest(format!(
                "device {which} is already revoked"
            )));
        }
        if id == self.me.keys.device.device_id() {
            return Err(NodeError::BadRequest(
                "that is this device; revoke it from another device of yours".into(),
            ));
        }
        let info = DeviceInfo {
            device_id: id,
            name: entry.certificate.certificate().name.clone(),
            this_device: false,
            created_at: entry.certificate.certificate().created_at,
            words: None,
            link: None,
        };
        let now_secs = self.clock.now_secs();
        let next = list.with_revoked(&id, now_secs)?;
        let signed = next.sign(&self.me.keys.identity)?;
        let groups: Vec<String> = self.groups.by_id.keys().map(ToString::to_string).collect();
        let device_key = id.to_peer_id_string();
        // One transaction: the list, nothing more queued for the device, new sender keys.
        self.store.transaction(|tx| -> Result<(), NodeError> {
            tx.save_own_device_list(next.version, signed.as_bytes())?;
            tx.drop_device_rows(&device_key)?;
            tx.retire_group_sender_keys(&groups)?;
            Ok(())
        })?;
        tracing::info!(device = %device_key, "device revoked");
        self.me.keys.device_list = signed;
        self.refresh_me();
        self.lists_changed();
        Ok(info)
    }

    /// The list that revokes `info`'s device is published: every contact, group member and
    /// own device is told, the revoked one too, and its sessions are archived.
    fn tell_revoked(&mut self, info: DeviceInfo) -> Result<DeviceInfo, NodeError> {
        let id = info.device_id;
        let device_key = id.to_peer_id_string();
        self.announce_list();
        // The revoked device is told too, so it stops at once if it still runs: the list is
        // all it gets.
        let me = self.me.user;
        let body = self.own_list_body();
        // Its sessions are archived with the notice queued: nothing else is encrypted for it.
        let archive = device_key.clone();
        if let Err(e) =
            self.send_control_to(&me, Some(id), body, |tx| tx.archive_sessions(&archive))
        {
            tracing::warn!("telling the revoked device failed (it learns from its relays): {e}");
            self.store
                .transaction(|tx| tx.archive_sessions(&device_key))?;
        }
        Ok(info)
    }

    /// Publishes this user's device list at every home relay, in the future returned (run
    /// off the engine); it yields the relays that failed, for
    /// [`Engine::own_list_published`].
    pub(crate) fn publish_own_list(
        &self,
    ) -> impl std::future::Future<Output = Vec<PeerId>> + Send + use<> {
        let relays: Vec<PeerId> = self
            .relays
            .home_relays
            .iter()
            .filter_map(relay_peer)
            .collect();
        let (net, bytes) = (
            self.net.clone(),
            self.me.keys.device_list.as_bytes().to_vec(),
        );
        async move {
            let mut failed = Vec::new();
            for relay in relays {
                if let Err(e) = rpc::publish_device_list(&net, relay, bytes.clone()).await {
                    tracing::warn!(%relay, "publishing the device list failed (retried when the relay comes up): {e}");
                    failed.push(relay);
                }
            }
            failed
        }
    }

    /// The own list was published, but not at `failed`: those get it when they come up.
    pub(crate) fn own_list_published(&mut self, failed: Vec<PeerId>) {
        self.relays.setup_pending.extend(failed);
    }

    /// A list of `user` was taken in which `devices` are revoked that were active before:
    /// nothing more goes to them, and this device's sender keys in the groups shared with
    /// `user` are retired. If this device is one of them, it stops sending.
    pub(crate) fn on_devices_revoked(
        &mut self,
        user: &UserId,
        devices: &[DeviceId],
    ) -> Result<(), NodeError> {
        let me = self.me.keys.device.device_id();
        if *user == self.me.user && devices.contains(&me) {
            tracing::error!(
                "this device was revoked by another device of this user: it no longer sends or receives; link it again with `tern device link` on an empty home"
            );
            self.me.revoked = true;
            self.emit(crate::types::Event::Revoked {
                device_id: self.me.device,
            });
        }
        let shared: Vec<String> = self
            .groups
            .by_id
            .keys()
            .filter(|g| self.state(g).is_ok_and(|s| s.is_member(user.as_bytes())))
            .map(ToString::to_string)
            .collect();
        let keys: Vec<String> = devices.iter().map(DeviceId::to_peer_id_string).collect();
        self.store.transaction(|tx| -> Result<(), NodeError> {
            for d in &keys {
                tx.drop_device_rows(d)?;
                tx.archive_sessions(d)?;
            }
            tx.retire_group_sender_keys(&shared)?;
            Ok(())
        })?;
        // The revoked device holds this device's grant for `user`: a new one replaces it
        // at the relays, and the user's remaining devices get it with the next envelope.
        if !self.me.revoked {
            self.revoke_grant(user)?;
        }
        Ok(())
    }

    /// The user whose list holds `device` as revoked, if any (kept with the device owners).
    pub(crate) fn revoked_owner(&self, device: &DeviceId) -> Option<UserId> {
        self.people.revoked_devices.get(device).copied()
    }
}
