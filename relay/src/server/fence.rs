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

use std::sync::{Arc, Mutex, PoisonError};

/// Refused deposit numbers a stream remembers, counted back from the newest refused: far
/// more than a sender keeps in flight (a node keeps at most 64 on a stream), and a sender
/// names only a deposit it has no answer to yet. One bit each, so a stream's fence is a
/// fixed 128 bytes whatever its peer sends.
const SPAN: u64 = 1024;

/// The refused deposits of one stream among the `SPAN` numbers up to the newest refused.
#[derive(Debug, Default)]
pub struct Fence(Mutex<Ring>);

/// Bit `n % SPAN` of `bits` says whether deposit `n` was refused, for `n` in
/// `base .. base + SPAN`.
#[derive(Debug, Default)]
struct Ring {
    base: u64,
    bits: [u64; (SPAN / 64) as usize],
}

impl Ring {
    fn slot(n: u64) -> (usize, u64) {
        (((n % SPAN) / 64) as usize, 1 << (n % 64))
    }

    fn refuse(&mut self, seq: u64) {
        if seq < self.base {
            return;
        }
        if seq >= self.base + SPAN {
            // Forget the numbers that leave the span.
            let base = seq + 1 - SPAN;
            if base - self.base >= SPAN {
                self.bits = Default::default();
            } else {
                for n in self.base..base {
                    let (word, bit) = Self::slot(n);
                    self.bits[word] &= !bit;
                }
            }
            self.base = base;
        }
        let (word, bit) = Self::slot(seq);
        self.bits[word] |= bit;
    }

    fn refused(&self, seq: u64) -> bool {
        let (word, bit) = Self::slot(seq);
        (self.base..self.base + SPAN).contains(&seq) && self.bits[word] & bit != 0
    }
}

impl Fence {
    fn refuse(&self, seq: u64) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refuse(seq);
    }

    fn refused(&self, seq: u64) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refused(seq)
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
        let at = |seq, follows| Fenced::new(fence.clone(), seq, follows);
        at(0, None).refused();
        at(5, None).refused();
        at(SPAN, None).refused();
        assert!(!at(SPAN + 1, Some(0)).blocked(), "0 left the span");
        assert!(at(SPAN + 2, Some(5)).blocked(), "5 is still in it");
        at(10 * SPAN, None).refused();
        assert!(
            !at(10 * SPAN + 3, Some(SPAN)).blocked(),
            "a jump forgets all"
        );
        assert!(at(10 * SPAN + 4, Some(10 * SPAN)).blocked());
        assert!(
            !at(10 * SPAN + 5, Some(10 * SPAN + 1)).blocked(),
            "never refused"
        );
    }
}
