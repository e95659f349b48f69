//! Tern's end-to-end test support and the `tern-bench` benchmark harness.
//!
//! Benchmarks live in [`mod@bench`], one module per suite; each figure is reported next to a
//! baseline measured in the same run, as a ratio.
#![deny(missing_docs)]

pub mod bench;
pub mod sim;
pub mod support;
