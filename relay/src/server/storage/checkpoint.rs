//! The checkpointer: copies the write-ahead log back into the database from a thread and
//! connection of its own, five times a second, so that group commits do not wait for it.
//!
//! SQLite checkpoints in the commit that takes the log past `wal_autocheckpoint` pages: the
//! writer stops taking operations while it copies, and every deposit of that commit, and
//! of the ones queued behind it, waits. A passive checkpoint from another connection copies
//! what is committed without blocking the writer, and the writer starts the log over once
//! everything in it was copied. The writer's own checkpoint stays as the backstop, far
//! above what the log reaches between two of these.

use std::{
    path::Path,
    sync::{Arc, Condvar, Mutex, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use rusqlite::Connection;

use super::OpenError;

/// How often the log is copied back.
const INTERVAL: Duration = Duration::from_millis(200);

/// The checkpointer thread, stopped when this is stopped or dropped.
#[derive(Debug)]
pub(super) struct Checkpointer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing the database at `path` (in WAL mode already).
    pub(super) fn spawn(path: &Path) -> Result<Self, OpenError> {
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
            .spawn(move || run(&conn, &flag))
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

fn run(conn: &Connection, stop: &(Mutex<bool>, Condvar)) {
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
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "checkpoint failed");
        }
        guard = stopped.lock().unwrap_or_else(PoisonError::into_inner);
    }
}
