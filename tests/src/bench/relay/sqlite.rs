//! The storage ceiling of the relay benchmarks: a raw batched durable SQLite insert loop.

use std::time::Instant;

use tern_relay::PeerId;

use super::{CIPHERTEXT, SQLITE_BATCH};
use crate::bench::per_sec;

/// The storage ceiling: `n` 1 KiB rows inserted into a WAL database with
/// `synchronous=FULL`, [`SQLITE_BATCH`] rows per transaction. Rows per second.
pub(super) fn baseline(n: usize) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let conn = rusqlite::Connection::open(dir.path().join("baseline.sqlite3"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE message (id INTEGER PRIMARY KEY, owner BLOB NOT NULL, body BLOB NOT NULL);
         CREATE INDEX message_owner ON message(owner, id);",
    )?;
    let owner = PeerId::random().to_bytes();
    let body = vec![0x5au8; CIPHERTEXT];
    let start = Instant::now();
    let mut left = n;
    while left > 0 {
        let take = left.min(SQLITE_BATCH);
        let tx = conn.unchecked_transaction()?;
        {
            let mut stmt = tx.prepare_cached("INSERT INTO message(owner, body) VALUES (?1, ?2)")?;
            for _ in 0..take {
                stmt.execute(rusqlite::params![owner, body])?;
            }
        }
        tx.commit()?;
        left -= take;
    }
    Ok(per_sec(n, start.elapsed()))
}
