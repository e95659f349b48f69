//! The checkpointer: copies the write-ahead log back into the database from a thread and
//! connection of its own, twenty times a second, so that group commits do not wait for it,
//! and has the writer start the log over when it has grown.
//!
//! SQLite checkpoints in the commit that takes the log past `wal_autocheckpoint` pages: the
//! writer stops taking operations while it copies, and every deposit of that commit, and
//! of the ones queued behind it, waits. A passive checkpoint from another connection copies
//! what is committed without blocking the writer. Each round here runs passes until one
//! finds little new to copy (each copies what was committed during the one before), and
//! then, when the log is long, asks the writer to start it over ([`Restart`]). The writer's
//! own checkpoint stays as the backstop, far above what the log reaches between two
//! restarts.

use std::{
    path::Path,
    sync::{
        Arc, Condvar, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use rusqlite::Connection;

use super::OpenError;

/// How often the log is copied back.
const INTERVAL: Duration = Duration::from_millis(50);

/// Passes of one round at most: each copies what was committed during the last.
const MAX_PASSES: usize = 4;

/// A pass that found at most this many frames not yet copied ends the round.
const TAIL_FRAMES: i64 = 256;

/// A log of at least this many frames is started over after a round (`Restart`).
const RESTART_FRAMES: i64 = 4_000;

/// Asks the writer to start the log over: set by the checkpointer after a round that left
/// little to copy, taken by the writer between two transactions ([`Restart::wanted`]).
///
/// SQLite starts the log over at the first write of a transaction that began reading with
/// every frame of the log copied back. Under a load without pauses that never happens on
/// its own: the writer commits again while the checkpointer copies, so the log only grows,
/// and the writer's backstop checkpoint then copies everything since the checkpointer's
/// last pass inside a commit (tens of milliseconds with every deposit of the batch and of
/// the ones behind it waiting). Instead, once a round of passes has caught up with the
/// log, the writer copies the few frames committed since, itself, between transactions,
/// and its next transaction starts the log over.
#[derive(Debug, Clone, Default)]
pub(super) struct Restart(Arc<AtomicBool>);

impl Restart {
    /// Whether a restart was asked for since the last call (the flag is cleared).
    pub(super) fn wanted(&self) -> bool {
        self.0.swap(false, Ordering::Relaxed)
    }

    /// Asks again (the writer's copy did not reach the end of the log).
    pub(super) fn ask(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The checkpointer thread, stopped when this is stopped or dropped.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (in WAL mode already).
    pub(super) fn spawn(path: &Path, restart: Restart) -> Result<Self, OpenError> {
        let conn = Connection::open(path)
            .and_then(|c| {
                c.pragma_update(None, "synchronous", "FULL")?;
                Ok(c)
            })
            .map_err(|source| OpenError::Sqlite {
                path: path.to_path_buf(),
                source,
            })?;
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tern-relay-checkpoint".into())
            .spawn(move || run(&conn, &flag, &restart))
            .map_err(OpenError::Thread)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the thread and waits for it.
    pub(super) fn stop(mut self) {
        self.signal();
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("checkpoint thread panicked");
        }
    }

    fn signal(&self) {
        let (stopped, wake) = &*self.stop;
        *stopped.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.signal();
    }
}

/// One passive checkpoint: the frames in the log and how many of them are copied back.
pub(super) fn pass(conn: &Connection) -> rusqlite::Result<(i64, i64)> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok((r.get(1)?, r.get(2)?))
    })
}

fn run(conn: &Connection, stop: &(Mutex<bool>, Condvar), restart: &Restart) {
    let (stopped, wake) = stop;
    let mut guard = stopped.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        guard = wake
            .wait_timeout(guard, INTERVAL)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        if *guard {
            return;
        }
        // Not under the lock: stopping must not wait for a checkpoint to start.
        drop(guard);
        round(conn, restart);
        guard = stopped.lock().unwrap_or_else(PoisonError::into_inner);
    }
}

/// Passes until one finds little new to copy (or [`MAX_PASSES`] of them); then, if the log
/// is long, asks the writer to start it over.
fn round(conn: &Connection, restart: &Restart) {
    let mut copied_before = 0;
    let mut log = 0;
    for _ in 0..MAX_PASSES {
        match pass(conn) {
            Ok((frames, copied)) => {
                log = frames;
                if frames - copied_before <= TAIL_FRAMES {
                    break;
                }
                copied_before = copied;
            }
            Err(e) => {
                tracing::debug!(error = %e, "checkpoint failed");
                return;
            }
        }
    }
    if log >= RESTART_FRAMES {
        restart.ask();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::{StreamExt, stream::FuturesUnordered};
    use libp2p::PeerId;
    use tokio::sync::oneshot;

    use super::RESTART_FRAMES;
    use std::sync::atomic::Ordering;

    use crate::server::{
        metrics::Metrics,
        storage::{DB_FILE, Op, Quota, Settings, Share, Storage, schema::WAL_CHECKPOINT_PAGES},
    };

    /// Under deposits without a pause (the log never all copied back between two commits,
    /// so SQLite would start it over only at the backstop) the writer starts the log over
    /// when the checkpointer asks: while more than twice the backstop's pages are written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_starts_over_under_a_load_without_pauses() {
        const PAGE: u64 = 4096;
        const BODY: usize = 16 * 1024;
        const IN_FLIGHT: usize = 64;
        let dir = tempfile::tempdir().unwrap();
        let settings = Settings {
            max_batch: 64,
            queue_depth: 256,
            max_database_bytes: 0,
            quota: Quota::new(u64::MAX, u64::MAX, 100, 4, 1 << 20, 2),
            grant_idle_ms: 10_000,
            reserve_bytes: 0,
        };
        let metrics = Arc::new(Metrics::default());
        let (storage, _) = Storage::open(dir.path(), settings, metrics.clone()).unwrap();
        let h = storage.handle();
        let total = (u64::from(WAL_CHECKPOINT_PAGES) * PAGE * 5 / 2) as usize / BODY;
        let owners: Vec<PeerId> = (0..100).map(|_| PeerId::random()).collect();
        let mut in_flight = FuturesUnordered::new();
        for i in 0..total {
            if in_flight.len() == IN_FLIGHT {
                let r: Result<_, _> = in_flight.next().await.unwrap();
                r.unwrap();
            }
            let (reply, rx) = oneshot::channel();
            h.submit_deposit(1, |first_id| Op::Deposit {
                sender: PeerId::random(),
                recipients: vec![(owners[i % owners.len()], Share::Sender)],
                ciphertext: vec![i as u8; BODY],
                now_ms: 1000,
                expires_ms: u64::MAX / 2,
                intro_expires_ms: u64::MAX / 2,
                first_id,
                fenced: None,
                reply: reply.into(),
            })
            .await
            .unwrap();
            in_flight.push(async move { rx.await.unwrap() });
        }
        while let Some(r) = in_flight.next().await {
            r.unwrap();
        }
        let wal = std::fs::metadata(dir.path().join(format!("{DB_FILE}-wal")))
            .unwrap()
            .len();
        storage.close().await;
        let pages = wal / PAGE;
        let restarts = metrics.log_restarts.load(Ordering::Relaxed);
        assert!(
            restarts >= 1,
            "the log was never started over on the checkpointer's request: it grew to {pages} \
             pages (restart at {RESTART_FRAMES}, backstop at {WAL_CHECKPOINT_PAGES}) while \
             {total} deposits of {BODY} bytes were written"
        );
    }
}
