//! The relay's own storage: one SQLite database (WAL, `synchronous=FULL`) owned by one
//! writer thread that commits queued operations in batches (group commit).
//!
//! Every operation carries a oneshot reply that is sent only after the transaction holding
//! it has committed, so an acknowledged deposit is on disk. Each operation runs inside its
//! own savepoint, so one that fails (a full disk, say) is rolled back alone while the rest
//! of the batch commits.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Arc,
    thread::JoinHandle,
    time::Instant,
};

use libp2p::PeerId;
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use tokio::sync::{mpsc, oneshot};

use super::metrics::Metrics;
use super::quota::{self, Key, Tag, Usage};
pub use super::quota::{Quota, Share};
use crate::wire::{
    ErrorCode,
    mailbox::{self, Envelope, Fill, Refusal},
};

/// The database file name inside the data directory.
pub const DB_FILE: &str = "relay.sqlite3";
/// The schema version this build writes (`PRAGMA user_version`); stored records are
/// versioned by it.
pub const SCHEMA_VERSION: i64 = 4;
/// SQLite page size assumed when turning `max_database_bytes` into `max_page_count`.
const PAGE_SIZE: u64 = 4096;
/// Most expired entries deleted in one sweep operation, so a sweep never stalls deposits.
const MAX_EXPIRE_PER_SWEEP: i64 = 50_000;

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

/// Most one-time keys the relay keeps for one device.
pub const MAX_STORED_ONE_TIME_KEYS: i64 = 500;

/// Decides, from the stored signed device list of a user (if any), whether a directory
/// write may go ahead. Runs on the writer thread, inside the transaction, so the decision
/// and the write are atomic.
pub struct ListCheck(pub Box<CheckFn>);

/// The function inside a [`ListCheck`]: given the stored signed list, allow or refuse.
pub type CheckFn = dyn FnOnce(Option<&[u8]>) -> Result<(), ErrorCode> + Send;

impl std::fmt::Debug for ListCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListCheck(..)")
    }
}

/// A stored bundle and, if one was left, the one-time key just removed for a claimer.
pub type Claimed = (Vec<u8>, Option<Vec<u8>>);

/// The result of a durable deposit.
#[derive(Debug, Clone)]
pub struct Deposited {
    /// Relay-wide message id.
    pub message: u64,
    /// Each mailbox the message now sits in.
    pub stored: Vec<Stored>,
    /// Recipients skipped, and why (a full mailbox or share).
    pub refused: Vec<Refusal>,
}

/// One mailbox a deposit now sits in.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    /// The recipient.
    pub peer: PeerId,
    /// Its mailbox id (the recipient's fetch cursor).
    pub id: u64,
    /// How many messages that mailbox now holds.
    pub depth: u64,
    /// In the introductions share.
    pub intro: bool,
}

/// A page of a mailbox.
#[derive(Debug, Clone)]
pub struct Page {
    /// Oldest first.
    pub messages: Vec<Envelope>,
    /// More follow.
    pub more: bool,
}

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

type Reply<T> = oneshot::Sender<Result<T, OpError>>;

/// An operation for the writer thread.
#[derive(Debug)]
pub enum Op {
    /// Store a ciphertext for recipients.
    Deposit {
        /// The authenticated sender.
        sender: PeerId,
        /// Deduplicated recipients, each with the share the deposit counts in.
        recipients: Vec<(PeerId, Share)>,
        /// The payload.
        ciphertext: Vec<u8>,
        /// Now (ms since the epoch).
        now_ms: u64,
        /// Expiry (ms since the epoch).
        expires_ms: u64,
        /// Expiry of an entry in an introductions share (ms since the epoch; at most
        /// `expires_ms`).
        intro_expires_ms: u64,
        /// Told the mailbox ids as soon as the deposit is applied, before its transaction
        /// commits, so live delivery does not wait for the disk (see `docs/protocol.md`).
        early: Option<oneshot::Sender<Vec<Stored>>>,
        /// Answer.
        reply: Reply<Deposited>,
    },
    /// Read a mailbox page.
    Fetch {
        /// The authenticated owner.
        owner: PeerId,
        /// Cursor.
        after: u64,
        /// Most messages.
        limit: u32,
        /// Most ciphertext bytes (at least one message is returned).
        max_bytes: usize,
        /// Now, to hide expired entries not yet swept.
        now_ms: u64,
        /// Answer.
        reply: Reply<Page>,
    },
    /// Delete acknowledged messages from a mailbox.
    Ack {
        /// The authenticated owner.
        owner: PeerId,
        /// Mailbox ids.
        ids: Vec<u64>,
        /// Answer: how many were removed.
        reply: Reply<u32>,
    },
    /// Delete expired entries.
    Expire {
        /// Now (ms since the epoch).
        now_ms: u64,
        /// Answer: how many mailbox entries were removed.
        reply: Reply<u64>,
    },
    /// Set or clear a push endpoint.
    SetPush {
        /// The device.
        owner: PeerId,
        /// The URL, or `None` to remove.
        url: Option<String>,
        /// Answer.
        reply: Reply<()>,
    },
    /// Record when a device was last online.
    SetLastSeen {
        /// The device.
        peer: PeerId,
        /// Ms since the epoch.
        ms: u64,
    },
    /// Replace a presence allow-list.
    SetAllowList {
        /// The device.
        owner: PeerId,
        /// Allowed viewers.
        viewers: Vec<PeerId>,
        /// Answer.
        reply: Reply<()>,
    },
    /// Replace the deposit grants of a mailbox (and mark it closed to deposits without one).
    SetGrants {
        /// The device.
        owner: PeerId,
        /// Token hashes.
        hashes: Vec<[u8; 32]>,
        /// Now (ms since the epoch): grants of an owner who stops refreshing them expire.
        now_ms: u64,
        /// Answer.
        reply: Reply<()>,
    },
    /// Delete what devices keep here (prekeys, allow-lists, push endpoints, last seen) for
    /// devices not seen since `before_ms`, and device lists not published since then.
    ExpireDevices {
        /// The cutoff (ms since the epoch).
        before_ms: u64,
        /// Answer: the devices whose registrations went.
        reply: Reply<Vec<PeerId>>,
    },
    /// How full a mailbox is, and by whom.
    Usage {
        /// The device.
        owner: PeerId,
        /// Answer.
        reply: Reply<mailbox::Usage>,
    },
    /// A no-op that proves the writer commits (health check).
    Ping {
        /// Answer.
        reply: Reply<()>,
    },
    /// Store a user's signed device list if `check` allows it given the stored one.
    PublishList {
        /// The user id.
        user: Vec<u8>,
        /// The signed list.
        body: Vec<u8>,
        /// Successor check.
        check: ListCheck,
        /// Answer.
        reply: Reply<()>,
    },
    /// Read a user's signed device list.
    FetchList {
        /// The user id.
        user: Vec<u8>,
        /// Answer.
        reply: Reply<Option<Vec<u8>>>,
    },
    /// Store a device's bundle (without one-time keys) and add its one-time keys, if
    /// `check` accepts the user's stored device list.
    PublishPrekeys {
        /// The device (peer id bytes).
        device: Vec<u8>,
        /// Its user.
        user: Vec<u8>,
        /// The bundle without one-time keys.
        bundle: Vec<u8>,
        /// One-time keys, each an encoded record.
        one_time: Vec<Vec<u8>>,
        /// Listing check.
        check: ListCheck,
        /// Answer: one-time keys now held.
        reply: Reply<u32>,
    },
    /// Take one prekey of a device: its bundle and a one-time key, removed atomically.
    Claim {
        /// The device (peer id bytes).
        device: Vec<u8>,
        /// The user it must belong to.
        user: Vec<u8>,
        /// Whether a one-time key may be taken; if not (the claim limits), the bundle is
        /// answered without one and the claimer uses the fallback key.
        one_time: bool,
        /// Answer: `None` if the relay holds no bundle for that device and user.
        reply: Reply<Option<Claimed>>,
    },
    /// How many one-time keys the relay holds for a device.
    PrekeyCount {
        /// The device (peer id bytes).
        device: Vec<u8>,
        /// Answer.
        reply: Reply<u32>,
    },
    /// Commit what came before and stop; later operations are answered `Closed`.
    Shutdown,
}

/// Handle to the writer thread. Dropping every handle lets the thread finish the queue,
/// commit and exit; [`Storage::close`] waits for that.
#[derive(Debug)]
pub struct Storage {
    tx: mpsc::Sender<Op>,
    thread: Option<JoinHandle<()>>,
}

/// A cheap cloneable sender of operations.
#[derive(Debug, Clone)]
pub struct StorageHandle {
    tx: mpsc::Sender<Op>,
}

impl StorageHandle {
    /// Queues an operation without waiting; a full queue is [`OpError::Busy`].
    pub fn submit(&self, op: Op) -> Result<(), OpError> {
        self.tx.try_send(op).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => OpError::Busy,
            mpsc::error::TrySendError::Closed(_) => OpError::Closed,
        })
    }

    /// Queues an operation, waiting for room.
    pub async fn submit_wait(&self, op: Op) -> Result<(), OpError> {
        self.tx.send(op).await.map_err(|_| OpError::Closed)
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
        init(&conn, settings.max_database_bytes).map_err(wrap)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(wrap)?;
        match version {
            0..=3 => {
                let steps: [fn(&Connection) -> rusqlite::Result<()>; 4] = [
                    migrate_v1,
                    migrate_v2,
                    migrate_v3,
                    super::registrations::migrate_v4,
                ];
                for step in &steps[version as usize..] {
                    step(&conn).map_err(wrap)?;
                }
            }
            SCHEMA_VERSION => {}
            found => return Err(OpenError::Schema { path, found }),
        }
        let usage = load_usage(&conn).map_err(wrap)?;
        let loaded = load_state(&conn).map_err(wrap)?;
        let (total_messages, total_bytes) = usage
            .iter()
            .filter(|((_, t), _)| *t == Tag::Total)
            .fold((0, 0), |(m, b), (_, u)| (m + u.messages, b + u.bytes));
        metrics.set_mailbox_totals(total_messages, total_bytes);
        let (tx, rx) = mpsc::channel(settings.queue_depth);
        let writer = Writer {
            conn,
            dir: dir.to_path_buf(),
            low: (false, None),
            usage,
            settings,
            metrics,
        };
        let thread = std::thread::Builder::new()
            .name("tern-relay-storage".into())
            .spawn(move || writer.run(rx))
            .map_err(OpenError::Thread)?;
        Ok((
            Self {
                tx,
                thread: Some(thread),
            },
            loaded,
        ))
    }

    /// A sender of operations.
    pub fn handle(&self) -> StorageHandle {
        StorageHandle {
            tx: self.tx.clone(),
        }
    }

    /// Lets the writer commit everything queued before this call, then stops it and waits
    /// for it to exit. Operations sent later are answered [`OpError::Closed`].
    pub async fn close(mut self) {
        if self.tx.send(Op::Shutdown).await.is_err() {
            tracing::error!("storage writer already gone");
        }
        if let Some(t) = self.thread.take() {
            match tokio::task::spawn_blocking(move || t.join()).await {
                Ok(Ok(())) => {}
                _ => tracing::error!("storage thread panicked"),
            }
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

fn init(conn: &Connection, max_database_bytes: u64) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
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

fn migrate_v1(conn: &Connection) -> rusqlite::Result<()> {
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
fn migrate_v2(conn: &Connection) -> rusqlite::Result<()> {
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
fn migrate_v3(conn: &Connection) -> rusqlite::Result<()> {
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

fn peer(bytes: &[u8]) -> Option<PeerId> {
    PeerId::from_bytes(bytes).ok()
}

fn load_usage(conn: &Connection) -> rusqlite::Result<HashMap<Key, Usage>> {
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

fn load_state(conn: &Connection) -> rusqlite::Result<Loaded> {
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

/// The writer thread's state.
struct Writer {
    conn: Connection,
    /// The data directory (its file system's free space is checked against the reserve).
    dir: PathBuf,
    /// Whether free space was below the reserve, and when that was last looked at.
    low: (bool, Option<Instant>),
    /// Committed fill level of every non-empty mailbox and share in one.
    usage: HashMap<Key, Usage>,
    settings: Settings,
    metrics: Arc<Metrics>,
}

/// Signed changes to usage counters.
type Delta = HashMap<Key, (i64, i64)>;

/// An applied operation waiting for the commit to send its reply.
enum Done {
    Deposit(Reply<Deposited>, Result<Deposited, OpError>),
    Fetch(Reply<Page>, Result<Page, OpError>),
    Count(Reply<u32>, Result<u32, OpError>),
    Expired(Reply<u64>, Result<u64, OpError>),
    Unit(Reply<()>, Result<(), OpError>),
    Bytes(Reply<Option<Vec<u8>>>, Result<Option<Vec<u8>>, OpError>),
    Claim(Reply<Option<Claimed>>, Result<Option<Claimed>, OpError>),
    Usage(Reply<mailbox::Usage>, Result<mailbox::Usage, OpError>),
    Peers(Reply<Vec<PeerId>>, Result<Vec<PeerId>, OpError>),
    None,
}

impl Done {
    /// The error this operation ended with, if any.
    fn error(&self) -> Option<OpError> {
        match self {
            Done::Deposit(_, Err(e)) | Done::Fetch(_, Err(e)) => Some(e.clone()),
            Done::Count(_, Err(e)) | Done::Expired(_, Err(e)) | Done::Unit(_, Err(e)) => {
                Some(e.clone())
            }
            _ => None,
        }
    }

    fn send(self, commit_error: Option<&OpError>) {
        fn go<T>(reply: Reply<T>, result: Result<T, OpError>, commit_error: Option<&OpError>) {
            let r = match commit_error {
                Some(e) => Err(e.clone()),
                None => result,
            };
            // The requester may have given up (connection closed); nothing to do then.
            let _ = reply.send(r);
        }
        match self {
            Done::Deposit(r, v) => go(r, v, commit_error),
            Done::Fetch(r, v) => go(r, v, commit_error),
            Done::Count(r, v) => go(r, v, commit_error),
            Done::Expired(r, v) => go(r, v, commit_error),
            Done::Unit(r, v) => go(r, v, commit_error),
            Done::Bytes(r, v) => go(r, v, commit_error),
            Done::Claim(r, v) => go(r, v, commit_error),
            Done::Usage(r, v) => go(r, v, commit_error),
            Done::Peers(r, v) => go(r, v, commit_error),
            Done::None => {}
        }
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(self.settings.max_batch);
        let mut stop = false;
        while let Some(op) = rx.blocking_recv() {
            batch.push(op);
            while batch.len() < self.settings.max_batch {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if let Some(i) = batch.iter().position(|op| matches!(op, Op::Shutdown)) {
                for later in batch.drain(i..) {
                    fail(later, &OpError::Closed);
                }
                stop = true;
            }
            if !batch.is_empty() {
                self.process(&mut batch);
            }
            if stop {
                break;
            }
        }
        rx.close();
        while let Ok(op) = rx.try_recv() {
            fail(op, &OpError::Closed);
        }
        tracing::debug!("storage writer finished its queue");
    }

    /// Commits `batch` in as few transactions as possible. SQLite rolls a whole
    /// transaction back by itself on some errors (a full disk among them); then the
    /// operations applied so far are answered with the error and the rest go on in a
    /// fresh transaction, so acks that free space still work on a full disk.
    fn process(&mut self, batch: &mut Vec<Op>) {
        let mut queue: std::collections::VecDeque<Op> = batch.drain(..).collect();
        while !queue.is_empty() {
            self.process_some(&mut queue);
        }
    }

    /// Whether free disk space is below the reserve (looked at most once a second).
    fn disk_low(&mut self) -> bool {
        if self.settings.reserve_bytes == 0 {
            return false;
        }
        let now = Instant::now();
        if self
            .low
            .1
            .is_none_or(|t| now.duration_since(t) >= DISK_CHECK_INTERVAL)
        {
            let free = super::blobs::disk::free_bytes(&self.dir).unwrap_or(u64::MAX);
            self.low = (free < self.settings.reserve_bytes, Some(now));
        }
        self.low.0
    }

    fn process_some(&mut self, queue: &mut std::collections::VecDeque<Op>) {
        let started = Instant::now();
        let low = self.disk_low();
        let mut done = Vec::with_capacity(queue.len());
        let mut delta = Delta::new();
        let mut tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let err = sql_err(e);
                for op in queue.drain(..) {
                    fail(op, &err);
                }
                return;
            }
        };
        let mut aborted = None;
        while let Some(op) = queue.pop_front() {
            // Below the disk reserve nothing that stores more is taken; what frees space
            // (acks, expiry) and reads go on, so mailboxes drain.
            if low && op.grows() {
                done.push(refuse(op, &OpError::Full));
                continue;
            }
            let d = apply_in_savepoint(&mut tx, op, &self.usage, &mut delta, &self.settings);
            if tx.is_autocommit() {
                // SQLite rolled the transaction back: nothing in it will be committed.
                aborted = Some(
                    d.error()
                        .unwrap_or(OpError::Internal("transaction rolled back".into())),
                );
                done.push(d);
                break;
            }
            done.push(d);
        }
        let n = done.len();
        let commit = match aborted {
            Some(e) => {
                drop(tx);
                Err(e)
            }
            None => tx.commit().map_err(sql_err),
        };
        match &commit {
            Ok(()) => {
                let (mut dm, mut db) = (0i64, 0i64);
                for (key, (m, b)) in delta {
                    if key.1 == Tag::Total {
                        dm += m;
                        db += b;
                    }
                    let u = self.usage.entry(key.clone()).or_default();
                    u.messages = (u.messages as i64 + m).max(0) as u64;
                    u.bytes = (u.bytes as i64 + b).max(0) as u64;
                    if u.messages == 0 {
                        self.usage.remove(&key);
                    }
                }
                self.metrics.add_mailbox_totals(dm, db);
            }
            Err(e) => {
                tracing::error!(error = %e, ops = n, "storage transaction failed; rolled back");
                if let Ok(u) = load_usage(&self.conn) {
                    self.usage = u;
                }
            }
        }
        self.metrics.observe_commit(started.elapsed(), n);
        let err = commit.err();
        for d in done {
            d.send(err.as_ref());
        }
    }
}

impl Op {
    /// Whether the operation stores more than it frees.
    fn grows(&self) -> bool {
        matches!(
            self,
            Op::Deposit { .. }
                | Op::SetPush { url: Some(_), .. }
                | Op::SetAllowList { .. }
                | Op::SetGrants { .. }
                | Op::PublishList { .. }
                | Op::PublishPrekeys { .. }
        )
    }
}

/// How often free disk space is looked at.
const DISK_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Most devices whose registrations one sweep deletes.
const MAX_DEVICES_PER_SWEEP: usize = 10_000;

/// Now, for operations that do not carry it (ms since the epoch).
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn fail(op: Op, err: &OpError) {
    refuse(op, err).send(None);
}

/// The answer to an operation refused with `err`, to send with the batch.
fn refuse(op: Op, err: &OpError) -> Done {
    match op {
        Op::Deposit { reply, .. } => Done::Deposit(reply, Err(err.clone())),
        Op::Fetch { reply, .. } => Done::Fetch(reply, Err(err.clone())),
        Op::Ack { reply, .. } | Op::PublishPrekeys { reply, .. } => {
            Done::Count(reply, Err(err.clone()))
        }
        Op::PublishList { reply, .. } => Done::Unit(reply, Err(err.clone())),
        Op::FetchList { reply, .. } => Done::Bytes(reply, Err(err.clone())),
        Op::Claim { reply, .. } => Done::Claim(reply, Err(err.clone())),
        Op::PrekeyCount { reply, .. } => Done::Count(reply, Err(err.clone())),
        Op::Expire { reply, .. } => Done::Expired(reply, Err(err.clone())),
        Op::SetPush { reply, .. }
        | Op::SetAllowList { reply, .. }
        | Op::SetGrants { reply, .. }
        | Op::Ping { reply } => Done::Unit(reply, Err(err.clone())),
        Op::Usage { reply, .. } => Done::Usage(reply, Err(err.clone())),
        Op::ExpireDevices { reply, .. } => Done::Peers(reply, Err(err.clone())),
        Op::SetLastSeen { .. } | Op::Shutdown => Done::None,
    }
}

/// Runs one operation in a savepoint; on failure the savepoint (and the operation's usage
/// delta) is discarded and the error becomes the reply.
fn apply_in_savepoint(
    tx: &mut Transaction<'_>,
    op: Op,
    usage: &HashMap<Key, Usage>,
    delta: &mut Delta,
    settings: &Settings,
) -> Done {
    let mut local = Delta::new();
    let sp = match tx.savepoint() {
        Ok(sp) => sp,
        Err(e) => {
            fail(op, &sql_err(e));
            return Done::None;
        }
    };
    let mut early_notice = None;
    let (done, ok) = match op {
        Op::Deposit {
            sender,
            recipients,
            ciphertext,
            now_ms,
            expires_ms,
            intro_expires_ms,
            early,
            reply,
        } => {
            let r = deposit(
                &sp,
                sender,
                &recipients,
                &ciphertext,
                now_ms,
                (expires_ms, intro_expires_ms.min(expires_ms)),
                usage,
                delta,
                &mut local,
                settings.quota,
            );
            if let (Some(tx), Ok(d)) = (early, &r) {
                early_notice = Some((tx, d.stored.clone()));
            }
            let ok = r.is_ok();
            (Done::Deposit(reply, r), ok)
        }
        Op::Fetch {
            owner,
            after,
            limit,
            max_bytes,
            now_ms,
            reply,
        } => {
            let r = fetch(&sp, owner, after, limit, max_bytes, now_ms);
            let ok = r.is_ok();
            (Done::Fetch(reply, r), ok)
        }
        Op::Ack { owner, ids, reply } => {
            let r = ack(&sp, owner, &ids, &mut local);
            let ok = r.is_ok();
            (Done::Count(reply, r), ok)
        }
        Op::Expire { now_ms, reply } => {
            let r = expire(&sp, now_ms, &mut local).and_then(|n| {
                expire_grants(&sp, now_ms.saturating_sub(settings.grant_idle_ms))?;
                Ok(n)
            });
            let ok = r.is_ok();
            (Done::Expired(reply, r), ok)
        }
        Op::SetPush { owner, url, reply } => {
            let r = super::registrations::touch(&sp, &owner.to_bytes(), wall_ms())
                .map_err(sql_err)
                .and_then(|()| {
                    match url {
                        Some(u) => sp.execute(
                            "INSERT INTO push_endpoint(owner, url) VALUES (?1, ?2)
                     ON CONFLICT(owner) DO UPDATE SET url = excluded.url",
                            params![owner.to_bytes(), u],
                        ),
                        None => sp.execute(
                            "DELETE FROM push_endpoint WHERE owner = ?1",
                            params![owner.to_bytes()],
                        ),
                    }
                    .map(|_| ())
                    .map_err(sql_err)
                });
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        Op::SetLastSeen { peer, ms } => {
            let r = sp.execute(
                "INSERT INTO last_seen(peer, ms) VALUES (?1, ?2)
                 ON CONFLICT(peer) DO UPDATE SET ms = MAX(ms, excluded.ms)",
                params![peer.to_bytes(), ms as i64],
            );
            if let Err(e) = &r {
                tracing::warn!(error = %e, "cannot record last-seen time");
            }
            (Done::None, r.is_ok())
        }
        Op::SetAllowList {
            owner,
            viewers,
            reply,
        } => {
            let r = super::registrations::touch(&sp, &owner.to_bytes(), wall_ms())
                .map_err(sql_err)
                .and_then(|()| set_allow(&sp, owner, &viewers));
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        Op::SetGrants {
            owner,
            hashes,
            now_ms,
            reply,
        } => {
            let r = super::registrations::touch(&sp, &owner.to_bytes(), now_ms)
                .map_err(sql_err)
                .and_then(|()| set_grants(&sp, owner, &hashes, now_ms));
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        Op::ExpireDevices { before_ms, reply } => {
            let r = super::registrations::expire(&sp, before_ms, MAX_DEVICES_PER_SWEEP)
                .map_err(sql_err);
            let ok = r.is_ok();
            (Done::Peers(reply, r), ok)
        }
        Op::Usage { owner, reply } => {
            let r = usage_of(&sp, owner, &settings.quota);
            let ok = r.is_ok();
            (Done::Usage(reply, r), ok)
        }
        Op::Ping { reply } => (Done::Unit(reply, Ok(())), true),
        Op::PublishList {
            user,
            body,
            check,
            reply,
        } => {
            let r = publish_list(&sp, &user, &body, check).and_then(|()| {
                super::registrations::touch_list(&sp, &user, wall_ms()).map_err(sql_err)
            });
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        Op::FetchList { user, reply } => {
            let r = stored_list(&sp, &user);
            let ok = r.is_ok();
            (Done::Bytes(reply, r), ok)
        }
        Op::PublishPrekeys {
            device,
            user,
            bundle,
            one_time,
            check,
            reply,
        } => {
            let r = publish_prekeys(&sp, &device, &user, &bundle, &one_time, check).and_then(|n| {
                super::registrations::touch(&sp, &device, wall_ms()).map_err(sql_err)?;
                Ok(n)
            });
            let ok = r.is_ok();
            (Done::Count(reply, r), ok)
        }
        Op::Claim {
            device,
            user,
            one_time,
            reply,
        } => {
            let r = claim(&sp, &device, &user, one_time);
            let ok = r.is_ok();
            (Done::Claim(reply, r), ok)
        }
        Op::PrekeyCount { device, reply } => {
            let r = one_time_count(&sp, &device);
            let ok = r.is_ok();
            (Done::Count(reply, r), ok)
        }
        Op::Shutdown => (Done::None, true),
    };
    if ok {
        match sp.commit() {
            Ok(()) => {
                if let Some((tx, stored)) = early_notice {
                    let _ = tx.send(stored);
                }
                for (k, (m, b)) in local {
                    let e = delta.entry(k).or_default();
                    e.0 += m;
                    e.1 += b;
                }
                done
            }
            Err(e) => {
                let err = sql_err(e);
                match done {
                    Done::Deposit(r, _) => Done::Deposit(r, Err(err)),
                    Done::Fetch(r, _) => Done::Fetch(r, Err(err)),
                    Done::Count(r, _) => Done::Count(r, Err(err)),
                    Done::Expired(r, _) => Done::Expired(r, Err(err)),
                    Done::Unit(r, _) => Done::Unit(r, Err(err)),
                    Done::Bytes(r, _) => Done::Bytes(r, Err(err)),
                    Done::Claim(r, _) => Done::Claim(r, Err(err)),
                    Done::Usage(r, _) => Done::Usage(r, Err(err)),
                    Done::Peers(r, _) => Done::Peers(r, Err(err)),
                    Done::None => Done::None,
                }
            }
        }
    } else {
        // Dropping the savepoint rolls it back.
        drop(sp);
        done
    }
}

#[allow(clippy::too_many_arguments)]
fn deposit(
    sp: &Connection,
    sender: PeerId,
    recipients: &[(PeerId, Share)],
    ciphertext: &[u8],
    now_ms: u64,
    (expires_ms, intro_expires_ms): (u64, u64),
    usage: &HashMap<Key, Usage>,
    batch: &Delta,
    local: &mut Delta,
    quota: Quota,
) -> Result<Deposited, OpError> {
    let size = ciphertext.len() as u64;
    let mut accepted = Vec::with_capacity(recipients.len());
    let mut refused = Vec::new();
    for (r, share) in recipients {
        let key = r.to_bytes();
        let col = quota::share_column(share, &sender);
        let intro = *share == Share::Intro;
        match quota.check(&key, &col, intro, size, |k| quota::current(usage, batch, k)) {
            Some(code) => refused.push(Refusal { peer: *r, code }),
            None => accepted.push((*r, key, col, intro)),
        }
    }
    if accepted.is_empty() {
        let code = refused.last().map_or(ErrorCode::BadRequest, |r| r.code);
        return Err(OpError::Quota(code));
    }
    sp.prepare_cached(
        "INSERT INTO message(sender, created_ms, expires_ms, refs, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| {
        st.execute(params![
            sender.to_bytes(),
            now_ms as i64,
            expires_ms as i64,
            accepted.len() as i64,
            ciphertext
        ])
    })
    .map_err(sql_err)?;
    let message = sp.last_insert_rowid();
    let mut stmt = sp
        .prepare_cached(
            "INSERT INTO mailbox(owner, message, size, expires_ms, share, intro)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .map_err(sql_err)?;
    let mut stored = Vec::with_capacity(accepted.len());
    for (peer, key, col, intro) in accepted {
        let expires = if intro { intro_expires_ms } else { expires_ms };
        stmt.execute(params![
            key,
            message,
            size as i64,
            expires as i64,
            col,
            intro
        ])
        .map_err(sql_err)?;
        let seq = sp.last_insert_rowid();
        // Recipients are distinct, so this deposit adds one to each mailbox.
        let depth = quota::current(usage, batch, &(key.clone(), Tag::Total)).0 + 1;
        count(local, &key, Some(&col), intro, 1, size as i64);
        stored.push(Stored {
            peer,
            id: seq as u64,
            depth,
            intro,
        });
    }
    Ok(Deposited {
        message: message as u64,
        stored,
        refused,
    })
}

/// Adds one entry's change to every counter it counts in.
fn count(local: &mut Delta, owner: &[u8], share: Option<&[u8]>, intro: bool, m: i64, b: i64) {
    for k in quota::keys(owner, share, intro) {
        let e = local.entry(k).or_default();
        e.0 += m;
        e.1 += b;
    }
}

fn fetch(
    sp: &Connection,
    owner: PeerId,
    after: u64,
    limit: u32,
    max_bytes: usize,
    now_ms: u64,
) -> Result<Page, OpError> {
    let mut stmt = sp
        .prepare_cached(
            "SELECT m.seq, g.sender, g.created_ms, g.body, m.intro FROM mailbox m JOIN message g ON g.id = m.message
             WHERE m.owner = ?1 AND m.seq > ?2 AND m.expires_ms > ?3 ORDER BY m.seq LIMIT ?4",
        )
        .map_err(sql_err)?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut rows = stmt
        .query(params![
            owner.to_bytes(),
            after,
            now_ms as i64,
            i64::from(limit) + 1
        ])
        .map_err(sql_err)?;
    let mut messages = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    while let Some(row) = rows.next().map_err(sql_err)? {
        let body: Vec<u8> = row.get(3).map_err(sql_err)?;
        if messages.len() as u32 >= limit
            || (!messages.is_empty() && bytes + body.len() > max_bytes)
        {
            more = true;
            break;
        }
        let sender: Vec<u8> = row.get(1).map_err(sql_err)?;
        let Some(sender) = peer(&sender) else {
            return Err(OpError::Internal("stored sender is not a peer id".into()));
        };
        bytes += body.len();
        messages.push(Envelope {
            id: row.get::<_, i64>(0).map_err(sql_err)? as u64,
            sender,
            deposited_ms: row.get::<_, i64>(2).map_err(sql_err)?.max(0) as u64,
            ciphertext: serde_bytes::ByteBuf::from(body),
            intro: row.get::<_, i64>(4).map_err(sql_err)? != 0,
        });
    }
    Ok(Page { messages, more })
}

fn remove_entry(sp: &Connection, message: i64) -> Result<(), OpError> {
    sp.prepare_cached("UPDATE message SET refs = refs - 1 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![message]))
        .map_err(sql_err)?;
    sp.prepare_cached("DELETE FROM message WHERE id = ?1 AND refs <= 0")
        .and_then(|mut s| s.execute(params![message]))
        .map_err(sql_err)?;
    Ok(())
}

fn ack(sp: &Connection, owner: PeerId, ids: &[u64], local: &mut Delta) -> Result<u32, OpError> {
    let key = owner.to_bytes();
    let mut removed = 0u32;
    for &id in ids {
        let Ok(id) = i64::try_from(id) else { continue };
        let row: Option<(i64, i64, Option<Vec<u8>>, bool)> = sp
            .prepare_cached(
                "DELETE FROM mailbox WHERE seq = ?1 AND owner = ?2
                 RETURNING message, size, share, intro",
            )
            .and_then(|mut s| {
                s.query_row(params![id, key], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? != 0))
                })
                .optional()
            })
            .map_err(sql_err)?;
        if let Some((message, size, share, intro)) = row {
            remove_entry(sp, message)?;
            count(local, &key, share.as_deref(), intro, -1, -size);
            removed += 1;
        }
    }
    Ok(removed)
}

fn expire(sp: &Connection, now_ms: u64, local: &mut Delta) -> Result<u64, OpError> {
    let mut stmt = sp
        .prepare_cached(
            "DELETE FROM mailbox WHERE seq IN
               (SELECT seq FROM mailbox WHERE expires_ms <= ?1 LIMIT ?2)
             RETURNING owner, message, size, share, intro",
        )
        .map_err(sql_err)?;
    type Row = (Vec<u8>, i64, i64, Option<Vec<u8>>, bool);
    let rows: Vec<Row> = stmt
        .query_map(params![now_ms as i64, MAX_EXPIRE_PER_SWEEP], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get::<_, i64>(4)? != 0,
            ))
        })
        .and_then(|rows| rows.collect())
        .map_err(sql_err)?;
    for (owner, message, size, share, intro) in &rows {
        remove_entry(sp, *message)?;
        count(local, owner, share.as_deref(), *intro, -1, -size);
    }
    Ok(rows.len() as u64)
}

fn set_grants(
    sp: &Connection,
    owner: PeerId,
    hashes: &[[u8; 32]],
    now_ms: u64,
) -> Result<(), OpError> {
    let key = owner.to_bytes();
    sp.execute("DELETE FROM deposit_grant WHERE owner = ?1", params![key])
        .map_err(sql_err)?;
    let mut stmt = sp
        .prepare_cached("INSERT OR IGNORE INTO deposit_grant(owner, hash) VALUES (?1, ?2)")
        .map_err(sql_err)?;
    for h in hashes {
        stmt.execute(params![key, h.as_slice()]).map_err(sql_err)?;
    }
    sp.execute(
        "INSERT INTO grant_owner(owner, updated_ms) VALUES (?1, ?2)
         ON CONFLICT(owner) DO UPDATE SET updated_ms = excluded.updated_ms",
        params![key, now_ms as i64],
    )
    .map_err(sql_err)?;
    Ok(())
}

/// Deletes the grants of owners that last registered them before `before_ms`: their
/// mailboxes open again (sender shares) until they come back and register.
fn expire_grants(sp: &Connection, before_ms: u64) -> Result<(), OpError> {
    sp.execute(
        "DELETE FROM deposit_grant WHERE owner IN
           (SELECT owner FROM grant_owner WHERE updated_ms < ?1)",
        params![before_ms as i64],
    )
    .and_then(|_| {
        sp.execute(
            "DELETE FROM grant_owner WHERE updated_ms < ?1",
            params![before_ms as i64],
        )
    })
    .map(|_| ())
    .map_err(sql_err)
}

/// Who fills `owner`'s mailbox: totals and the largest shares.
fn usage_of(sp: &Connection, owner: PeerId, q: &Quota) -> Result<mailbox::Usage, OpError> {
    let key = owner.to_bytes();
    let mut stmt = sp
        .prepare_cached(
            "SELECT share, intro, COUNT(*), SUM(size) FROM mailbox WHERE owner = ?1
             GROUP BY share, intro",
        )
        .map_err(sql_err)?;
    let rows: Vec<(Option<Vec<u8>>, bool, i64, i64)> = stmt
        .query_map(params![key], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? != 0, r.get(2)?, r.get(3)?))
        })
        .and_then(|rows| rows.collect())
        .map_err(sql_err)?;
    let mut u = mailbox::Usage {
        quota: Fill {
            messages: q.max_messages,
            bytes: q.max_bytes,
        },
        share_quota: Fill {
            messages: q.share_messages,
            bytes: q.share_bytes,
        },
        intro_quota: Fill {
            messages: q.intro_messages,
            bytes: q.intro_bytes,
        },
        ..mailbox::Usage::default()
    };
    let mut senders: HashMap<PeerId, Fill> = HashMap::new();
    for (share, intro, m, b) in rows {
        let f = Fill {
            messages: m.max(0) as u64,
            bytes: b.max(0) as u64,
        };
        u.total.messages += f.messages;
        u.total.bytes += f.bytes;
        if intro {
            u.intro.messages += f.messages;
            u.intro.bytes += f.bytes;
        }
        match share.as_deref() {
            Some([b'g', h @ ..]) => {
                if let Ok(h) = <[u8; 32]>::try_from(h) {
                    u.grants.push((serde_bytes::ByteArray::new(h), f));
                }
            }
            Some([b's', p @ ..]) => {
                if let Some(p) = peer(p) {
                    let e = senders.entry(p).or_default();
                    e.messages += f.messages;
                    e.bytes += f.bytes;
                }
            }
            _ => {}
        }
    }
    u.grants.sort_by_key(|g| std::cmp::Reverse(g.1.bytes));
    u.grants.truncate(mailbox::MAX_USAGE_SHARES);
    u.senders = senders.into_iter().collect();
    u.senders.sort_by_key(|s| std::cmp::Reverse(s.1.bytes));
    u.senders.truncate(mailbox::MAX_USAGE_SHARES);
    u.registered = sp
        .prepare_cached("SELECT COUNT(*) FROM deposit_grant WHERE owner = ?1")
        .and_then(|mut s| s.query_row(params![key], |r| r.get::<_, i64>(0)))
        .map_err(sql_err)?
        .max(0) as u32;
    Ok(u)
}

fn set_allow(sp: &Connection, owner: PeerId, viewers: &[PeerId]) -> Result<(), OpError> {
    let key = owner.to_bytes();
    sp.execute("DELETE FROM presence_allow WHERE owner = ?1", params![key])
        .map_err(sql_err)?;
    let mut stmt = sp
        .prepare_cached("INSERT OR IGNORE INTO presence_allow(owner, viewer) VALUES (?1, ?2)")
        .map_err(sql_err)?;
    for v in viewers {
        stmt.execute(params![key, v.to_bytes()]).map_err(sql_err)?;
    }
    Ok(())
}

fn stored_list(sp: &Connection, user: &[u8]) -> Result<Option<Vec<u8>>, OpError> {
    sp.prepare_cached("SELECT body FROM device_list WHERE user = ?1")
        .and_then(|mut s| s.query_row(params![user], |r| r.get(0)).optional())
        .map_err(sql_err)
}

fn publish_list(
    sp: &Connection,
    user: &[u8],
    body: &[u8],
    check: ListCheck,
) -> Result<(), OpError> {
    let stored = stored_list(sp, user)?;
    (check.0)(stored.as_deref()).map_err(OpError::Refused)?;
    sp.execute(
        "INSERT INTO device_list(user, body) VALUES (?1, ?2)
         ON CONFLICT(user) DO UPDATE SET body = excluded.body",
        params![user, body],
    )
    .map_err(sql_err)?;
    Ok(())
}

fn publish_prekeys(
    sp: &Connection,
    device: &[u8],
    user: &[u8],
    bundle: &[u8],
    one_time: &[Vec<u8>],
    check: ListCheck,
) -> Result<u32, OpError> {
    let stored = stored_list(sp, user)?;
    (check.0)(stored.as_deref()).map_err(OpError::Refused)?;
    sp.execute(
        "INSERT INTO prekey_bundle(device, user, bundle) VALUES (?1, ?2, ?3)
         ON CONFLICT(device) DO UPDATE SET user = excluded.user, bundle = excluded.bundle",
        params![device, user, bundle],
    )
    .map_err(sql_err)?;
    let count = |sp: &Connection| -> Result<i64, OpError> {
        sp.query_row(
            "SELECT COUNT(*) FROM one_time_key WHERE device = ?1",
            params![device],
            |r| r.get(0),
        )
        .map_err(sql_err)
    };
    if count(sp)? + one_time.len() as i64 > MAX_STORED_ONE_TIME_KEYS {
        return Err(OpError::Refused(ErrorCode::QuotaCount));
    }
    let mut stmt = sp
        .prepare_cached("INSERT OR IGNORE INTO one_time_key(device, key) VALUES (?1, ?2)")
        .map_err(sql_err)?;
    for k in one_time {
        stmt.execute(params![device, k]).map_err(sql_err)?;
    }
    Ok(count(sp)?.max(0) as u32)
}

fn one_time_count(sp: &Connection, device: &[u8]) -> Result<u32, OpError> {
    sp.query_row(
        "SELECT COUNT(*) FROM one_time_key WHERE device = ?1",
        params![device],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u32)
    .map_err(sql_err)
}

fn claim(
    sp: &Connection,
    device: &[u8],
    user: &[u8],
    one_time: bool,
) -> Result<Option<Claimed>, OpError> {
    let row: Option<(Vec<u8>, Vec<u8>)> = sp
        .query_row(
            "SELECT user, bundle FROM prekey_bundle WHERE device = ?1",
            params![device],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql_err)?;
    let Some((owner, bundle)) = row else {
        return Ok(None);
    };
    if owner != user {
        return Ok(None);
    }
    if !one_time {
        return Ok(Some((bundle, None)));
    }
    let key: Option<Vec<u8>> = sp
        .query_row(
            "DELETE FROM one_time_key WHERE id =
               (SELECT id FROM one_time_key WHERE device = ?1 ORDER BY id LIMIT 1)
             RETURNING key",
            params![device],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_err)?;
    Ok(Some((bundle, key)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_messages: u64) -> Settings {
        Settings {
            max_batch: 64,
            queue_depth: 64,
            max_database_bytes: 0,
            quota: Quota::new(max_messages, 1 << 20, 100, 4, 1 << 20, 2),
            grant_idle_ms: 10_000,
            reserve_bytes: 0,
        }
    }

    async fn deposit(
        h: &StorageHandle,
        sender: PeerId,
        to: Vec<PeerId>,
        body: &[u8],
    ) -> Result<Deposited, OpError> {
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Deposit {
            sender,
            recipients: to.into_iter().map(|p| (p, Share::Sender)).collect(),
            ciphertext: body.to_vec(),
            now_ms: 1000,
            expires_ms: 5000,
            intro_expires_ms: 5000,
            early: None,
            reply,
        })
        .await
        .unwrap();
        rx.await.unwrap()
    }

    async fn fetch(h: &StorageHandle, owner: PeerId, now_ms: u64) -> Page {
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Fetch {
            owner,
            after: 0,
            limit: 100,
            max_bytes: 1 << 20,
            now_ms,
            reply,
        })
        .await
        .unwrap();
        rx.await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn fan_out_is_stored_once_and_refcounted() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (storage, _) = Storage::open(dir.path(), settings(10), metrics).unwrap();
        let h = storage.handle();
        let (s, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
        let d = deposit(&h, s, vec![a, b], b"hello").await.unwrap();
        assert_eq!(d.stored.len(), 2);
        let pa = fetch(&h, a, 1000).await;
        let pb = fetch(&h, b, 1000).await;
        assert_eq!(pa.messages.len(), 1);
        assert_eq!(pb.messages[0].ciphertext.as_ref(), b"hello");
        // Only the owner's ack removes the owner's entry.
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Ack {
            owner: b,
            ids: vec![pa.messages[0].id],
            reply,
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 0);
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Ack {
            owner: a,
            ids: vec![pa.messages[0].id],
            reply,
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 1);
        assert!(fetch(&h, a, 1000).await.messages.is_empty());
        assert_eq!(fetch(&h, b, 1000).await.messages.len(), 1);
        // Expired entries are hidden, then swept, and the message row goes with them.
        assert!(fetch(&h, b, 6000).await.messages.is_empty());
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Expire {
            now_ms: 6000,
            reply,
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 1);
        storage.close().await;
        drop(h);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM message", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn quota_counts_within_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _) =
            Storage::open(dir.path(), settings(3), Arc::new(Metrics::default())).unwrap();
        let h = storage.handle();
        let (s, a) = (PeerId::random(), PeerId::random());
        let mut rxs = Vec::new();
        for _ in 0..5 {
            let (reply, rx) = oneshot::channel();
            h.submit_wait(Op::Deposit {
                sender: s,
                recipients: vec![(a, Share::Sender)],
                ciphertext: vec![1; 10],
                now_ms: 0,
                expires_ms: u64::MAX / 2,
                intro_expires_ms: u64::MAX / 2,
                early: None,
                reply,
            })
            .await
            .unwrap();
            rxs.push(rx);
        }
        let mut ok = 0;
        for rx in rxs {
            match rx.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(e.code(), ErrorCode::QuotaCount),
            }
        }
        assert_eq!(ok, 3);
    }

    async fn deposit_as(
        h: &StorageHandle,
        sender: PeerId,
        to: PeerId,
        share: Share,
        now_ms: u64,
    ) -> Result<Deposited, OpError> {
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Deposit {
            sender,
            recipients: vec![(to, share)],
            ciphertext: vec![1; 10],
            now_ms,
            expires_ms: now_ms + 100_000,
            intro_expires_ms: now_ms + 1_000,
            early: None,
            reply,
        })
        .await
        .unwrap();
        rx.await.unwrap()
    }

    async fn usage(h: &StorageHandle, owner: PeerId) -> mailbox::Usage {
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Usage { owner, reply }).await.unwrap();
        rx.await.unwrap().unwrap()
    }

    /// Shares survive a restart (they are counted again from the stored entries), an ack
    /// frees the share it counted in, introductions expire sooner, and the owner's usage
    /// view names each share.
    #[tokio::test]
    async fn shares_are_counted_freed_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = settings(8);
        st.quota = Quota::new(8, 1 << 20, 50, 3, 1 << 20, 2);
        let (storage, _) = Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
        let h = storage.handle();
        let (owner, friend, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
        let g = Share::Grant([9; 32]);
        for _ in 0..4 {
            deposit_as(&h, friend, owner, g.clone(), 0).await.unwrap();
        }
        let e = deposit_as(&h, friend, owner, g.clone(), 0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ShareFull, "half of 8 is the share");
        for _ in 0..2 {
            deposit_as(&h, stranger, owner, Share::Intro, 0)
                .await
                .unwrap();
        }
        let e = deposit_as(&h, stranger, owner, Share::Intro, 0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::IntroFull, "2 per stranger");
        let u = usage(&h, owner).await;
        assert_eq!(u.total.messages, 6);
        assert_eq!(u.intro.messages, 2);
        assert_eq!(
            u.grants,
            vec![(
                serde_bytes::ByteArray::new([9; 32]),
                Fill {
                    messages: 4,
                    bytes: 40
                }
            )]
        );
        assert_eq!(
            u.senders,
            vec![(
                stranger,
                Fill {
                    messages: 2,
                    bytes: 20
                }
            )]
        );
        storage.close().await;
        drop(h);

        // Reopened: the counts come back from the entries.
        let (storage, _) = Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
        let h = storage.handle();
        let e = deposit_as(&h, friend, owner, g.clone(), 0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ShareFull);
        let page = fetch(&h, owner, 0).await;
        assert_eq!(page.messages.iter().filter(|m| m.intro).count(), 2);
        let first_granted = page.messages.iter().find(|m| !m.intro).unwrap().id;
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Ack {
            owner,
            ids: vec![first_granted],
            reply,
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 1);
        deposit_as(&h, friend, owner, g.clone(), 0).await.unwrap();
        // The introductions expire at 1 s, the rest later; the stranger has room again.
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Expire {
            now_ms: 2_000,
            reply,
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 2);
        deposit_as(&h, stranger, owner, Share::Intro, 2_000)
            .await
            .unwrap();
        assert_eq!(usage(&h, owner).await.total.messages, 5);
        storage.close().await;
    }

    #[tokio::test]
    async fn grants_are_replaced_loaded_and_expire_when_not_refreshed() {
        let dir = tempfile::tempdir().unwrap();
        let st = settings(8);
        let (storage, loaded) =
            Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
        assert!(loaded.grants.is_empty());
        let h = storage.handle();
        let (a, b) = (PeerId::random(), PeerId::random());
        for (owner, hashes, now_ms) in [
            (a, vec![[1; 32], [2; 32]], 1_000),
            (a, vec![[3; 32]], 2_000),
            (b, vec![], 50_000),
        ] {
            let (reply, rx) = oneshot::channel();
            h.submit_wait(Op::SetGrants {
                owner,
                hashes,
                now_ms,
                reply,
            })
            .await
            .unwrap();
            rx.await.unwrap().unwrap();
        }
        storage.close().await;
        drop(h);
        let (storage, loaded) =
            Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
        let mut g = loaded.grants.clone();
        g.sort_by_key(|(_, _, t)| *t);
        assert_eq!(g, vec![(a, vec![[3; 32]], 2_000), (b, vec![], 50_000)]);
        // Idle for longer than 10 s: a's grants go, b's (refreshed at 50 s) stay.
        let h = storage.handle();
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Expire {
            now_ms: 55_000,
            reply,
        })
        .await
        .unwrap();
        rx.await.unwrap().unwrap();
        storage.close().await;
        drop(h);
        let (_storage, loaded) =
            Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
        assert_eq!(loaded.grants, vec![(b, vec![], 50_000)]);
    }
}
