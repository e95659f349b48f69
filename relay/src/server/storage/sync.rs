//! The flusher thread: makes committed transactions durable, and only then sends their
//! answers.
//!
//! The writer commits with `synchronous=NORMAL`: a commit appends its frames to the
//! write-ahead log and returns without waiting for the disk. It hands the commit's answers
//! here, in commit order. This thread takes every commit queued so far, flushes the log
//! with one `fdatasync` for all of them, and then answers them, in the same order. While
//! the disk flushes, the writer goes on applying and committing the next batch, so a flush
//! no longer stops the writer; an acknowledged deposit is still on disk.
//!
//! Why that is as durable as `synchronous=FULL`: a flush started after a commit returned
//! covers every frame that commit wrote (and the log's header, when the commit started the
//! log over), because it flushes the whole file. After a crash SQLite reads the log back up
//! to the last commit whose frames are all intact, so every commit answered here survives;
//! one that was not flushed yet may be lost, and it was not answered. The log is flushed
//! before each checkpoint and the database after it, as in `NORMAL` mode. Readers may see a
//! commit before it is flushed (a fetch can return a deposit not yet acknowledged); a crash
//! then can only bring back what was acknowledged, or drop what was not.
//!
//! If a flush fails, what the kernel had not written may be lost for good while a later
//! flush succeeds, leaving a hole in the log that ends its replay early. So after one
//! failure nothing is acknowledged any more: every later answer is the error, and the
//! relay must be restarted (it says so in its log).

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Instant,
};

use super::{OpError, writer::Done};
use crate::server::metrics::Metrics;

/// Commits waiting for the flusher. The writer waits when it is full: at most this many
/// batches are committed ahead of the disk.
pub(super) const QUEUE: usize = 64;

/// One commit's answers.
pub(super) struct Committed {
    /// The answers, in the order the operations were applied.
    pub(super) done: Vec<Done>,
    /// The commit's error, if it failed (then nothing of it was written).
    pub(super) error: Option<OpError>,
    /// Whether the commit wrote anything (then it must be flushed before its answers).
    pub(super) wrote: bool,
    /// When the writer started the batch (for the commit-time metric, up to the flush).
    pub(super) started: Instant,
}

/// The flusher thread; dropping this lets it finish its queue and stop.
pub(super) struct Flusher {
    tx: Option<mpsc::SyncSender<Committed>>,
    thread: Option<JoinHandle<()>>,
}

impl Flusher {
    /// Starts flushing the write-ahead log of the database at `db`; `broken` is set once a
    /// flush fails (nothing is acknowledged after that).
    pub(super) fn spawn(
        db: &Path,
        metrics: Arc<Metrics>,
        broken: Arc<AtomicBool>,
    ) -> io::Result<Self> {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let mut log = Log::new(wal_path(db));
        let thread = std::thread::Builder::new()
            .name("tern-relay-flush".into())
            .spawn(move || run(&rx, &mut log, &metrics, &broken))?;
        Ok(Flusher {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Queues a commit's answers; waits while [`QUEUE`] commits are ahead of the disk.
    pub(super) fn send(&self, committed: Committed) {
        let Some(tx) = &self.tx else { return };
        if let Err(mpsc::SendError(c)) = tx.send(committed) {
            // The thread is gone (it panicked): nothing can be flushed any more.
            answer(c, Some(&OpError::Internal(FLUSHER_GONE.into())));
        }
    }

    /// Answers everything queued (flushing it first) and stops the thread.
    pub(super) fn finish(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take()
            && t.join().is_err()
        {
            tracing::error!("flusher thread panicked");
        }
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.finish();
    }
}

const FLUSHER_GONE: &str = "the flusher thread is gone";

/// The write-ahead log's path: SQLite's default name for the database at `db`.
fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Takes commits until the writer is gone: all queued at once, one flush for them.
fn run(rx: &mpsc::Receiver<Committed>, log: &mut Log, metrics: &Metrics, broken: &AtomicBool) {
    let mut failed: Option<OpError> = None;
    while let Ok(first) = rx.recv() {
        let mut group = vec![first];
        group.extend(rx.try_iter());
        if failed.is_none()
            && group.iter().any(|c| c.wrote && c.error.is_none())
            && let Err(e) = log.flush()
        {
            tracing::error!(
                error = %e,
                "cannot flush the write-ahead log to disk; nothing more will be acknowledged \
                 until the relay is restarted"
            );
            failed = Some(OpError::Internal(format!("disk flush failed: {e}")));
            broken.store(true, Ordering::Relaxed);
        }
        for c in group {
            metrics.observe_commit(c.started.elapsed(), c.done.len());
            let error = c.error.clone().or_else(|| failed.clone());
            answer(c, error.as_ref());
        }
    }
}

/// Sends a commit's answers, each with `error` if there is one.
fn answer(c: Committed, error: Option<&OpError>) {
    for d in c.done {
        d.send(error);
    }
}

/// The write-ahead log file, opened when first flushed and again if SQLite replaced it.
struct Log {
    path: PathBuf,
    file: Option<File>,
}

impl Log {
    fn new(path: PathBuf) -> Self {
        Log { path, file: None }
    }

    /// Flushes everything written to the log so far (data and size) to the disk.
    fn flush(&mut self) -> io::Result<()> {
        let now = std::fs::metadata(&self.path)?;
        let same = match &self.file {
            Some(f) => same_file(&f.metadata()?, &now),
            None => false,
        };
        if !same {
            self.file = Some(File::open(&self.path)?);
        }
        match &self.file {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }
}

/// Whether two metadata describe the same file (not merely the same path).
#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    (a.dev(), a.ino()) == (b.dev(), b.ino())
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{
        DB_FILE, OpError, Share, Storage, StorageHandle, mailbox::tests::deposit_as, test_settings,
    };
    use crate::server::metrics::Metrics;
    use libp2p::PeerId;

    async fn deposit(h: &StorageHandle, to: PeerId) -> Result<(), OpError> {
        deposit_as(h, PeerId::random(), to, Share::Sender, 1000)
            .await
            .map(drop)
    }

    /// Answers come through the flush: once the log cannot be flushed (here: its file is
    /// gone from the directory), deposits are no longer acknowledged, and they stay refused
    /// even when a later flush might work, since a failed flush may have lost frames: from
    /// then on they are refused before they are queued.
    #[tokio::test]
    async fn a_failed_flush_stops_acknowledgements() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (storage, _) = Storage::open(dir.path(), test_settings(100), metrics).unwrap();
        let h = storage.handle();
        let to = PeerId::random();
        deposit(&h, to).await.unwrap();
        let wal = super::wal_path(&dir.path().join(DB_FILE));
        std::fs::remove_file(&wal).unwrap();
        let e = deposit(&h, to).await.unwrap_err();
        assert!(matches!(e, OpError::Internal(ref m) if m.contains("disk flush failed")));
        // A log file at the path again (a fresh, empty one): still refused, now before
        // any mailbox id is reserved (none may reach a listener that a restart reissues).
        std::fs::write(&wal, b"").unwrap();
        let e = deposit(&h, to).await.unwrap_err();
        assert!(matches!(e, OpError::Internal(_)), "{e:?}");
        assert!(matches!(h.try_deposit_slot(), Err(OpError::Internal(_))));
        storage.close().await;
    }

    /// Many deposits in flight at once are all answered, each once, and all are stored
    /// when the storage is opened again.
    #[tokio::test]
    async fn every_commit_is_answered_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _) =
            Storage::open(dir.path(), test_settings(10_000), Arc::default()).unwrap();
        let h = storage.handle();
        let to = PeerId::random();
        let mut answers = Vec::new();
        for _ in 0..500 {
            let h = h.clone();
            answers.push(tokio::spawn(async move { deposit(&h, to).await }));
        }
        for a in answers {
            a.await.unwrap().unwrap();
        }
        storage.close().await;
        let conn = rusqlite::Connection::open(dir.path().join(DB_FILE)).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM mailbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 500);
    }
}
