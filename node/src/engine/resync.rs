//! Own texts sent again to devices a message missed (owed in the store by `listsync` when a
//! device list answer names them): sessions set up, texts encrypted again and queued in
//! those devices' lanes, the debt settled in the same transaction.

use tern_crypto::{DeviceId, UserId, group::GroupId};
use tern_store::MessageId;

use super::{Engine, send::crypto_updates};
use crate::{consts::OUTBOX_BATCH, error::NodeError};

impl Engine {
    /// Encrypts the owed texts again for the devices that missed them and queues them in
    /// those devices' lanes: per message, the ratchet states, the rows and the settled debt
    /// in one transaction. A user whose devices cannot be reached now is tried again after a
    /// backoff.
    pub(crate) fn resync_owed(&mut self) {
        if !self.lists.resync_due
            || self
                .lists
                .resync_retry
                .is_some_and(|t| t > self.clock.now())
        {
            return;
        }
        let due = match self.store.due_resync(OUTBOX_BATCH) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("reading owed re-encryptions failed: {e}");
                return;
            }
        };
        if due.is_empty() {
            self.lists.resync_due = false;
            self.lists.resync_retry = None;
            return;
        }
        let mut users: Vec<String> = due.iter().map(|o| o.user.clone()).collect();
        users.sort();
        users.dedup();
        let mut failed = false;
        for user in users {
            if let Err(e) = self.resync_user(&user, &due) {
                tracing::info!(contact = %user, "cannot send texts to new devices yet: {e}");
                failed = true;
            }
        }
        if failed {
            self.lists.resync_attempts = self.lists.resync_attempts.saturating_add(1);
            self.lists.resync_retry =
                Some(self.clock.now() + super::send::backoff(self.lists.resync_attempts));
        } else {
            self.lists.resync_attempts = 0;
            self.lists.resync_retry = None;
        }
    }

    pub(super) fn resync_user(
        &mut self,
        user: &str,
        due: &[tern_store::OwedResync],
    ) -> Result<(), NodeError> {
        let rows: Vec<&tern_store::OwedResync> = due.iter().filter(|o| o.user == user).collect();
        let Some(user_id) = UserId::from_hex(user) else {
            return Ok(());
        };
        let active: Vec<DeviceId> = self
            .known(&user_id)
            .map(|s| s.devices().into_iter().map(|(d, _)| d).collect())
            .unwrap_or_default();
        let (mut sessions, missing) = if active.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            self.sessions_reachable(&user_id)?
        };
        // Devices that cannot be had yet (no prekey: linked but not started) stay owed.
        let unreachable: Vec<String> = missing.iter().map(|(d, _)| d.to_peer_id_string()).collect();
        // In the order they were owed, each once.
        let mut ids: Vec<MessageId> = Vec::new();
        for o in &rows {
            if !ids.contains(&o.message_id) {
                ids.push(o.message_id);
            }
        }
        for id in ids {
            let wanted: Vec<&str> = rows
                .iter()
                .filter(|o| o.message_id == id)
                .map(|o| o.device.as_str())
                .collect();
            let message = self.store.message(id)?;
            let queued = self.store.queued_devices(id)?;
            let (mut chosen, rest): (Vec<_>, Vec<_>) = sessions.into_iter().partition(|(d, _)| {
                let key = d.to_peer_id_string();
                wanted.contains(&key.as_str()) && !queued.contains(&key)
            });
            let encrypted = match &message {
                Some(m)
                    if m.own
                        && !chosen.is_empty()
                        && GroupId::from_hex(&m.conversation.0)
                            .is_some_and(|g| self.groups.by_id.contains_key(&g)) =>
                {
                    Some(self.encrypt_group_copy(&user_id, m, &mut chosen))
                }
                Some(m) if m.own && !chosen.is_empty() => {
                    let to = tern_crypto::UserId::from_hex(&m.conversation.0)
                        .ok_or_else(|| NodeError::UnknownContact(m.conversation.0.clone()));
                    match to {
                        Ok(to) => Some(self.encrypt_text(&to, m, &mut chosen)),
                        Err(e) => Some(Err(e)),
                    }
                }
                // Gone, not own, or no device left to send it to (revoked, already queued).
                _ => None,
            };
            sessions = chosen.into_iter().chain(rest).collect();
            let (deliveries, pickles) = match encrypted {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(e),
                None => (Vec::new(), Vec::new()),
            };
            let updates = crypto_updates(&pickles);
            let now = self.clock.now_ms();
            self.store.transaction(|tx| -> Result<(), NodeError> {
                tx.apply_crypto(&updates, now)?;
                if !deliveries.is_empty() {
                    tx.add_outbox_rows(id, &deliveries, now)?;
                }
                for device in wanted
                    .iter()
                    .filter(|d| !unreachable.iter().any(|u| u == *d))
                {
                    tx.settle_resync(id, device)?;
                }
                Ok(())
            })?;
            if !deliveries.is_empty() {
                tracing::info!(contact = %user, devices = deliveries.len(), "sent a text again to devices linked since");
                self.inbox.recovery.texts_resent += 1;
            }
            self.kick_lanes_for(&deliveries);
        }
        match missing.into_iter().next() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }
}
