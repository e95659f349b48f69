//! Tern relay: mailboxes, directory, presence, push and circuit relay.
//!
//! Not built yet: this crate is a placeholder in the workspace layout. Nothing here works.
