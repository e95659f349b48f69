//! Schema migrations: versioned, forward-only, each step in its own transaction.
//!
//! The schema version is `PRAGMA user_version` (0 = empty file). Step `i` in [`MIGRATIONS`]
//! takes the file from version `i` to `i + 1`, and sets the new version in the same
//! transaction, so a crash mid-step leaves the file at the old version, intact. A step once
//! released is never edited: changes go into a new step.

use rusqlite::Connection;

use crate::consts::APPLICATION_ID;
use crate::error::Fault;

/// The schema version this code writes and understands.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// The migration steps, oldest first.
pub(crate) const MIGRATIONS: &[&str] = &[
    V1_CORE,
    V2_SEARCH,
    V3_LEDGER_AND_BLOBS,
    V4_RECEIPTS_DUE,
    V5_GROUPS,
    V6_LANES,
    V7_RESYNC,
    V8_TRANSFERS,
    V9_GRANTS,
    V10_OUTBOX_KINDS,
    V11_OUTBOX_RELAYS,
    V12_AWAITING_INDEX,
    V13_AWAITING_BY_CONVERSATION,
    V14_CLIENT_IDS,
    V15_SENT_KEYS,
];

/// Version 1: keys, contacts, sessions, groups, conversations, messages, outbox.
const V1_CORE: &str = r#"
CREATE TABLE own_identity (
    singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
    user_id       TEXT NOT NULL,
    identity_key  BLOB NOT NULL,            -- sealed by tern-crypto, opaque here
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE own_device (
    singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
    device_id     TEXT NOT NULL,
    device_key    BLOB NOT NULL,            -- sealed libp2p key
    account       BLOB NOT NULL,            -- vodozemac account pickle
    certificate   BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
);
CREATE TABLE own_device_list (
    singleton     INTEGER PRIMARY KEY CHECK (singleton = 1),
    version       INTEGER NOT NULL,
    signed        BLOB NOT NULL
);
CREATE TABLE contacts (
    user_id             TEXT PRIMARY KEY,
    display_name        TEXT NOT NULL,
    verified            INTEGER NOT NULL DEFAULT 0,
    identity_key        BLOB NOT NULL,
    device_list         BLOB,
    device_list_version INTEGER NOT NULL DEFAULT 0,
    added_at_ms         INTEGER NOT NULL,
    updated_at_ms       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE contact_relays (
    user_id  TEXT NOT NULL REFERENCES contacts(user_id) ON DELETE CASCADE,
    address  TEXT NOT NULL,
    PRIMARY KEY (user_id, address)
) WITHOUT ROWID;
CREATE TABLE sessions (
    peer_device   TEXT NOT NULL,
    session_id    TEXT NOT NULL,
    pickle        BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    used_at_ms    INTEGER NOT NULL,
    current       INTEGER NOT NULL,
    PRIMARY KEY (peer_device, session_id)
);
CREATE UNIQUE INDEX sessions_one_current ON sessions(peer_device) WHERE current = 1;
CREATE TABLE groups (
    group_id      TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE group_members (
    group_id    TEXT NOT NULL REFERENCES groups(group_id) ON DELETE CASCADE,
    user_id     TEXT NOT NULL,
    role        INTEGER NOT NULL,
    added_at_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE TABLE outbound_group_sessions (
    group_id      TEXT PRIMARY KEY,
    session_id    TEXT NOT NULL,
    pickle        BLOB NOT NULL,
    message_count INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE inbound_group_sessions (
    session_id     TEXT PRIMARY KEY,
    group_id       TEXT NOT NULL,
    sender_user    TEXT NOT NULL,
    sender_device  TEXT NOT NULL,
    pickle         BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL
);
CREATE INDEX inbound_group_sessions_group ON inbound_group_sessions(group_id);
CREATE TABLE conversations (
    rowid            INTEGER PRIMARY KEY,
    conversation_id  TEXT NOT NULL UNIQUE,
    kind             INTEGER NOT NULL,
    title            TEXT,
    last_message     INTEGER,              -- messages.rowid of the newest in display order
    last_activity_ms INTEGER NOT NULL,
    unread_count     INTEGER NOT NULL DEFAULT 0,
    created_at_ms    INTEGER NOT NULL
);
CREATE INDEX conversations_activity ON conversations(last_activity_ms, rowid);
CREATE TABLE messages (
    rowid          INTEGER PRIMARY KEY,
    id             BLOB NOT NULL UNIQUE,
    conversation   INTEGER NOT NULL REFERENCES conversations(rowid),
    sender_user    TEXT NOT NULL,
    sender_device  TEXT NOT NULL,
    lamport        INTEGER NOT NULL,
    seq            INTEGER NOT NULL,
    sent_at_ms     INTEGER NOT NULL,
    received_at_ms INTEGER NOT NULL,
    own            INTEGER NOT NULL,
    status         INTEGER NOT NULL,
    body_kind      INTEGER NOT NULL,
    body_text      TEXT,
    body_data      BLOB,
    edited_at_ms   INTEGER
);
-- The display order, with the id as the last tie-breaker so keyset paging is total.
CREATE INDEX messages_order ON messages(conversation, lamport, sender_user, sender_device, seq, id);
CREATE TABLE outbox (
    message          INTEGER NOT NULL REFERENCES messages(rowid) ON DELETE CASCADE,
    recipient_device TEXT NOT NULL,
    recipient_user   TEXT NOT NULL,
    payload          BLOB NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (message, recipient_device)
);
CREATE INDEX outbox_due ON outbox(next_attempt_ms);
"#;

/// Version 2: full-text search (FTS5, trigram tokenizer) over message text, kept in step by
/// triggers, and filled from the messages already stored.
const V2_SEARCH: &str = r#"
CREATE VIRTUAL TABLE message_search USING fts5(
    body_text,
    content = 'messages',
    content_rowid = 'rowid',
    tokenize = 'trigram remove_diacritics 1'
);
CREATE TRIGGER message_search_insert AFTER INSERT ON messages
WHEN new.body_text IS NOT NULL BEGIN
    INSERT INTO message_search(rowid, body_text) VALUES (new.rowid, new.body_text);
END;
CREATE TRIGGER message_search_delete AFTER DELETE ON messages
WHEN old.body_text IS NOT NULL BEGIN
    INSERT INTO message_search(message_search, rowid, body_text) VALUES ('delete', old.rowid, old.body_text);
END;
-- One trigger with the two statements in order: SQLite fires separate triggers newest first.
CREATE TRIGGER message_search_update AFTER UPDATE OF body_text ON messages BEGIN
    INSERT INTO message_search(message_search, rowid, body_text)
        SELECT 'delete', old.rowid, old.body_text WHERE old.body_text IS NOT NULL;
    INSERT INTO message_search(rowid, body_text)
        SELECT new.rowid, new.body_text WHERE new.body_text IS NOT NULL;
END;
INSERT INTO message_search(message_search) VALUES ('rebuild');
"#;

/// Version 3: the Megolm replay ledger and media blob metadata.
const V3_LEDGER_AND_BLOBS: &str = r#"
CREATE TABLE replay_ledger (
    session_id    TEXT NOT NULL,
    message_index INTEGER NOT NULL,
    PRIMARY KEY (session_id, message_index)
) WITHOUT ROWID;
CREATE TABLE blobs (
    blob_id       TEXT PRIMARY KEY,
    message       BLOB,                  -- messages.id that references it, if any
    mime          TEXT NOT NULL,
    size          INTEGER NOT NULL,
    chunk_size    INTEGER NOT NULL,
    file_key      BLOB NOT NULL,         -- the media key; the database encryption seals it
    digest        BLOB NOT NULL,
    local_path    TEXT,
    thumbnail     BLOB,
    state         INTEGER NOT NULL,
    bytes_done    INTEGER NOT NULL DEFAULT 0,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX blobs_message ON blobs(message);
"#;

/// Version 4: receipts owed to senders, kept until they are delivered, so a crash of the
/// receiver between storing a message and delivering its receipt does not lose the receipt.
const V4_RECEIPTS_DUE: &str = r#"
CREATE TABLE receipts_due (
    message_id     BLOB NOT NULL,        -- messages.id the receipt is about
    kind           INTEGER NOT NULL,     -- 0 delivered, 1 read
    recipient_user TEXT NOT NULL,        -- the sender of that message, who gets the receipt
    created_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (message_id, kind)
) WITHOUT ROWID;
"#;

/// Version 5: groups as the node runs them. Signed membership operations (the state is
/// derived from them), which sender key this device uses for a group and who has it, group
/// ciphertexts waiting for their key or group, device lists of group members who are not
/// contacts, one shared payload per fanned-out message instead of a copy per device, and
/// group messages owed to members who could not be reached when they were sent.
const V5_GROUPS: &str = r#"
CREATE TABLE group_ops (
    group_id       TEXT NOT NULL,
    hash           BLOB NOT NULL,
    op             BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (group_id, hash)
) WITHOUT ROWID;
CREATE TABLE group_sender_keys (
    group_id   TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    epoch      INTEGER NOT NULL          -- the membership version it was made for
) WITHOUT ROWID;
CREATE TABLE group_key_shares (
    session_id TEXT NOT NULL,
    device     TEXT NOT NULL,
    PRIMARY KEY (session_id, device)
) WITHOUT ROWID;
CREATE TABLE group_stash (
    id             INTEGER PRIMARY KEY,
    sender_device  TEXT NOT NULL,
    payload        BLOB NOT NULL,
    received_at_ms INTEGER NOT NULL
);
CREATE INDEX group_stash_sender ON group_stash (sender_device, id);
CREATE TABLE group_peers (
    user_id     TEXT PRIMARY KEY,
    device_list BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE outbox_shared (
    message INTEGER PRIMARY KEY REFERENCES messages(rowid) ON DELETE CASCADE,
    payload BLOB NOT NULL
);
-- Group messages and membership changes owed to a member until they are queued for them: for a
-- message, the sender key as of it (a secret, inside the encrypted database) and its
-- ciphertext; for a membership change, both empty (the operation is the message's body).
CREATE TABLE group_owed (
    message       INTEGER NOT NULL REFERENCES messages(rowid) ON DELETE CASCADE,
    user_id       TEXT NOT NULL,
    distribution  BLOB NOT NULL,
    ciphertext    BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (message, user_id)
);
"#;

/// Version 6: the outbox as ordered lanes, and the ledger of pairwise messages read.
///
/// Rows get an id that only grows and is never reused (`AUTOINCREMENT`; an explicit integer
/// key also survives `VACUUM`, which may renumber implicit rowids). For one recipient device,
/// id order is the order its ciphertexts were encrypted in (each is inserted in the
/// transaction that saves the ratchet state that made it), which is the order they must go
/// on the wire. A row may belong to no message: a receipt or a resend request. The partial
/// index serves the lanes (pairwise rows carry their own payload; fan-out rows share one).
/// `pairwise_seen` keeps the digest of every pairwise message read, so a copy whose key is
/// gone is told from a message that was lost. `messages_sender_seq` serves the per-sender
/// sequence look-ups of hold-back and resend (they scanned the whole conversation).
const V6_LANES: &str = r#"
CREATE TABLE outbox_v6 (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    message          INTEGER REFERENCES messages(rowid) ON DELETE CASCADE,
    recipient_device TEXT NOT NULL,
    recipient_user   TEXT NOT NULL,
    payload          BLOB NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms  INTEGER NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    UNIQUE (message, recipient_device)
);
INSERT INTO outbox_v6 (message, recipient_device, recipient_user, payload, attempts, next_attempt_ms, created_at_ms)
    SELECT message, recipient_device, recipient_user, payload, attempts, next_attempt_ms, created_at_ms
    FROM outbox ORDER BY rowid;
DROP TABLE outbox;
ALTER TABLE outbox_v6 RENAME TO outbox;
CREATE INDEX outbox_due ON outbox(next_attempt_ms);
CREATE INDEX outbox_lane ON outbox(recipient_device, id) WHERE length(payload) > 0;
CREATE TABLE pairwise_seen (
    peer_device TEXT NOT NULL,
    digest      BLOB NOT NULL,
    seen_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (peer_device, digest)
) WITHOUT ROWID;
CREATE INDEX pairwise_seen_age ON pairwise_seen(seen_at_ms);
CREATE INDEX messages_sender_seq ON messages(conversation, sender_device, seq);
"#;

/// Version 7: own messages owed to devices that a device-list change showed were left out
/// (a device of their user reported them encrypted for an older list; see `resync.rs`), and
/// the whole history owed to a newly linked device (`history_owed.rs`), and the answers this
/// device owes to senders that encrypted a text for an older list of its own user
/// (`list_answers_due`, see `resync.rs`).
const V7_RESYNC: &str = r#"
CREATE TABLE resync_due (
    message_id  BLOB NOT NULL,
    device      TEXT NOT NULL,
    user        TEXT NOT NULL,
    owed_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (message_id, device)
);
CREATE TABLE list_answers_due (
    sender_device TEXT NOT NULL,
    message_id    BLOB NOT NULL,
    sender_user   TEXT NOT NULL,
    seen_entries  INTEGER NOT NULL,
    owed_at_ms    INTEGER NOT NULL,
    PRIMARY KEY (sender_device, message_id)
);
CREATE TABLE history_owed (
    device      TEXT PRIMARY KEY,
    after_row   INTEGER NOT NULL,
    last_row    INTEGER NOT NULL,
    sent        INTEGER NOT NULL,
    total       INTEGER NOT NULL,
    owed_at_ms  INTEGER NOT NULL
);
"#;

/// Version 9: deposit grants held from other devices and the revocation epochs of the
/// grants this device issued, and mail from unknown senders kept apart (`grants.rs`).
const V9_GRANTS: &str = r#"
CREATE TABLE grants_held (
    device        TEXT PRIMARY KEY,
    grant         BLOB NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE grant_epochs (
    user   TEXT PRIMARY KEY,
    epoch  INTEGER NOT NULL
);
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY,
    sender      TEXT NOT NULL,
    kept_at_ms  INTEGER NOT NULL,
    payload     BLOB NOT NULL
);
CREATE INDEX quarantine_sender ON quarantine(sender, id);
"#;

/// Version 8: media transfers, uploads and downloads of encrypted files (`transfers.rs`), each
/// resumed after a restart from what it recorded. The never-used `blobs` table of version 3
/// goes: a transfer row holds what it described.
const V8_TRANSFERS: &str = r#"
DROP INDEX blobs_message;
DROP TABLE blobs;
CREATE TABLE transfers (
    id             BLOB PRIMARY KEY,
    direction      INTEGER NOT NULL,
    state          INTEGER NOT NULL,
    data           BLOB NOT NULL,
    bytes_done     INTEGER NOT NULL,
    bytes_total    INTEGER NOT NULL,
    error          TEXT,
    created_at_ms  INTEGER NOT NULL,
    updated_at_ms  INTEGER NOT NULL
);
"#;

/// Version 10: every outbox row says what it is (`kind`, [`crate::outbox::RowKind`]): a
/// pairwise row of its recipient device's lane (0) or a row of a group fan-out whose payload
/// is the message's shared one (1). Until now a fan-out row was told by its empty payload;
/// the rows already queued get their kind from that, once. The lane index follows.
const V10_OUTBOX_KINDS: &str = r#"
ALTER TABLE outbox ADD COLUMN kind INTEGER NOT NULL DEFAULT 0;
UPDATE outbox SET kind = 1 WHERE length(payload) = 0;
DROP INDEX outbox_lane;
CREATE INDEX outbox_lane ON outbox(recipient_device, id) WHERE kind = 0;
"#;

/// Version 11: delivery tracked per relay ([`crate::outbox_relays`]). A recipient device may
/// keep mailboxes at several relays; each outbox row goes to every one of them, and this table
/// says, per row and relay, whether that relay took it and when it is tried there next. A row
/// with no entry for a relay is untried there (due when the row is). Entries go with their
/// row (the trigger: an outbox row is deleted in several places).
const V11_OUTBOX_RELAYS: &str = r#"
CREATE TABLE outbox_relays (
    row             INTEGER NOT NULL,
    relay           TEXT NOT NULL,
    taken           INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (row, relay)
) WITHOUT ROWID;
CREATE TRIGGER outbox_relays_follow AFTER DELETE ON outbox
BEGIN
    DELETE FROM outbox_relays WHERE row = OLD.id;
END;
"#;

/// Version 12: the partial index `messages_awaiting` over this user's own pending messages,
/// for `awaiting_encryption`, which every send asks (are texts to this conversation waiting
/// for a session?) and which read the whole `messages` table each time before. It holds only
/// own messages not yet taken by a relay, so it stays as small as the outbox. Its condition
/// is matched by the literals of the query (`own = 1 AND status = 0`, 0 being `Pending`).
const V12_AWAITING_INDEX: &str = r#"
CREATE INDEX messages_awaiting ON messages(sender_device, lamport, seq) WHERE own = 1 AND status = 0;
"#;

/// Version 13: `messages_awaiting` keyed by conversation too. Which texts wait for a session
/// is asked per conversation (oldest first, a page at a time), so one contact's long queue
/// of waiting texts neither hides another's nor is walked to find it.
const V13_AWAITING_BY_CONVERSATION: &str = r#"
DROP INDEX messages_awaiting;
CREATE INDEX messages_awaiting ON messages(sender_device, conversation, lamport, seq) WHERE own = 1 AND status = 0;
"#;

/// Version 14: the keys clients chose for the texts they sent (`crate::client_ids`), so a
/// text sent again under its key is not sent twice.
const V14_CLIENT_IDS: &str = r#"
CREATE TABLE client_ids (
    client_id     TEXT PRIMARY KEY,
    message_id    BLOB NOT NULL,
    created_at_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX client_ids_created ON client_ids(created_at_ms);
"#;

/// Version 15: the sender keys this device sent, as of the message each went with, which of
/// them each member device was given, and which key each own group message went under
/// (`crate::group_state`): a device that lost a key is sent it again when it asks, and a
/// group message it lost only if it was given that message's key. And own texts sent but not
/// receipted are found by index (`Store::unreceipted_tail`).
const V15_SENT_KEYS: &str = r#"
CREATE TABLE group_key_sent (
    session_id    TEXT NOT NULL,
    message_id    BLOB NOT NULL,            -- the group message the key went with
    group_id      TEXT NOT NULL,
    distribution  BLOB NOT NULL,            -- the key as of that message (secret)
    ciphertext    BLOB NOT NULL,            -- that message, as the group was sent it
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (session_id, message_id)
) WITHOUT ROWID;
CREATE INDEX group_key_sent_created ON group_key_sent(created_at_ms);
ALTER TABLE group_key_shares ADD COLUMN message_id BLOB;
ALTER TABLE messages ADD COLUMN group_session TEXT; -- own group message: the sender key it went under
CREATE INDEX messages_unreceipted ON messages(conversation, sender_device, seq) WHERE own = 1 AND status = 1;
"#;

/// Reads `PRAGMA user_version`.
pub(crate) fn version(conn: &Connection) -> Result<u32, rusqlite::Error> {
    let v: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    Ok(u32::try_from(v).unwrap_or(u32::MAX))
}

/// Reads `PRAGMA application_id`.
pub(crate) fn application_id(conn: &Connection) -> Result<i32, rusqlite::Error> {
    conn.query_row("PRAGMA application_id", [], |r| r.get(0))
}

/// Number of schema objects in the file (0 for a file nobody has written to).
pub(crate) fn object_count(conn: &Connection) -> Result<i64, rusqlite::Error> {
    conn.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
}

/// A failed step: the version it started from and the error.
#[derive(Debug)]
pub(crate) struct StepFailed {
    pub(crate) from: u32,
    pub(crate) source: Fault,
}

/// Applies the steps from the file's version up to `target`, one transaction each.
pub(crate) fn migrate_to(conn: &mut Connection, target: u32) -> Result<(), StepFailed> {
    let fail = |from| {
        move |e: rusqlite::Error| StepFailed {
            from,
            source: e.into(),
        }
    };
    let mut current = version(conn).map_err(fail(0))?;
    while current < target {
        let Some(step) = MIGRATIONS.get(current as usize) else {
            break;
        };
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(fail(current))?;
        if current == 0 {
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(fail(current))?;
        }
        tx.execute_batch(step).map_err(fail(current))?;
        tx.pragma_update(None, "user_version", current + 1)
            .map_err(fail(current))?;
        tx.commit().map_err(fail(current))?;
        current += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Options, open_connection};
    use crate::{
        ConversationId, MessageId, OpenError, Page, ReplayLedger, StorageKey, Store, Unlock,
    };

    fn key() -> StorageKey {
        let mut k = [9u8; 32];
        StorageKey::from_bytes(&mut k)
    }

    /// A file migrated to `version` only, holding what that version can hold.
    fn file_at(path: &std::path::Path, version: u32) {
        let mut conn = open_connection(path, Unlock::Key(&key()), &Options::default()).unwrap();
        migrate_to(&mut conn, version).unwrap();
        assert_eq!(super::version(&conn).unwrap(), version);
        if version >= 1 {
            conn.execute_batch(
                "INSERT INTO conversations (conversation_id, kind, last_activity_ms, created_at_ms) VALUES ('alice', 0, 5, 1);
                 INSERT INTO messages (id, conversation, sender_user, sender_device, lamport, seq, sent_at_ms,
                     received_at_ms, own, status, body_kind, body_text)
                 VALUES (x'00000000000000000000000000000001', 1, 'alice', 'a1', 1, 1, 1, 2, 0, 5, 0, 'written before search existed'),
                        (x'00000000000000000000000000000002', 1, 'alice', 'a1', 2, 2, 3, 4, 0, 5, 0, 'zweite Nachricht');
                 INSERT INTO sessions (peer_device, session_id, pickle, created_at_ms, used_at_ms, current)
                 VALUES ('a1', 's1', x'0102', 1, 1, 1);
                 INSERT INTO outbox (message, recipient_device, recipient_user, payload, next_attempt_ms, created_at_ms)
                 VALUES (2, 'b1', 'bob', x'0105', 0, 1), (1, 'b1', 'bob', x'0105', 0, 1);",
            )
            .unwrap();
        }
        if version >= 3 {
            conn.execute_batch(
                "INSERT INTO replay_ledger (session_id, message_index) VALUES ('g1', 7);",
            )
            .unwrap();
        }
    }

    #[test]
    fn migrates_from_every_earlier_version() {
        for from in 0..SCHEMA_VERSION {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("tern.db");
            file_at(&path, from);
            let mut store = Store::open(&path, Unlock::Key(&key())).unwrap();
            assert_eq!(
                store.schema_version().unwrap(),
                SCHEMA_VERSION,
                "from {from}"
            );
            let alice = ConversationId("alice".into());
            let history = store.history(&alice, Page::Latest, None).unwrap();
            let expected = if from >= 1 { 2 } else { 0 };
            assert_eq!(history.len(), expected, "from {from}");
            if from >= 1 {
                // The search index was built over messages stored before it existed.
                let hits = store.search("before search", None, None).unwrap().hits;
                assert_eq!(hits.len(), 1, "from {from}");
                assert_eq!(store.search("nachricht", None, None).unwrap().hits.len(), 1);
            }
            // Outbox rows keep their order (the row inserted first stays first in its lane).
            let lane = store.lane("b1", 10).unwrap();
            let ids: Vec<_> = lane.iter().filter_map(|r| r.message).collect();
            let expected: Vec<MessageId> = if from >= 1 {
                vec![
                    MessageId([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
                    MessageId([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
                ]
            } else {
                Vec::new()
            };
            assert_eq!(ids, expected, "from {from}");
            let replayed = store.transaction(|tx| tx.is_replay("g1", 7)).unwrap();
            assert_eq!(replayed, from >= 3, "from {from}");
            // Receipts can be owed after the last step, whatever the file started at.
            let owed = [MessageId([1; 16])];
            store
                .transaction(|tx| tx.owe_receipts("alice", crate::ReceiptKind::Read, &owed, 9))
                .unwrap();
            assert_eq!(store.due_receipts(10).unwrap().len(), 1, "from {from}");
            drop(store);
            // Opening again is a no-op.
            let store = Store::open(&path, Unlock::Key(&key())).unwrap();
            assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        }
    }

    #[test]
    fn version_10_gives_the_rows_already_queued_their_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.db");
        file_at(&path, 9);
        // A fan-out row as version 9 wrote it: an empty payload, the ciphertext shared.
        let conn = open_connection(&path, Unlock::Key(&key()), &Options::default()).unwrap();
        conn.execute_batch(
            "INSERT INTO outbox_shared (message, payload) VALUES (1, x'0606');
             INSERT INTO outbox (message, recipient_device, recipient_user, payload, next_attempt_ms, created_at_ms)
             VALUES (1, 'b2', 'bob', x'', 0, 1);",
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&path, Unlock::Key(&key())).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let kinds: Vec<(String, i64)> = store
            .conn
            .prepare("SELECT recipient_device, kind FROM outbox ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let (pairwise, fanout) = (
            crate::outbox::RowKind::Pairwise.code(),
            crate::outbox::RowKind::Fanout.code(),
        );
        assert_eq!(
            kinds,
            [
                ("b1".to_owned(), pairwise),
                ("b1".to_owned(), pairwise),
                ("b2".to_owned(), fanout),
            ]
        );
        assert_eq!(store.lane("b1", 10).unwrap().len(), 2);
        assert!(store.lane("b2", 10).unwrap().is_empty());
        let fan = store.due_fanout(i64::MAX, 10).unwrap();
        assert_eq!(fan.len(), 1);
        assert_eq!(fan[0].delivery.payload, [6, 6]);
    }

    #[test]
    fn version_11_leaves_queued_rows_untried_at_every_relay() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.db");
        file_at(&path, 10);
        // A row that already failed twice before its device had several relays.
        let conn = open_connection(&path, Unlock::Key(&key()), &Options::default()).unwrap();
        conn.execute_batch(
            "UPDATE outbox SET attempts = 2, next_attempt_ms = 40 WHERE message = 2;",
        )
        .unwrap();
        drop(conn);
        let mut store = Store::open(&path, Unlock::Key(&key())).unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        for relay in ["r1", "r2"] {
            let lane = store.lane_at("b1", relay, 10).unwrap();
            assert_eq!(lane.len(), 2, "{relay}");
            assert_eq!((lane[0].attempts, lane[0].next_attempt_ms), (2, 40));
            assert_eq!((lane[1].attempts, lane[1].next_attempt_ms), (0, 0));
        }
        let both = ["r1".to_owned(), "r2".to_owned()];
        let first = store.lane("b1", 1).unwrap()[0].row;
        store
            .transaction(|tx| tx.take_rows_at(&[first], "r1", &both))
            .unwrap();
        assert_eq!(store.lane_at("b1", "r1", 10).unwrap().len(), 1);
        assert_eq!(store.lane_at("b1", "r2", 10).unwrap().len(), 2);
    }

    #[test]
    fn a_failed_step_leaves_the_file_at_the_previous_version() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tern.db");
        file_at(&path, 1);
        // Something in the way of step 2 (as a bug or a hand edit would leave it).
        let conn = open_connection(&path, Unlock::Key(&key()), &Options::default()).unwrap();
        conn.execute_batch("CREATE TABLE message_search (x);")
            .unwrap();
        drop(conn);
        let err = Store::open(&path, Unlock::Key(&key())).unwrap_err();
        assert!(
            matches!(err, OpenError::Migrate { from: 1, to: 2, .. }),
            "{err:?}"
        );
        let conn = open_connection(&path, Unlock::Key(&key()), &Options::default()).unwrap();
        assert_eq!(super::version(&conn).unwrap(), 1);
        let n: i64 = conn
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2, "nothing lost");
        let triggers: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE type = 'trigger'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(triggers, 0, "no part of the failed step stayed");
    }
}
