//! Store batches the engine opens around several changes at once (a page of mail, a burst of
//! texts to send): every change still applies all or nothing, but they reach the disk with
//! one sync. Nothing that depends on them being durable leaves before the batch commits:
//! events wait here, lanes asked for wait (`start_lane` does not start inside a batch) and
//! start once it commits, and the owner answers and acknowledges only then.

use std::sync::PoisonError;

use super::Engine;
use crate::error::NodeError;

impl Engine {
    /// Opens a store batch, holding events until [`Engine::close_batch`]. Returns whether it
    /// is open (if not, the caller stores change by change, as without a batch).
    pub(crate) fn open_batch(&mut self) -> bool {
        if let Err(e) = self.store.begin_batch() {
            tracing::warn!("cannot open a store batch, storing one by one: {e}");
            return false;
        }
        *self.held_events() = Some(Vec::new());
        true
    }

    /// Commits the open batch. Then the events held meanwhile are sent and the lanes asked
    /// for start. If it cannot commit, nothing of it was stored: the events are dropped, no
    /// lane is started for it, and the conversation counters and the contacts with texts
    /// waiting for a session are read again from the store.
    pub(crate) fn close_batch(&mut self) -> Result<(), NodeError> {
        let held = self.held_events().take().unwrap_or_default();
        let kicked = std::mem::take(&mut self.outbox.kicked);
        match self.store.end_batch() {
            Ok(()) => {
                for ev in held {
                    let _ = self.events.send(ev);
                }
                self.kick_lanes(kicked.iter().map(|(d, u)| (d.as_str(), u.as_str())));
                Ok(())
            }
            Err(e) => {
                self.counters.lamport.clear();
                self.counters.seq.clear();
                // Contacts added or removed meanwhile may not match the store any more.
                self.outbox.awaiting = None;
                Err(e.into())
            }
        }
    }

    /// The events held while a batch is open (`None`: none is).
    pub(crate) fn held_events(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<Vec<crate::types::Event>>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
