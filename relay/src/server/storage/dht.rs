//! The DHT records the relay holds (`server::dht`), kept so that a restart, even of every
//! relay at once, does not lose them until their publishers publish again: each record
//! the relay stores is written here under its key, a newer one replacing the older, and
//! read back at start-up; rows past their expiry go with the expiry sweep.

use rusqlite::{Connection, params};

use super::{OpError, sql_err};

/// A stored record: its key, its value (a signed relay record) and when it expires (ms
/// since the epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhtRow {
    /// The record's key.
    pub key: Vec<u8>,
    /// The record's value.
    pub value: Vec<u8>,
    /// When it expires (ms since the epoch).
    pub expires_ms: u64,
}

/// Keeps `row`, replacing what was kept under its key.
pub(super) fn put(sp: &Connection, row: &DhtRow) -> Result<(), OpError> {
    sp.prepare_cached(
        "INSERT INTO dht_record(key, value, expires_ms) VALUES (?1, ?2, ?3)
         ON CONFLICT(key) DO UPDATE SET value = excluded.value, expires_ms = excluded.expires_ms",
    )
    .and_then(|mut s| s.execute(params![row.key, row.value, ms(row.expires_ms)]))
    .map(drop)
    .map_err(sql_err)
}

/// Deletes the records expired at `now_ms`.
pub(super) fn expire(sp: &Connection, now_ms: u64) -> Result<usize, OpError> {
    sp.prepare_cached("DELETE FROM dht_record WHERE expires_ms <= ?1")
        .and_then(|mut s| s.execute(params![ms(now_ms)]))
        .map_err(sql_err)
}

/// The records not expired at `now_ms`.
pub(super) fn load(conn: &Connection, now_ms: u64) -> rusqlite::Result<Vec<DhtRow>> {
    let mut stmt =
        conn.prepare("SELECT key, value, expires_ms FROM dht_record WHERE expires_ms > ?1")?;
    stmt.query_map(params![ms(now_ms)], |r| {
        Ok(DhtRow {
            key: r.get(0)?,
            value: r.get(1)?,
            expires_ms: r.get::<_, i64>(2)?.max(0) as u64,
        })
    })?
    .collect()
}

/// A time in ms as SQLite's integer (times past its range are the end of it).
fn ms(t: u64) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        super::super::schema::migrate_v7(&conn).unwrap();
        conn
    }

    fn row(key: u8, value: u8, expires_ms: u64) -> DhtRow {
        DhtRow {
            key: vec![key; 34],
            value: vec![value; 100],
            expires_ms,
        }
    }

    #[test]
    fn a_newer_record_replaces_the_older_and_expired_ones_go() {
        let conn = db();
        put(&conn, &row(1, 1, 1_000)).unwrap();
        put(&conn, &row(2, 1, 5_000)).unwrap();
        put(&conn, &row(1, 2, 9_000)).unwrap();
        let mut held = load(&conn, 0).unwrap();
        held.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(held, vec![row(1, 2, 9_000), row(2, 1, 5_000)]);
        assert_eq!(load(&conn, 5_000).unwrap(), vec![row(1, 2, 9_000)]);
        assert_eq!(expire(&conn, 5_000).unwrap(), 1);
        assert_eq!(load(&conn, 0).unwrap(), vec![row(1, 2, 9_000)]);
        // Past SQLite's integer range: kept as its end, never expired.
        put(&conn, &row(3, 1, u64::MAX)).unwrap();
        assert_eq!(load(&conn, 8_000).unwrap().len(), 2);
        assert_eq!(load(&conn, 10_000).unwrap().len(), 1);
    }
}
