//! The fence of a deposit stream: which of its deposits were refused, so that a later
//! deposit that names one of them (`follows`) is refused too instead of overtaking it. A
//! sender with several deposits for one device in flight keeps their order this way when
//! one in the middle is refused (a rate limit, a full share): nothing after it is stored
//! until it is.
//!
//! The event loop marks the refusals it makes itself (limits, grants) and refuses a fenced
//! deposit before it costs anything; the storage writer, which applies a stream's deposits
//! in the stream's order, marks the refusals of quotas and shares and refuses what follows
//! them.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex, PoisonError},
};

/// Refused deposit numbers a stream remembers, counted back from the newest: far more
/// than can be in flight (the relay reads at most `deposit_window` deposits ahead of its
/// answers, and a sender names only a deposit it has no answer to yet).
const SPAN: u64 = 4096;

/// The refused deposits of one stream, by number.
#[derive(Debug, Default)]
pub struct Fence(Mutex<BTreeSet<u64>>);

impl Fence {
    fn refuse(&self, seq: u64) {
        let mut refused = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        refused.insert(seq);
        let floor = seq.saturating_sub(SPAN);
        while refused.first().is_some_and(|f| *f < floor) {
            refused.pop_first();
        }
    }

    fn refused(&self, seq: u64) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&seq)
    }
}

/// One deposit of a stream, with its number and the deposit it follows.
#[derive(Debug, Clone)]
pub struct Fenced {
    fence: Arc<Fence>,
    seq: u64,
    follows: Option<u64>,
}

impl Fenced {
    /// Deposit `seq` of the stream whose fence is `fence`, following `follows`.
    pub(crate) fn new(fence: Arc<Fence>, seq: u64, follows: Option<u64>) -> Self {
        Self {
            fence,
            seq,
            follows,
        }
    }

    /// Whether it names a deposit that is not an earlier one of its stream.
    pub(crate) fn malformed(&self) -> bool {
        self.follows.is_some_and(|f| f >= self.seq)
    }

    /// Whether the deposit it follows was refused: it is refused too (and marked so).
    pub(crate) fn blocked(&self) -> bool {
        let blocked = self.follows.is_some_and(|f| self.fence.refused(f));
        if blocked {
            self.refused();
        }
        blocked
    }

    /// Marks it refused (for at least one of its recipients).
    pub(crate) fn refused(&self) {
        self.fence.refuse(self.seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_fences_the_chain_after_it_and_nothing_else() {
        let fence = Arc::new(Fence::default());
        let at = |seq, follows| Fenced::new(fence.clone(), seq, follows);
        assert!(!at(0, None).blocked());
        at(1, Some(0)).refused();
        assert!(at(2, Some(1)).blocked(), "follows a refused one");
        assert!(at(3, Some(2)).blocked(), "follows one refused for that");
        assert!(!at(4, Some(0)).blocked(), "follows a stored one");
        assert!(!at(5, None).blocked(), "follows none");
        assert!(at(6, Some(6)).malformed() && at(6, Some(7)).malformed());
        assert!(!at(6, Some(5)).malformed());
    }

    #[test]
    fn only_a_span_of_refusals_is_remembered() {
        let fence = Arc::new(Fence::default());
        Fenced::new(fence.clone(), 0, None).refused();
        Fenced::new(fence.clone(), SPAN + 1, None).refused();
        assert_eq!(fence.0.lock().unwrap().len(), 1);
    }
}
