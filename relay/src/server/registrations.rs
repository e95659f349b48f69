//! What devices leave at the relay besides mail — prekey bundles and one-time keys, presence
//! allow-lists, push endpoints, last-seen times, device lists — kept only while their owners
//! keep coming back.
//!
//! Every one of these is refreshed by its owner: a node publishes its prekeys, device list,
//! allow-list and grants each time it connects to a home relay. `device_seen` records when a
//! device last did any of that; `device_list.seen_ms` when a user's list was last published.
//! The expiry sweep deletes what belongs to devices (and lists of users) not seen for
//! `storage.device_idle_secs`, so identities minted by the thousand cannot make their rows
//! permanent. A device that comes back later simply publishes again.

use libp2p::PeerId;
use rusqlite::{Connection, params};

/// Version 4 of the relay's schema: when each device (and each user's list) was last seen
/// refreshing what it keeps here. Existing rows count as seen at the migration.
pub fn migrate_v4(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN;
         CREATE TABLE device_seen (device BLOB PRIMARY KEY, seen_ms INTEGER NOT NULL);
         CREATE INDEX device_seen_ms ON device_seen(seen_ms);
         ALTER TABLE device_list ADD COLUMN seen_ms INTEGER NOT NULL DEFAULT 0;
         UPDATE device_list SET seen_ms = CAST(strftime('%s', 'now') AS INTEGER) * 1000;
         INSERT OR IGNORE INTO device_seen(device, seen_ms)
           SELECT device, CAST(strftime('%s', 'now') AS INTEGER) * 1000 FROM prekey_bundle;
         INSERT OR IGNORE INTO device_seen(device, seen_ms)
           SELECT DISTINCT owner, CAST(strftime('%s', 'now') AS INTEGER) * 1000 FROM presence_allow;
         INSERT OR IGNORE INTO device_seen(device, seen_ms)
           SELECT owner, CAST(strftime('%s', 'now') AS INTEGER) * 1000 FROM push_endpoint;
         PRAGMA user_version = 4;
         COMMIT;",
    )
}

/// Records that `device` refreshed what it keeps here.
pub fn touch(sp: &Connection, device: &[u8], now_ms: u64) -> rusqlite::Result<()> {
    sp.prepare_cached(
        "INSERT INTO device_seen(device, seen_ms) VALUES (?1, ?2)
         ON CONFLICT(device) DO UPDATE SET seen_ms = MAX(seen_ms, excluded.seen_ms)",
    )?
    .execute(params![device, now_ms as i64])?;
    Ok(())
}

/// Records that `user`'s device list was published (again).
pub fn touch_list(sp: &Connection, user: &[u8], now_ms: u64) -> rusqlite::Result<()> {
    sp.prepare_cached("UPDATE device_list SET seen_ms = ?2 WHERE user = ?1")?
        .execute(params![user, now_ms as i64])?;
    Ok(())
}

/// Deletes everything kept for devices not seen since `before_ms` (and device lists not
/// published since then), at most `limit` devices per call; returns those devices, so the
/// in-memory copies (allow-lists, push endpoints) can go too.
pub fn expire(sp: &Connection, before_ms: u64, limit: usize) -> rusqlite::Result<Vec<PeerId>> {
    let gone: Vec<Vec<u8>> = sp
        .prepare_cached("SELECT device FROM device_seen WHERE seen_ms < ?1 LIMIT ?2")?
        .query_map(params![before_ms as i64, limit as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for d in &gone {
        for sql in [
            "DELETE FROM one_time_key WHERE device = ?1",
            "DELETE FROM prekey_bundle WHERE device = ?1",
            "DELETE FROM presence_allow WHERE owner = ?1",
            "DELETE FROM push_endpoint WHERE owner = ?1",
            "DELETE FROM last_seen WHERE peer = ?1",
            "DELETE FROM device_seen WHERE device = ?1",
        ] {
            sp.prepare_cached(sql)?.execute(params![d])?;
        }
    }
    sp.prepare_cached("DELETE FROM device_list WHERE seen_ms < ?1")?
        .execute(params![before_ms as i64])?;
    Ok(gone
        .iter()
        .filter_map(|d| PeerId::from_bytes(d).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE device_list (user BLOB PRIMARY KEY, body BLOB NOT NULL);
             CREATE TABLE prekey_bundle (device BLOB PRIMARY KEY, user BLOB NOT NULL, bundle BLOB NOT NULL);
             CREATE TABLE one_time_key (id INTEGER PRIMARY KEY, device BLOB NOT NULL, key BLOB NOT NULL);
             CREATE TABLE presence_allow (owner BLOB NOT NULL, viewer BLOB NOT NULL);
             CREATE TABLE push_endpoint (owner BLOB PRIMARY KEY, url TEXT NOT NULL);
             CREATE TABLE last_seen (peer BLOB PRIMARY KEY, ms INTEGER NOT NULL);",
        )
        .unwrap();
        migrate_v4(&c).unwrap();
        c
    }

    #[test]
    fn quiet_devices_and_lists_go_and_active_ones_stay() {
        let c = db();
        let (quiet, active) = (PeerId::random(), PeerId::random());
        for (p, t) in [(quiet, 1_000), (active, 9_000)] {
            let d = p.to_bytes();
            c.execute(
                "INSERT INTO prekey_bundle VALUES (?1, x'01', x'02')",
                params![d],
            )
            .unwrap();
            c.execute(
                "INSERT INTO one_time_key(device, key) VALUES (?1, x'03')",
                params![d],
            )
            .unwrap();
            c.execute(
                "INSERT INTO push_endpoint VALUES (?1, 'http://x/')",
                params![d],
            )
            .unwrap();
            touch(&c, &d, t).unwrap();
        }
        c.execute(
            "INSERT INTO device_list(user, body) VALUES (x'aa', x'00')",
            [],
        )
        .unwrap();
        c.execute(
            "INSERT INTO device_list(user, body) VALUES (x'bb', x'00')",
            [],
        )
        .unwrap();
        touch_list(&c, &[0xaa], 1_000).unwrap();
        touch_list(&c, &[0xbb], 9_000).unwrap();
        // An older refresh never moves the time back.
        touch(&c, &active.to_bytes(), 10).unwrap();

        assert_eq!(expire(&c, 5_000, 100).unwrap(), vec![quiet]);
        let count = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(count("SELECT COUNT(*) FROM prekey_bundle"), 1);
        assert_eq!(count("SELECT COUNT(*) FROM one_time_key"), 1);
        assert_eq!(count("SELECT COUNT(*) FROM push_endpoint"), 1);
        assert_eq!(count("SELECT COUNT(*) FROM device_list"), 1);
        assert_eq!(count("SELECT COUNT(*) FROM device_seen"), 1);
        assert!(expire(&c, 5_000, 100).unwrap().is_empty());
    }
}
