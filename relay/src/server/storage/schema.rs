//! The database's layout: connection settings, the migrations to each schema version (the
//! fourth lives with what it adds, in `server::registrations`), and what is read back at
//! start-up: the in-memory state of the relay ([`Loaded`]) and the fill level of every
//! mailbox and share.

use std::collections::HashMap;

use libp2p::PeerId;
use rusqlite::Connection;

use super::peer;
use crate::server::quota::{self, Key, Usage};

/// SQLite page size assumed when turning `max_database_bytes` into `max_page_count`.
const PAGE_SIZE: u64 = 4096;

/// Pages of write-ahead log after which a commit checkpoints it (see `init`).
const WAL_CHECKPOINT_PAGES: u32 = 10_000;

/// State loaded at start-up for the in-memory parts of the relay.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Registered push endpoints.
    pub push: Vec<(PeerId, String)>,
    /// Last-seen times (ms since the epoch).
    pub last_seen: Vec<(PeerId, u64)>,
    /// Presence allow-lists: owner → allowed viewers.
    pub allow: Vec<(PeerId, Vec<PeerId>)>,
    /// Deposit grants: owner → registered token hashes, and when it last registered them.
    pub grants: Vec<(PeerId, Vec<[u8; 32]>, u64)>,
}

pub(super) fn init(conn: &Connection, max_database_bytes: u64) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // The commit that takes the write-ahead log past this many pages copies it back into the
    // database, inside the writer's commit: every deposit of that group commit waits for it
    // (under a deposit load the writer spent 11 % of its time there at SQLite's 1,000). The
    // checkpointer thread copies it back long before (`checkpoint.rs`); this is the backstop.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_CHECKPOINT_PAGES)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Every operation runs in a savepoint; keep its sub-journal in memory rather than in a
    // temporary file (it is only needed until the transaction ends).
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    if max_database_bytes > 0 {
        let pages = (max_database_bytes / PAGE_SIZE).max(16);
        conn.query_row(&format!("PRAGMA max_page_count = {pages}"), [], |_| Ok(()))?;
    }
    Ok(())
}

pub(super) fn migrate_v1(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE message (
             id INTEGER PRIMARY KEY,
             sender BLOB NOT NULL,
             created_ms INTEGER NOT NULL,
             expires_ms INTEGER NOT NULL,
             refs INTEGER NOT NULL,
             body BLOB NOT NULL
         );
         CREATE INDEX message_expiry ON message(expires_ms);
         CREATE TABLE mailbox (
             seq INTEGER PRIMARY KEY AUTOINCREMENT,
             owner BLOB NOT NULL,
             message INTEGER NOT NULL,
             size INTEGER NOT NULL,
             expires_ms INTEGER NOT NULL
         );
         CREATE INDEX mailbox_owner ON mailbox(owner, seq);
         CREATE INDEX mailbox_expiry ON mailbox(expires_ms);
         CREATE TABLE push_endpoint (owner BLOB PRIMARY KEY, url TEXT NOT NULL);
         CREATE TABLE last_seen (peer BLOB PRIMARY KEY, ms INTEGER NOT NULL);
         CREATE TABLE presence_allow (
             owner BLOB NOT NULL,
             viewer BLOB NOT NULL,
             PRIMARY KEY (owner, viewer)
         ) WITHOUT ROWID;
         PRAGMA user_version = 1;
         COMMIT;",
    )
}

/// Version 2 adds the directory: signed device lists, prekey bundles (without their
/// one-time keys) and the one-time keys, one row each so a claim removes exactly one.
pub(super) fn migrate_v2(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE device_list (user BLOB PRIMARY KEY, body BLOB NOT NULL);
         CREATE TABLE prekey_bundle (device BLOB PRIMARY KEY, user BLOB NOT NULL, bundle BLOB NOT NULL);
         CREATE TABLE one_time_key (
             id INTEGER PRIMARY KEY,
             device BLOB NOT NULL,
             key BLOB NOT NULL,
             UNIQUE (device, key)
         );
         PRAGMA user_version = 2;
         COMMIT;",
    )
}

/// Version 3 adds deposit grants: each mailbox entry records the share it counts in (a
/// grant's token hash, or the depositing device) and whether it came as an introduction;
/// `grant` holds the token hashes an owner registered, `grant_owner` when it last did.
pub(super) fn migrate_v3(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN;
         ALTER TABLE mailbox ADD COLUMN share BLOB;
         ALTER TABLE mailbox ADD COLUMN intro INTEGER NOT NULL DEFAULT 0;
         CREATE TABLE deposit_grant (
             owner BLOB NOT NULL,
             hash BLOB NOT NULL,
             PRIMARY KEY (owner, hash)
         ) WITHOUT ROWID;
         CREATE TABLE grant_owner (owner BLOB PRIMARY KEY, updated_ms INTEGER NOT NULL);
         CREATE INDEX grant_owner_updated ON grant_owner(updated_ms);
         PRAGMA user_version = 3;
         COMMIT;",
    )
}

pub(super) fn load_usage(conn: &Connection) -> rusqlite::Result<HashMap<Key, Usage>> {
    let mut stmt = conn.prepare(
        "SELECT owner, share, intro, COUNT(*), SUM(size) FROM mailbox GROUP BY owner, share, intro",
    )?;
    let mut usage: HashMap<Key, Usage> = HashMap::new();
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Option<Vec<u8>>>(1)?,
            r.get::<_, i64>(2)? != 0,
            r.get::<_, i64>(3)?.max(0) as u64,
            r.get::<_, i64>(4)?.max(0) as u64,
        ))
    })?;
    for row in rows {
        let (owner, share, intro, messages, bytes) = row?;
        for k in quota::keys(&owner, share.as_deref(), intro) {
            let u = usage.entry(k).or_default();
            u.messages += messages;
            u.bytes += bytes;
        }
    }
    Ok(usage)
}

pub(super) fn load_state(conn: &Connection) -> rusqlite::Result<Loaded> {
    let mut loaded = Loaded::default();
    let mut stmt = conn.prepare("SELECT owner, url FROM push_endpoint")?;
    for row in stmt.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?))
    })? {
        let (o, url) = row?;
        if let Some(p) = peer(&o) {
            loaded.push.push((p, url));
        }
    }
    let mut stmt = conn.prepare("SELECT peer, ms FROM last_seen")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?)))? {
        let (o, ms) = row?;
        if let Some(p) = peer(&o) {
            loaded.last_seen.push((p, ms.max(0) as u64));
        }
    }
    let mut stmt = conn.prepare("SELECT owner, viewer FROM presence_allow ORDER BY owner")?;
    let mut allow: HashMap<PeerId, Vec<PeerId>> = HashMap::new();
    for row in stmt.query_map([], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
    })? {
        let (o, v) = row?;
        if let (Some(o), Some(v)) = (peer(&o), peer(&v)) {
            allow.entry(o).or_default().push(v);
        }
    }
    loaded.allow = allow.into_iter().collect();
    let mut stmt = conn.prepare(
        "SELECT o.owner, o.updated_ms, g.hash FROM grant_owner o
         LEFT JOIN deposit_grant g ON g.owner = o.owner ORDER BY o.owner",
    )?;
    let mut grants: HashMap<PeerId, (Vec<[u8; 32]>, u64)> = HashMap::new();
    for row in stmt.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<Vec<u8>>>(2)?,
        ))
    })? {
        let (o, updated, hash) = row?;
        if let Some(o) = peer(&o) {
            let e = grants
                .entry(o)
                .or_insert_with(|| (Vec::new(), updated.max(0) as u64));
            if let Some(h) = hash.and_then(|h| <[u8; 32]>::try_from(h).ok()) {
                e.0.push(h);
            }
        }
    }
    loaded.grants = grants.into_iter().map(|(o, (h, t))| (o, h, t)).collect();
    Ok(loaded)
}
