//! Introductions refused as `IntroFull`, remembered for a moment so that a stranger who keeps
//! depositing into a mailbox whose introductions share (or its own part of it) is full is
//! refused from memory, without a trip to the storage writer each time.
//!
//! A share only empties when its owner acknowledges mail, when mail expires, or when grants
//! change; the owner's acknowledgements and grant changes forget what is remembered for its
//! mailbox, and an expiry sweep forgets everything. What is left can only be stale for
//! [`REMEMBER`]: a deposit refused then gets `IntroFull` a moment after room was made, and is
//! tried again later like any other refused introduction.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use libp2p::PeerId;

/// How long a refusal is remembered.
pub const REMEMBER: Duration = Duration::from_secs(1);

/// Most (mailbox, sender) pairs remembered; past it everything is forgotten (it only costs
/// storage trips).
pub const MAX_REMEMBERED: usize = 65_536;

/// Refused introductions: by mailbox owner, the senders refused and until when.
#[derive(Debug, Default)]
pub struct Memory {
    by_owner: HashMap<PeerId, HashMap<PeerId, Instant>>,
    len: usize,
}

impl Memory {
    /// Whether an introduction from `sender` to `owner` was refused less than [`REMEMBER`] ago.
    pub fn full(&self, owner: &PeerId, sender: &PeerId, now: Instant) -> bool {
        self.by_owner
            .get(owner)
            .and_then(|s| s.get(sender))
            .is_some_and(|until| *until > now)
    }

    /// Remembers that an introduction from `sender` to `owner` was refused as `IntroFull`.
    pub fn note(&mut self, owner: PeerId, sender: PeerId, now: Instant) {
        if self.len >= MAX_REMEMBERED {
            self.clear();
        }
        if self
            .by_owner
            .entry(owner)
            .or_default()
            .insert(sender, now + REMEMBER)
            .is_none()
        {
            self.len += 1;
        }
    }

    /// Forgets `owner`'s mailbox (it acknowledged mail or changed its grants).
    pub fn forget_owner(&mut self, owner: &PeerId) {
        if let Some(s) = self.by_owner.remove(owner) {
            self.len -= s.len();
        }
    }

    /// Forgets everything (mail expired).
    pub fn clear(&mut self) {
        self.by_owner.clear();
        self.len = 0;
    }

    /// Forgets what is no longer remembered.
    pub fn prune(&mut self, now: Instant) {
        self.by_owner.retain(|_, s| {
            s.retain(|_, until| *until > now);
            !s.is_empty()
        });
        self.len = self.by_owner.values().map(HashMap::len).sum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_remembered_briefly_and_forgotten_when_the_owner_makes_room() {
        let t0 = Instant::now();
        let (owner, other, s1, s2) = (
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
            PeerId::random(),
        );
        let mut m = Memory::default();
        m.note(owner, s1, t0);
        m.note(other, s1, t0);
        assert!(m.full(&owner, &s1, t0));
        assert!(!m.full(&owner, &s2, t0), "per sender");
        assert!(!m.full(&owner, &s1, t0 + REMEMBER), "only for a moment");
        m.forget_owner(&owner);
        assert!(!m.full(&owner, &s1, t0));
        assert!(m.full(&other, &s1, t0));
        m.prune(t0 + REMEMBER);
        assert_eq!(m.len, 0);
        m.note(owner, s2, t0);
        m.clear();
        assert!(!m.full(&owner, &s2, t0));
    }
}
