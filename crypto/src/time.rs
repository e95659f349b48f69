//! Time as the crypto layer sees it: whole seconds since the Unix epoch, passed in by callers.

/// Seconds since the Unix epoch. Callers pass `now` in so tests are deterministic.
pub type UnixSecs = u64;
