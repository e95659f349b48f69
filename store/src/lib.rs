//! Tern's device store: the encrypted SQLite database that holds everything a device keeps.
//!
//! Not built yet: this crate is a placeholder in the workspace layout. Nothing here works.
