//! The relay's own storage: one SQLite database (WAL) owned by one writer thread that
//! commits queued operations in batches (group commit), and a flusher thread that makes the
//! commits durable.
//!
//! Every operation carries a oneshot reply that is sent only after the transaction holding
//! it has committed and the write-ahead log holding that commit was flushed to disk, so an
//! acknowledged deposit is on disk. The writer commits without waiting for the disk
//! (`synchronous=NORMAL`) and goes on with the next batch while the flusher flushes the
//! log once for every commit queued so far (see `sync`). Each operation runs inside its
//! own savepoint, so one that fails (a full disk, say) is rolled back alone while the rest
//! of the batch commits.
//!
//! The parts:
//!
//! - this module: opening the database ([`Storage`], [`Reader`]), the writer's settings and
//!   the errors;
//! - `op`: the operations the writer takes ([`Op`]) and what they answer;
//! - `schema`: connection settings, the migrations to each schema version, and the state
//!   read back at start-up ([`Loaded`], the mailbox fill levels);
//! - `writer`: the writer thread: batching, the disk reserve, one savepoint per operation,
//!   and the usage counters it keeps;
//! - `sync`: the flusher thread: one flush of the log for the commits queued, then their
//!   replies;
//! - `mailbox`: deposits, fetches, acks and expiry of mailbox entries, and a mailbox's usage;
//! - `grants`: the deposit grants an owner registers, and their expiry;
//! - `presence`: presence allow-lists, last-seen times and push endpoints;
//! - `directory`: signed device lists, prekey bundles and one-time keys;
//! - `dht`: the DHT records the relay holds, kept for its next start ([`DhtRow`]).
//!
//! What devices keep here besides mail expires through `server::registrations`.

mod checkpoint;
mod dht;
mod directory;
mod grants;
mod handoff;
mod mailbox;
mod op;
mod presence;
mod schema;
mod sync;
mod writer;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    thread::JoinHandle,
};

use libp2p::PeerId;
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

use super::metrics::Metrics;
pub use super::quota::{Quota, Share};
use crate::wire::ErrorCode;
pub use dht::DhtRow;
pub use directory::{CheckFn, Claimed, ListCheck, MAX_STORED_ONE_TIME_KEYS};
pub use op::{Answerer, DepositReply, Deposited, Op, Page, Stored};
pub use schema::Loaded;

/// The database file name inside the data directory.
pub const DB_FILE: &str = "relay.sqlite3";
/// The schema version this build writes (`PRAGMA user_version`); stored records are
/// versioned by it.
pub const SCHEMA_VERSION: i64 = 7;

/// Why the storage could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// SQLite failed while opening or migrating.
    #[error("cannot open database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// The database was written by a newer relay.
    #[error("database {path} has schema version {found}; this relay knows up to {SCHEMA_VERSION}")]
    Schema {
        /// The database file.
        path: PathBuf,
        /// The version found.
        found: i64,
    },
    /// The writer thread could not be started.
    #[error("cannot start storage thread")]
    Thread(#[source] std::io::Error),
    /// The database's files could not be made private.
    #[error("cannot restrict {path} to this user: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Why one operation failed. The operation had no effect.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OpError {
    /// The database (or its configured size limit) is full.
    #[error("storage full")]
    Full,
    /// Every recipient's mailbox is over its quota.
    #[error("mailbox quota exceeded ({0:?})")]
    Quota(ErrorCode),
    /// SQLite failed otherwise.
    #[error("storage failure: {0}")]
    Internal(String),
    /// The writer is gone (shutting down).
    #[error("storage closed")]
    Closed,
    /// The writer's queue is full.
    #[error("storage busy")]
    Busy,
    /// A check refused the operation.
    #[error("refused ({0:?})")]
    Refused(ErrorCode),
}

impl OpError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            OpError::Full => ErrorCode::StorageFull,
            OpError::Quota(c) | OpError::Refused(c) => *c,
            OpError::Internal(_) => ErrorCode::Internal,
            OpError::Closed | OpError::Busy => ErrorCode::Unavailable,
        }
    }
}

fn sql_err(e: rusqlite::Error) -> OpError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DiskFull) => OpError::Full,
        _ => OpError::Internal(e.to_string()),
    }
}

fn peer(bytes: &[u8]) -> Option<PeerId> {
    PeerId::from_bytes(bytes).ok()
}

/// Handle to the writer thread. Dropping every handle lets the thread finish the queue,
/// commit and exit; [`Storage::close`] waits for that.
#[derive(Debug)]
pub struct Storage {
    tx: handoff::Handoff,
    /// The highest mailbox id reserved (shared by the handles).
    ids: Arc<AtomicU64>,
    /// Set by the flusher when a flush fails (shared by the handles).
    broken: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    checkpointer: Option<checkpoint::Checkpointer>,
}

/// A cheap cloneable sender of operations.
#[derive(Debug, Clone)]
pub struct StorageHandle {
    tx: handoff::Handoff,
    /// The highest mailbox id reserved.
    ids: Arc<AtomicU64>,
    /// Set once a flush of the log failed: nothing is acknowledged after that.
    broken: Arc<AtomicBool>,
}

/// A place in the writer's queue for one deposit, and the mailbox ids it takes
/// ([`DepositSlot::reserve_ids`]). Ids are reserved only with a place in the queue, so every
/// id handed out belongs to a deposit the writer will apply (which `id_gap` counts on), and
/// deposits reach the writer in the order their ids were reserved.
pub struct DepositSlot<'a> {
    permit: mpsc::OwnedPermit<Op>,
    handle: &'a StorageHandle,
}

impl std::fmt::Debug for DepositSlot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DepositSlot(..)")
    }
}

impl DepositSlot<'_> {
    /// Reserves `n` new mailbox ids for a deposit to `n` recipients ([`Op::Deposit`]'s
    /// `first_id`) and returns the first.
    pub fn reserve_ids(&self, n: usize) -> u64 {
        self.handle.ids.fetch_add(n as u64, Relaxed) + 1
    }

    /// Queues the deposit (its ids reserved with this slot); never waits.
    pub fn send(self, op: Op) {
        self.handle.tx.send(self.permit, op, false);
    }

    /// Queues the deposit once the tasks that are ready have run: for a deposit just pushed
    /// to a listening recipient, so that waking the writer does not delay the push (see
    /// `handoff`). What is queued meanwhile goes behind it. Needs a Tokio runtime.
    pub fn send_after_ready_tasks(self, op: Op) {
        self.handle.tx.send(self.permit, op, true);
    }
}

impl StorageHandle {
    /// A place in the queue for a deposit, without waiting: a full queue is
    /// [`OpError::Busy`]. After a failed flush (see `sync`) deposits are refused here, so
    /// no more ids go to listeners that a restart could issue again.
    pub fn try_deposit_slot(&self) -> Result<DepositSlot<'_>, OpError> {
        self.check_flushing()?;
        Ok(DepositSlot {
            permit: self.tx.try_reserve()?,
            handle: self,
        })
    }

    /// A place in the queue for a deposit, waiting for room.
    pub async fn deposit_slot(&self) -> Result<DepositSlot<'_>, OpError> {
        self.check_flushing()?;
        Ok(DepositSlot {
            permit: self.tx.reserve().await?,
            handle: self,
        })
    }

    fn check_flushing(&self) -> Result<(), OpError> {
        if self.broken.load(Relaxed) {
            return Err(OpError::Internal(
                "an earlier disk flush failed; restart the relay".into(),
            ));
        }
        Ok(())
    }

    /// Queues a deposit to `recipients` mailboxes, waiting for room: `make` builds it with
    /// the first of the ids reserved for it.
    pub async fn submit_deposit(
        &self,
        recipients: usize,
        make: impl FnOnce(u64) -> Op,
    ) -> Result<(), OpError> {
        let slot = self.deposit_slot().await?;
        let first_id = slot.reserve_ids(recipients);
        slot.send(make(first_id));
        Ok(())
    }

    /// Queues an operation (not a deposit: see [`DepositSlot`]) without waiting; a full
    /// queue is [`OpError::Busy`].
    pub fn submit(&self, op: Op) -> Result<(), OpError> {
        self.tx.try_send(op)
    }

    /// Queues an operation (not a deposit: see [`DepositSlot`]), waiting for room.
    pub async fn submit_wait(&self, op: Op) -> Result<(), OpError> {
        self.tx.send_wait(op).await
    }
}

/// Settings for the writer.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Most operations per transaction.
    pub max_batch: usize,
    /// Queue capacity.
    pub queue_depth: usize,
    /// Size limit of the database in bytes (0: none).
    pub max_database_bytes: u64,
    /// Mailbox quotas.
    pub quota: Quota,
    /// Grants of an owner that has not registered them again for this long are deleted
    /// (ms).
    pub grant_idle_ms: u64,
    /// Free disk space kept: below it, operations that store more (deposits, publishing,
    /// registering) fail with `StorageFull` while fetches and acks go on (0: none).
    pub reserve_bytes: u64,
}

/// Most operations the writer takes in one transaction (`storage.max_batch`).
pub const MAX_BATCH: usize = 65_536;
/// Most operations waiting for the writer (`storage.queue_depth`).
pub const MAX_QUEUE_DEPTH: usize = 1 << 20;

/// How far past the highest mailbox id committed a start goes on: more ids than can have
/// been reserved without being on disk when the relay stopped, whatever its settings were
/// (they may have changed since). Ids are reserved only with a place in the writer's queue
/// ([`DepositSlot`]), so those are the deposits in the queue, in the batch being applied,
/// in the commits waiting for the flusher and in those it was flushing (at most
/// `sync::QUEUE` each), each with at most `mailbox::MAX_RECIPIENTS` ids. About 2 × 10¹⁰:
/// ids (`i64`) last for hundreds of millions of starts.
pub(super) fn id_gap(settings: &Settings) -> u64 {
    let depth = settings.queue_depth.max(MAX_QUEUE_DEPTH) as u64;
    let batch = settings.max_batch.max(MAX_BATCH) as u64;
    let ops = depth
        .saturating_add((2 * sync::QUEUE as u64 + 1).saturating_mul(batch))
        .saturating_add(1);
    ops.saturating_mul(crate::wire::mailbox::MAX_RECIPIENTS as u64)
}

impl Storage {
    /// Opens (creating if needed) the database in `dir` and starts the writer thread.
    pub fn open(
        dir: &Path,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Result<(Self, Loaded), OpenError> {
        let path = dir.join(DB_FILE);
        let wrap = |source| OpenError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(wrap)?;
        // Before WAL mode creates its files: SQLite gives them the database file's mode.
        let files = [
            path.clone(),
            path.with_extension("sqlite3-wal"),
            path.with_extension("sqlite3-shm"),
        ];
        for f in files {
            if f.exists() {
                super::private(&f, 0o600).map_err(|source| OpenError::Io {
                    path: f.clone(),
                    source,
                })?;
            }
        }
        schema::init(&conn, settings.max_database_bytes).map_err(wrap)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(wrap)?;
        match version {
            0..=6 => {
                let steps: [fn(&Connection) -> rusqlite::Result<()>; 7] = [
                    schema::migrate_v1,
                    schema::migrate_v2,
                    schema::migrate_v3,
                    super::registrations::migrate_v4,
                    schema::migrate_v5,
                    schema::migrate_v6,
                    schema::migrate_v7,
                ];
                for step in &steps[version as usize..] {
                    step(&conn).map_err(wrap)?;
                }
            }
            SCHEMA_VERSION => {}
            found => return Err(OpenError::Schema { path, found }),
        }
        let usage = schema::load_usage(&conn).map_err(wrap)?;
        let index = mailbox::Index::load(&conn).map_err(wrap)?;
        // Ids handed out before a crash but never committed may have reached a listening
        // recipient, which acknowledges them: none of them may name another entry now.
        let issued = schema::issued_seq(&conn).map_err(wrap)?;
        let issued = issued
            .saturating_add(id_gap(&settings))
            .min(i64::MAX as u64);
        schema::set_issued_seq(&conn, issued).map_err(wrap)?;
        let loaded = schema::load_state(&conn, super::now_ms()).map_err(wrap)?;
        let (total_messages, total_bytes) = usage
            .totals()
            .fold((0, 0), |(m, b), u| (m + u.messages, b + u.bytes));
        metrics.set_mailbox_totals(total_messages, total_bytes);
        let restart = checkpoint::Restart::default();
        let checkpointer = checkpoint::Checkpointer::spawn(&path, restart.clone())?;
        // From here on commits do not wait for the disk: the flusher flushes them before
        // anything is answered.
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(wrap)?;
        let broken = Arc::new(AtomicBool::new(false));
        let flusher = sync::Flusher::spawn(&path, metrics.clone(), broken.clone())
            .map_err(OpenError::Thread)?;
        let (tx, rx) = mpsc::channel(settings.queue_depth);
        let ids = Arc::new(AtomicU64::new(issued));
        let writer = writer::Writer::new(
            conn,
            dir.to_path_buf(),
            (usage, index, issued),
            settings,
            metrics,
            (flusher, restart),
        );
        let thread = std::thread::Builder::new()
            .name("tern-relay-storage".into())
            .spawn(move || writer.run(rx))
            .map_err(OpenError::Thread)?;
        Ok((
            Self {
                tx: handoff::Handoff::new(tx),
                ids,
                broken,
                thread: Some(thread),
                checkpointer: Some(checkpointer),
            },
            loaded,
        ))
    }

    /// A sender of operations.
    pub fn handle(&self) -> StorageHandle {
        StorageHandle {
            tx: self.tx.clone(),
            ids: self.ids.clone(),
            broken: self.broken.clone(),
        }
    }

    /// Lets the writer commit everything queued before this call, then stops it and waits
    /// for it to exit. Operations sent later are answered [`OpError::Closed`].
    pub async fn close(mut self) {
        // What is held back goes first (see `handoff`), then the end.
        self.tx.flush();
        if self.tx.send_wait(Op::Shutdown).await.is_err() {
            tracing::error!("storage writer already gone");
        }
        if let Some(t) = self.thread.take() {
            match tokio::task::spawn_blocking(move || t.join()).await {
                Ok(Ok(())) => {}
                _ => tracing::error!("storage thread panicked"),
            }
        }
        if let Some(c) = self.checkpointer.take() {
            let _ = tokio::task::spawn_blocking(move || c.stop()).await;
        }
    }
}

/// A read-only connection for look-ups off the writer thread (WAL lets it read while the
/// writer commits): blob uploads ask which user a device is registered under.
#[derive(Debug)]
pub struct Reader {
    conn: std::sync::Mutex<Connection>,
}

impl Reader {
    /// Opens the database in `dir` read-only; [`Storage::open`] must have created it.
    pub fn open(dir: &Path) -> Result<Self, OpenError> {
        let path = dir.join(DB_FILE);
        let conn = Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .and_then(|c| {
            c.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(c)
        })
        .map_err(|source| OpenError::Sqlite { path, source })?;
        Ok(Self {
            conn: std::sync::Mutex::new(conn),
        })
    }

    /// The user id `device` published its prekey bundle under, if it did: a device
    /// registered at this relay through `/tern/directory/1` (its bundle verified against its
    /// user's signed device list). Blocking; call from a blocking task.
    pub fn device_user(&self, device: &PeerId) -> Result<Option<Vec<u8>>, OpError> {
        let conn = self
            .conn
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        conn.query_row(
            "SELECT user FROM prekey_bundle WHERE device = ?1",
            params![device.to_bytes()],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_err)
    }
}

#[cfg(test)]
fn test_settings(max_messages: u64) -> Settings {
    Settings {
        max_batch: 64,
        queue_depth: 64,
        max_database_bytes: 0,
        quota: Quota::new(max_messages, 1 << 20, 100, 4, 1 << 20, 2),
        grant_idle_ms: 10_000,
        reserve_bytes: 0,
    }
}
