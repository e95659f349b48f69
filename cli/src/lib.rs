//! The `tern` command line.
//!
//! Not built yet: the `tern` binary arrives with the node. Nothing here works.
