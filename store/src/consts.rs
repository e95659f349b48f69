//! Every limit and tunable of the store, in one place.

use std::time::Duration;

/// Length in bytes of a storage key (SQLCipher raw key: 256 bits).
pub const KEY_LEN: usize = 32;

/// Length in bytes of the per-file salt. SQLCipher keeps it in plaintext as the first 16 bytes
/// of the database file, and the passphrase KDF uses the same salt, so no side file is needed.
pub const SALT_LEN: usize = 16;

/// Argon2id costs of passphrase-derived keys: tern-crypto's, shared with identity backups.
/// Changing them makes existing databases unopenable with the new defaults: a change needs a
/// rekey step, never a silent edit.
pub use tern_crypto::consts::{ARGON2_ITERATIONS, ARGON2_LANES, ARGON2_MEMORY_KIB};

/// How long a connection waits for another connection's write lock before reporting "busy".
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite page cache per connection, in KiB. Every page read from outside this cache costs a
/// decryption (AES-256-CBC + HMAC-SHA512), so the cache
/// is larger than SQLite's 2 MiB default.
pub const DEFAULT_CACHE_KIB: u32 = 32 * 1024;

/// How long the key a client sent a text under is remembered (`crate::client_ids`): a text
/// sent again under its key within this time is not sent twice. 30 days.
pub const CLIENT_ID_KEEP_MS: i64 = 30 * 24 * 60 * 60 * 1000;

/// Longest key a client may send a text under, in bytes.
pub const MAX_CLIENT_ID_BYTES: usize = 64;

/// Messages per history page when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 50;

/// Largest history, conversation-list or search page the store hands out in one call.
pub const MAX_PAGE_SIZE: u32 = 500;

/// Search hits per page when the caller does not say.
pub const DEFAULT_SEARCH_PAGE_SIZE: u32 = 20;

/// Longest search query accepted, in bytes.
pub const MAX_SEARCH_QUERY_BYTES: usize = 512;

/// Most whitespace-separated terms in one search query.
pub const MAX_SEARCH_TERMS: usize = 16;

/// Shortest term (in characters) the trigram index can answer; shorter terms fall back to a
/// scan with `LIKE`.
pub const MIN_INDEXED_TERM_CHARS: usize = 3;

/// Tokens in a search snippet. With the trigram tokenizer a token is one character position,
/// so this is about the snippet's length in characters; 64 is FTS5's maximum.
pub const SNIPPET_TOKENS: u32 = 64;

/// Characters of message text kept in a conversation-list preview.
pub const PREVIEW_CHARS: usize = 120;

/// Archived pairwise sessions kept per remote device, beyond the current one.
pub const MAX_ARCHIVED_SESSIONS: u32 = 10;

/// Longest message text accepted, in bytes (the wire format caps frames well below this).
pub const MAX_TEXT_BYTES: usize = 64 * 1024;

/// Longest opaque blob (pickle, sealed key, structured body, outbox payload) accepted, in bytes.
pub const MAX_BLOB_BYTES: usize = 1024 * 1024;

/// Size of a keyfile: magic, version byte, key.
pub const KEYFILE_LEN: usize = KEYFILE_MAGIC.len() + 1 + KEY_LEN;

/// First bytes of a keyfile.
pub const KEYFILE_MAGIC: &[u8; 7] = b"TERNKEY";

/// Keyfile format version written by this code.
pub const KEYFILE_VERSION: u8 = 1;

/// `PRAGMA application_id` of a Tern store ("TERN").
pub const APPLICATION_ID: i32 = 0x5445_524e;

/// SQLCipher's page size: an encrypted file is always a whole number of these.
pub const CIPHER_PAGE_SIZE: u64 = 4096;

/// Times a connection is keyed afresh after SQLCipher fails to key it (a rare, transient
/// failure; see `KEYING` in `store.rs`).
pub const KEYING_ATTEMPTS: u32 = 8;

/// The wait before the second keying attempt; it doubles for each further one, so all
/// attempts together wait at most about 0.6 s.
pub const KEYING_FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(5);

/// WAL pages (4 KiB each: 32 MiB) past which a commit checkpoints by itself; below that the
/// owner checkpoints when idle ([`crate::Store::checkpoint`]).
pub const WAL_AUTOCHECKPOINT_PAGES: i64 = 8_192;
