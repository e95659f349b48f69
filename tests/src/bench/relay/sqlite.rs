//! The storage ceiling of the relay benchmarks: a raw batched durable SQLite insert loop.

use std::time::{Duration, Instant};

use anyhow::Context;

use tern_relay::PeerId;

use super::{CIPHERTEXT, SQLITE_BATCH};
use crate::bench::per_sec;

/// The storage ceiling: `n` 1 KiB rows inserted into a WAL database with
/// `synchronous=FULL`, [`SQLITE_BATCH`] rows per transaction. Rows per second.
pub(super) fn baseline(n: usize) -> anyhow::Result<f64> {
    run(n).map(|r| r.rate)
}

/// One run of the raw loop.
pub(super) struct Loop {
    /// Rows per second.
    pub(super) rate: f64,
    /// CPU time the loop's thread spent (user and system).
    pub(super) cpu: Duration,
}

/// [`baseline`], with the CPU time of the calling thread, which runs the loop.
pub(super) fn run(n: usize) -> anyhow::Result<Loop> {
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
    let cpu = thread_cpu("thread-self")?;
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
    Ok(Loop {
        rate: per_sec(n, start.elapsed()),
        cpu: thread_cpu("thread-self")?.saturating_sub(cpu),
    })
}

/// CPU time (user and system) a thread or process has spent: `task` is `thread-self` or
/// `self/task/<id>` (a thread of this process), `self` or a process id (a whole process)
/// under `/proc`. Clock ticks of 10 ms.
pub(super) fn thread_cpu(task: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{task}/stat"))?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("bad stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks: u64 = f.get(11).context("no utime")?.parse::<u64>()?
        + f.get(12).context("no stime")?.parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

/// The `/proc` entries (`<process>/task/<id>`) of the threads of `process` (`self` or a
/// process id) whose names (cut to 15 bytes) are among `names`.
pub(super) fn threads_named(process: &str, names: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut found = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{process}/task"))? {
        let task = format!("{process}/task/{}", t?.file_name().to_string_lossy());
        let comm = std::fs::read_to_string(format!("/proc/{task}/comm")).unwrap_or_default();
        if names.contains(&comm.trim_end()) {
            found.push(task);
        }
    }
    Ok(found)
}

/// CPU time the `threads` (`/proc` entries) have spent together.
pub(super) fn threads_cpu(threads: &[String]) -> anyhow::Result<Duration> {
    threads
        .iter()
        .try_fold(Duration::ZERO, |sum, t| Ok(sum + thread_cpu(t)?))
}
