//! Helpers shared by the integration tests: real encrypted files in a temporary directory.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use tern_store::{
    Body, ConversationId, ConversationKind, Message, MessageId, Options, Status, StorageKey, Store,
    Unlock,
};

/// The raw key every test store uses, so a test can also open the file with plain rusqlite.
pub const KEY_BYTES: [u8; 32] = [0x42; 32];

pub fn key() -> StorageKey {
    let mut k = KEY_BYTES;
    StorageKey::from_bytes(&mut k)
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
}

pub fn env() -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tern.db");
    Env { dir, path }
}

pub fn open(path: &Path) -> Store {
    Store::open(path, Unlock::Key(&key())).expect("open store")
}

pub fn open_with(path: &Path, options: &Options) -> Store {
    Store::open_with(path, Unlock::Key(&key()), options).expect("open store")
}

/// A plain rusqlite connection keyed like the store, to reach under the API.
pub fn raw_connection(path: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(path).expect("open raw");
    conn.execute_batch("PRAGMA cipher_log_level = NONE;")
        .expect("log level");
    let hex = tern_crypto::hex::encode(&KEY_BYTES);
    conn.pragma_update(None, "key", format!("x'{hex}'"))
        .expect("key");
    conn
}

pub fn id(n: u64) -> MessageId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&n.to_be_bytes());
    b[0] = 0xa5;
    MessageId(b)
}

pub fn conv(name: &str) -> ConversationId {
    ConversationId(name.to_owned())
}

/// Creates a conversation.
pub fn ensure(store: &mut Store, name: &str, kind: ConversationKind) {
    store
        .transaction(|tx| tx.ensure_conversation(&conv(name), kind, Some(name), 0))
        .expect("ensure conversation");
}

/// An incoming text message from `alice`'s device `a1`.
pub fn incoming(n: u64, conversation: &str, lamport: u64, text: &str) -> Message {
    Message {
        id: id(n),
        conversation: conv(conversation),
        sender_user: "alice".into(),
        sender_device: "a1".into(),
        lamport,
        seq: n,
        sent_at_ms: 1_000 + n as i64,
        received_at_ms: 2_000 + n as i64,
        own: false,
        status: Status::Received,
        body: Body::Text(text.to_owned()),
        edited_at_ms: None,
    }
}

/// An own outgoing text message from device `me1`.
pub fn outgoing(n: u64, conversation: &str, lamport: u64, text: &str) -> Message {
    Message {
        sender_user: "me".into(),
        sender_device: "me1".into(),
        own: true,
        status: Status::Pending,
        ..incoming(n, conversation, lamport, text)
    }
}

pub fn ids(messages: &[Message]) -> Vec<MessageId> {
    messages.iter().map(|m| m.id).collect()
}

/// Whether `needle` occurs anywhere in the file at `path` (false if there is no such file).
pub fn file_contains(path: &Path, needle: &[u8]) -> bool {
    match std::fs::read(path) {
        Ok(bytes) => bytes.windows(needle.len()).any(|w| w == needle),
        Err(_) => false,
    }
}
