//! End-to-end tests against the real `tern-relay` binary.
