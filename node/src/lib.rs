//! Tern's device engine.
//!
//! Not built yet: this crate is a placeholder in the workspace layout. Nothing here works.
