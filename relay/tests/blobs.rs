//! Blob tests against the real relay (filled in below).

mod support;
