//! Mail from a device of no known user: kept here within bounds (not at the relay, where
//! it would pin the mailbox), and read again once its sender may be known.

use std::collections::HashMap;

use libp2p::PeerId;

use super::{super::Engine, Outcome};
use crate::consts::{
    QUARANTINE_MAX_BYTES, QUARANTINE_MAX_MESSAGES, QUARANTINE_MAX_PER_SENDER,
    QUARANTINE_REPLAY_BATCH, QUARANTINE_TTL_MS,
};

impl Engine {
    /// Keeps mail from a device of no known user in the local quarantine, within its
    /// bounds; whether it was kept (then the relay may delete it).
    pub(super) fn quarantine(&mut self, sender: PeerId, ciphertext: &[u8]) -> bool {
        let sender = sender.to_string();
        let fits = match self.store.quarantine_fill(&sender) {
            Ok((rows, bytes, from_sender)) => {
                rows < QUARANTINE_MAX_MESSAGES
                    && bytes + ciphertext.len() as u64 <= QUARANTINE_MAX_BYTES
                    && from_sender < QUARANTINE_MAX_PER_SENDER
            }
            Err(e) => {
                tracing::warn!("reading the quarantine failed: {e}");
                false
            }
        };
        if !fits {
            return false;
        }
        let now = self.clock.now_ms();
        match self
            .store
            .transaction(|tx| tx.quarantine(&sender, ciphertext, now))
        {
            Ok(()) => {
                self.inbox.quarantine_due = true;
                true
            }
            Err(e) => {
                tracing::warn!("keeping mail in the quarantine failed: {e}");
                false
            }
        }
    }

    /// Reads quarantined mail whose sender is known now (a contact was added, a device
    /// list arrived), and drops what has waited longer than [`QUARANTINE_TTL_MS`].
    pub(crate) fn replay_quarantine(&mut self) {
        if !std::mem::take(&mut self.inbox.quarantine_due) {
            return;
        }
        let cutoff = self.clock.now_ms() - QUARANTINE_TTL_MS;
        match self.store.transaction(|tx| tx.expire_quarantine(cutoff)) {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    n,
                    "messages from devices of no known user dropped after waiting 7 days"
                );
                self.inbox.recovery.strangers_expired += n as u64;
            }
            Err(e) => tracing::warn!("expiring the quarantine failed: {e}"),
        }
        let senders: Vec<String> = match self.store.quarantined_senders() {
            Ok(s) => s
                .into_iter()
                .filter(|s| {
                    s.parse::<PeerId>()
                        .is_ok_and(|p| self.people.device_owner.contains_key(&p))
                })
                .collect(),
            Err(e) => {
                tracing::warn!("reading the quarantine failed: {e}");
                return;
            }
        };
        if senders.is_empty() {
            return;
        }
        let rows = match self
            .store
            .quarantined_from(&senders, QUARANTINE_REPLAY_BATCH)
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("reading the quarantine failed: {e}");
                return;
            }
        };
        let mut receipts = HashMap::new();
        let mut done = Vec::new();
        let mut offers = std::collections::BTreeSet::new();
        // Mail that waits (for earlier messages of its chain) is read again on a later tick:
        // nothing else would bring the quarantine up again once the sender's burst is over.
        let mut waiting = false;
        for q in &rows {
            let Ok(peer) = q.sender.parse::<PeerId>() else {
                done.push(q.id);
                continue;
            };
            match self.process(peer, &q.payload, &mut receipts) {
                Outcome::Ack => {
                    done.push(q.id);
                    if let Some(u) = self.people.device_owner.get(&peer) {
                        offers.insert(*u);
                    }
                }
                Outcome::Failed => {
                    self.reload_device();
                    break;
                }
                Outcome::Wait => waiting = true,
                Outcome::Keep => {}
            }
        }
        if let Err(e) = self.store.transaction(|tx| tx.release_quarantined(&done)) {
            tracing::warn!("releasing quarantined mail failed: {e}");
        }
        self.owe_delivered(receipts);
        self.ask_resend();
        // Whoever wrote first gets a grant, so what follows is not an introduction.
        for user in offers {
            self.offer_grant(&user);
        }
        if waiting || (rows.len() == QUARANTINE_REPLAY_BATCH && done.len() == rows.len()) {
            self.inbox.quarantine_due = true;
        }
    }
}
