//! Tern's device store: the encrypted SQLite database that holds everything a device keeps —
//! its keys (sealed), contacts, pairwise and group sessions, the replay ledger, conversations,
//! messages, the outbox, media metadata, and a full-text index over message text.
//!
//! - One file, encrypted with SQLCipher (rusqlite's bundled build). The key comes from a
//!   passphrase (Argon2id) or a 0600 keyfile: see [`Unlock`] and `docs/store.md`.
//! - The schema is migrated forward on open ([`SCHEMA_VERSION`]); a file from a newer Tern, a
//!   foreign file, a wrong key, a full disk and a locked database are typed errors.
//! - Every change runs in a transaction ([`Store::transaction`]). The two steps messaging
//!   depends on — [`Tx::record_incoming`] and [`Tx::record_outgoing`] — write the message and
//!   the crypto state it moved together, so a crash can neither lose a message nor make a
//!   message key be used twice.
//! - The crypto layer sees only small traits ([`SessionStore`], [`SenderKeyStore`],
//!   [`ReplayLedger`], which is tern-crypto's own trait), implemented by [`Tx`] and, for unit
//!   tests, `MemoryStore` (feature `memory`).

#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

mod client_ids;
pub mod consts;
mod conversations;
mod error;
mod grants;
mod group_state;
mod groups;
mod history_owed;
mod identity;
mod key;
#[cfg(any(test, feature = "memory"))]
mod memory;
mod messages;
mod outbox;
mod outbox_relays;
mod record;
mod rekey;
mod resync;
mod schema;
mod search;
mod sessions;
mod store;
mod transfers;
mod types;

pub use error::{Fault, FaultKind, KeyError, OpenError, ReadError, SearchError, WriteError};
pub use grants::Quarantined;
pub use group_state::{OwedGroupMessage, OwedPosition, SentKey, Stashed};
pub use groups::Member;
pub use history_owed::HistoryOwed;
pub use identity::{Contact, ContactSaved, OwnDevice, OwnIdentity};
pub use key::{KdfParams, StorageKey, Unlock};
#[cfg(any(test, feature = "memory"))]
pub use memory::MemoryStore;
pub use outbox::LaneRow;
pub use rekey::RekeyError;
pub use resync::{OwedListAnswer, OwedResync};
pub use schema::SCHEMA_VERSION;
pub use sessions::{
    CryptoUpdate, InboundGroupSession, OutboundGroupSession, PairwiseSession, ReplayLedger,
    SenderKeyStore, SessionStore,
};
pub use store::{Options, Store, Tx};
pub use transfers::{Direction, Transfer, TransferState};
pub use types::{
    Body, ConversationCursor, ConversationId, ConversationKind, ConversationPage,
    ConversationSummary, Delivery, DueReceipt, Inserted, Message, MessageId, OutboxEntry, Page,
    Preview, ReceiptKind, SearchCursor, SearchHit, SearchResults, SnippetPart, Status,
};
