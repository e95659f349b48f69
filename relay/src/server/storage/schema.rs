//! The database's layout: connection settings, the migrations to each schema version (the
//! fourth lives with what it adds, in `server::registrations`), and what is read back at
//! start-up: the in-memory state of the relay ([`Loaded`]) and the fill level of every
//! mailbox and share.

use std::collections::HashMap;

use libp2p::PeerId;
use rusqlite::Connection;

use super::peer;
use crate::server::quota::{self, Counters, Usage};

/// SQLite page size assumed when turning `max_database_bytes` into `max_page_count`.
const PAGE_SIZE: u64 = 4096;

/// Pages of write-ahead log after which a commit checkpoints it (see `init`).
pub(super) const WAL_CHECKPOINT_PAGES: u32 = 10_000;

/// Prepared statements kept per connection.
const STATEMENT_CACHE: usize = 64;

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
    /// DHT records not expired yet (not checked again here: `server::dht` does that).
    pub dht: Vec<super::DhtRow>,
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
    // Keep every statement the writer runs prepared (rusqlite keeps 16 by default, fewer
    // than the storage's statements: a mixed load would prepare some again and again).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
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

/// Version 5 makes a deposit cheaper to write. The mailbox id becomes a plain rowid without
/// `AUTOINCREMENT` (which read and rewrote `sqlite_sequence` for every row): ids must still
/// never be reused, since a client's fetch cursor and acks name them, so `mailbox_seq` keeps
/// the highest id ever issued, written once per transaction (see [`issued_seq`]). The index
/// on `message(expires_ms)` goes: expiry finds entries through `mailbox_expiry` and a message
/// goes with its last entry, so nothing read it, yet every deposit wrote it.
pub(super) fn migrate_v5(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN;
         DROP INDEX message_expiry;
         CREATE TABLE mailbox_seq (id INTEGER PRIMARY KEY CHECK (id = 0), issued INTEGER NOT NULL);
         INSERT INTO mailbox_seq(id, issued) VALUES (0, MAX(
             COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'mailbox'), 0),
             COALESCE((SELECT MAX(seq) FROM mailbox), 0)));
         CREATE TABLE mailbox_v5 (
             seq INTEGER PRIMARY KEY,
             owner BLOB NOT NULL,
             message INTEGER NOT NULL,
             size INTEGER NOT NULL,
             expires_ms INTEGER NOT NULL,
             share BLOB,
             intro INTEGER NOT NULL DEFAULT 0
         );
         INSERT INTO mailbox_v5(seq, owner, message, size, expires_ms, share, intro)
           SELECT seq, owner, message, size, expires_ms, share, intro FROM mailbox;
         DROP TABLE mailbox;
         ALTER TABLE mailbox_v5 RENAME TO mailbox;
         CREATE INDEX mailbox_owner ON mailbox(owner, seq);
         CREATE INDEX mailbox_expiry ON mailbox(expires_ms);
         PRAGMA user_version = 5;
         COMMIT;",
    )
}

/// Version 6 drops the index on `mailbox(owner, seq)`: the writer keeps which entries each
/// mailbox holds in memory (`mailbox::Index`, read from the table at start-up), since every
/// deposit wrote a leaf of that index for each recipient mailbox in every group commit.
pub(super) fn migrate_v6(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN;
         DROP INDEX IF EXISTS mailbox_owner;
         PRAGMA user_version = 6;
         COMMIT;",
    )
}

/// Version 7 keeps the DHT records the relay holds (`dht.rs`), so that they outlive a
/// restart.
pub(super) fn migrate_v7(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE dht_record (
             key BLOB PRIMARY KEY,
             value BLOB NOT NULL,
             expires_ms INTEGER NOT NULL
         );
         PRAGMA user_version = 7;
         COMMIT;",
    )
}

/// The highest mailbox id ever issued (ids go on from there).
pub(super) fn issued_seq(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT MAX(issued, COALESCE((SELECT MAX(seq) FROM mailbox), 0)) FROM mailbox_seq",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u64)
}

/// Records `issued` as the highest mailbox id issued, in the transaction that stores it.
pub(super) fn set_issued_seq(conn: &Connection, issued: u64) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE mailbox_seq SET issued = ?1 WHERE id = 0")?
        .execute([issued as i64])
        .map(drop)
}

pub(super) fn load_usage(conn: &Connection) -> rusqlite::Result<Counters<Usage>> {
    let mut stmt = conn.prepare(
        "SELECT owner, share, intro, COUNT(*), SUM(size) FROM mailbox GROUP BY owner, share, intro",
    )?;
    let mut usage: Counters<Usage> = Counters::default();
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
        for c in quota::counters(share.as_deref(), intro) {
            usage.update(&owner, c, |u| {
                u.messages += messages;
                u.bytes += bytes;
            });
        }
    }
    Ok(usage)
}

/// What the in-memory parts start from; DHT records expired at `now_ms` are left out.
pub(super) fn load_state(conn: &Connection, now_ms: u64) -> rusqlite::Result<Loaded> {
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
    loaded.dht = super::dht::load(conn, now_ms)?;
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::super::{Op, Share, Storage, mailbox::tests::deposit_as, test_settings};
    use super::*;
    use crate::server::metrics::Metrics;

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// A version 4 database keeps its entries through version 5, and the ids go on after
    /// the highest ever issued, even when the entry that had it is gone.
    #[test]
    fn v5_keeps_entries_and_never_reissues_an_id() {
        let conn = Connection::open_in_memory().unwrap();
        for step in [
            migrate_v1,
            migrate_v2,
            migrate_v3,
            crate::server::registrations::migrate_v4,
        ] {
            step(&conn).unwrap();
        }
        conn.execute(
            "INSERT INTO message(id, sender, created_ms, expires_ms, refs, body)
             VALUES (1, x'01', 0, 9, 3, x'ff')",
            [],
        )
        .unwrap();
        for (owner, share, intro) in [
            ("x'0a'", "x'67'", 0),
            ("x'0b'", "NULL", 1),
            ("x'0c'", "NULL", 0),
        ] {
            conn.execute(
                &format!(
                    "INSERT INTO mailbox(owner, message, size, expires_ms, share, intro)
                     VALUES ({owner}, 1, 1, 9, {share}, {intro})"
                ),
                [],
            )
            .unwrap();
        }
        // The newest entry is acked before the upgrade: its id 3 must not come back.
        conn.execute("DELETE FROM mailbox WHERE seq = 3", [])
            .unwrap();
        let before = load_usage(&conn).unwrap();
        migrate_v5(&conn).unwrap();
        assert_eq!(count(&conn, "PRAGMA user_version"), 5);
        assert_eq!(issued_seq(&conn).unwrap(), 3);
        assert_eq!(load_usage(&conn).unwrap(), before);
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM mailbox WHERE (seq, owner, intro) IN (VALUES (1, x'0a', 0), (2, x'0b', 1))"
            ),
            2
        );
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('message_expiry', 'mailbox_v5')"
            ),
            0
        );
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN ('mailbox_owner', 'mailbox_expiry')"
            ),
            2
        );
        assert_eq!(
            count(
                &conn,
                "SELECT COUNT(*) FROM sqlite_sequence WHERE name = 'mailbox'"
            ),
            0
        );
    }

    /// After the newest entry is acked and the relay restarts, the next deposit gets a
    /// higher id than any issued before (a client's cursor would skip a reused one).
    #[tokio::test]
    async fn ids_only_grow_across_acks_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let owner = PeerId::random();
        let mut last = 0;
        for _ in 0..2 {
            let (storage, _) =
                Storage::open(dir.path(), test_settings(10), Arc::new(Metrics::default())).unwrap();
            let h = storage.handle();
            let id = deposit_as(&h, PeerId::random(), owner, Share::Sender, 0)
                .await
                .unwrap()
                .stored[0]
                .id;
            assert!(id > last, "id {id} after {last}");
            let (reply, rx) = oneshot::channel();
            h.submit_wait(Op::Ack {
                owner,
                ids: vec![id],
                reply,
            })
            .await
            .unwrap();
            assert_eq!(rx.await.unwrap().unwrap(), 1);
            last = id;
            storage.close().await;
        }
    }
}
