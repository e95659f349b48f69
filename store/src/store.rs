//! Opening a store, and the write transaction every change goes through.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::consts::{
    APPLICATION_ID, CIPHER_PAGE_SIZE, DEFAULT_BUSY_TIMEOUT, DEFAULT_CACHE_KIB, KEYING_ATTEMPTS,
    KEYING_FIRST_BACKOFF, SALT_LEN,
};
use crate::error::{Context, OpenError, WriteError};
use crate::key::{StorageKey, Unlock};
use crate::schema::{self, SCHEMA_VERSION};

/// The first 16 bytes of every unencrypted SQLite file.
const SQLITE_PLAIN_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// How to open a store.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long to wait for another connection's lock before a typed "busy" error.
    /// Default: [`DEFAULT_BUSY_TIMEOUT`].
    pub busy_timeout: Duration,
    /// Cap on the file's size in pages of 4 KiB (`PRAGMA max_page_count`); a write beyond it
    /// fails as "full" and is rolled back. Default: none (the disk is the limit).
    pub max_page_count: Option<u32>,
    /// Page cache size in KiB. Default: [`DEFAULT_CACHE_KIB`].
    pub cache_kib: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            max_page_count: None,
            cache_kib: DEFAULT_CACHE_KIB,
        }
    }
}

impl Options {
    /// Sets the busy timeout.
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }
    /// Sets the page cache size.
    pub fn with_cache_kib(mut self, kib: u32) -> Self {
        self.cache_kib = kib;
        self
    }
    /// Sets the page cap.
    pub fn with_max_page_count(mut self, pages: u32) -> Self {
        self.max_page_count = Some(pages);
        self
    }
}

/// A device's store: one encrypted SQLite file.
///
/// Reads take `&self`; every change goes through [`Store::transaction`] (or a convenience
/// method that wraps one), so it is all-or-nothing.
#[derive(Debug)]
pub struct Store {
    /// The one connection; the node owns the store from one task (`spawn_blocking` for calls).
    pub(crate) conn: Connection,
    /// For error messages.
    path: PathBuf,
    /// A batch is open ([`Store::begin_batch`]): transactions run as savepoints inside it.
    batch: bool,
    /// Transactions and batches committed through this handle ([`Store::commits`]).
    commits: u64,
}

impl Store {
    /// Opens (creating if needed) and migrates the store at `path` with default options.
    pub fn open(path: &Path, unlock: Unlock<'_>) -> Result<Store, OpenError> {
        Self::open_with(path, unlock, &Options::default())
    }

    /// Opens (creating if needed) and migrates the store at `path`.
    pub fn open_with(
        path: &Path,
        unlock: Unlock<'_>,
        options: &Options,
    ) -> Result<Store, OpenError> {
        let mut conn = open_connection(path, unlock, options)?;
        schema::migrate_to(&mut conn, SCHEMA_VERSION).map_err(|e| OpenError::Migrate {
            path: path.to_owned(),
            from: e.from,
            to: e.from + 1,
            source: e.source,
        })?;
        Ok(Store {
            conn,
            path: path.to_owned(),
            batch: false,
            commits: 0,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` in one write transaction: committed if `f` returns `Ok`, rolled back otherwise
    /// (and if the process dies before the commit).
    ///
    /// Inside a batch ([`Store::begin_batch`]) it is a savepoint: `f`'s changes are undone if
    /// it fails, and made durable only when the batch commits.
    pub fn transaction<T, E>(&mut self, f: impl FnOnce(&mut Tx<'_>) -> Result<T, E>) -> Result<T, E>
    where
        E: From<WriteError>,
    {
        let tx = if self.batch {
            TxInner::Savepoint(self.conn.savepoint().write_ctx("begin savepoint")?)
        } else {
            TxInner::Tx(
                self.conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .write_ctx("begin transaction")?,
            )
        };
        let mut tx = Tx { tx };
        let out = f(&mut tx)?;
        let top_level = matches!(tx.tx, TxInner::Tx(_));
        tx.tx.commit().write_ctx("commit transaction")?;
        if top_level {
            self.commits += 1;
        }
        Ok(out)
    }

    /// How many transactions (outside a batch) and batches were committed through this
    /// handle: each is one sync to disk when it changed anything.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    /// Opens a batch: the transactions that follow, until [`Store::end_batch`], commit
    /// together, with one sync to disk instead of one each. Each still applies all or
    /// nothing; a crash before the batch commits loses all of them, so nothing that depends
    /// on them being durable (an acknowledgement, a ciphertext on the wire) may happen before.
    /// Opening a batch while one is open is an error.
    pub fn begin_batch(&mut self) -> Result<(), WriteError> {
        if self.batch {
            return Err(WriteError::OutOfRange {
                op: "begin batch",
                field: "batch",
                reason: "a batch is already open",
            });
        }
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .write_ctx("begin batch")?;
        self.batch = true;
        Ok(())
    }

    /// Commits the open batch (a no-op without one). On failure everything in it is rolled
    /// back.
    pub fn end_batch(&mut self) -> Result<(), WriteError> {
        if !self.batch {
            return Ok(());
        }
        self.batch = false;
        if let Err(e) = self.conn.execute_batch("COMMIT") {
            let _ = self.conn.execute_batch("ROLLBACK");
            return Err(e).write_ctx("commit batch");
        }
        self.commits += 1;
        Ok(())
    }

    /// Whether a batch is open.
    pub fn in_batch(&self) -> bool {
        self.batch
    }

    /// Copies what the WAL holds into the database file, without waiting for readers (a
    /// passive checkpoint). Call it when idle: a commit runs one itself only once the WAL
    /// passes [`crate::consts::WAL_AUTOCHECKPOINT_PAGES`]. Does nothing inside a batch.
    /// Returns how many WAL frames there were and how many are now in the file.
    pub fn checkpoint(&self) -> Result<(u64, u64), WriteError> {
        if self.batch {
            return Ok((0, 0));
        }
        let (log, done): (i64, i64) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
            .write_ctx("checkpoint")?;
        Ok((
            u64::try_from(log).unwrap_or(0),
            u64::try_from(done).unwrap_or(0),
        ))
    }

    /// The schema version of the open file.
    pub fn schema_version(&self) -> Result<u32, crate::ReadError> {
        schema::version(&self.conn).read_ctx("read schema version")
    }
}

/// An open write transaction. Dropping it without [`Store::transaction`] finishing rolls back.
#[derive(Debug)]
pub struct Tx<'a> {
    pub(crate) tx: TxInner<'a>,
}

/// A transaction of its own, or a savepoint inside a batch.
#[derive(Debug)]
pub(crate) enum TxInner<'a> {
    Tx(rusqlite::Transaction<'a>),
    Savepoint(rusqlite::Savepoint<'a>),
}

impl TxInner<'_> {
    fn commit(self) -> rusqlite::Result<()> {
        match self {
            TxInner::Tx(t) => t.commit(),
            TxInner::Savepoint(s) => s.commit(),
        }
    }
}

impl std::ops::Deref for TxInner<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        match self {
            TxInner::Tx(t) => t,
            TxInner::Savepoint(s) => s,
        }
    }
}

/// Keys and configures a connection and checks that the file is a Tern store this code can
/// read; does not migrate.
pub(crate) fn open_connection(
    path: &Path,
    unlock: Unlock<'_>,
    options: &Options,
) -> Result<Connection, OpenError> {
    let io = |source| OpenError::Io {
        path: path.to_owned(),
        source,
    };
    let foreign = |reason: &str| OpenError::Foreign {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let storage = |e: rusqlite::Error| OpenError::Storage {
        path: path.to_owned(),
        source: e.into(),
    };

    let existing_len = match std::fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(io(e)),
    };
    let header = if existing_len > 0 {
        let mut header = [0u8; SALT_LEN];
        let mut file = std::fs::File::open(path).map_err(io)?;
        if existing_len < SALT_LEN as u64 {
            return Err(foreign("shorter than a database header"));
        }
        std::io::Read::read_exact(&mut file, &mut header).map_err(io)?;
        Some(header)
    } else {
        None
    };
    let plaintext = matches!(header, Some(h) if &h == SQLITE_PLAIN_HEADER);

    let key_literal = match unlock {
        #[cfg(feature = "insecure-plaintext")]
        Unlock::InsecurePlaintext => {
            if header.is_some() && !plaintext {
                return Err(foreign("not a plain SQLite file"));
            }
            None
        }
        Unlock::Key(key) => {
            check_encrypted_shape(path, plaintext, existing_len)?;
            let salt = match header {
                Some(h) => h,
                None => random_salt(path)?,
            };
            Some(key.sqlcipher_literal(&salt))
        }
        Unlock::Passphrase { passphrase, params } => {
            check_encrypted_shape(path, plaintext, existing_len)?;
            let salt = match header {
                Some(h) => h,
                None => random_salt(path)?,
            };
            let key = StorageKey::derive(passphrase, &salt, &params).map_err(|source| {
                OpenError::Key {
                    path: path.to_owned(),
                    source,
                }
            })?;
            Some(key.sqlcipher_literal(&salt))
        }
    };

    let (conn, objects) = key_connection(path, key_literal.as_deref().map(String::as_str))?;
    conn.busy_timeout(options.busy_timeout).map_err(storage)?;
    let _mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(storage)?;
    // FULL: a committed message survives power loss, which the "never lose a message"
    // promise needs (the node acknowledges to the relay after the commit).
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA temp_store = MEMORY;",
    )
    .map_err(storage)?;
    // Checkpoints copy the WAL into the file with a sync; SQLite's default runs one inside
    // whichever commit pushes the WAL past 1,000 pages, which puts a pause of tens of ms in
    // the middle of a message's delivery every hundred or so messages. The owner runs them
    // when it is idle instead ([`Store::checkpoint`]); past this many pages a commit still
    // does it itself, so the WAL stays bounded (32 MiB) whoever forgets.
    conn.pragma_update(
        None,
        "wal_autocheckpoint",
        crate::consts::WAL_AUTOCHECKPOINT_PAGES,
    )
    .map_err(storage)?;
    // Negative: a size in KiB rather than in pages.
    conn.pragma_update(None, "cache_size", -i64::from(options.cache_kib))
        .map_err(storage)?;
    if let Some(pages) = options.max_page_count {
        let _: i64 = conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })
            .map_err(storage)?;
    }
    conn.set_prepared_statement_cache_capacity(64);
    // The query planner stability guarantee: a statement's plan never depends on the values
    // bound to it. Without it, SQLite (built with STAT4) marks parameters that could change
    // the plan (a `LIMIT ?`, a term compared with a partial index's condition) and compiles
    // the statement again each time one is bound anew: every run of a cached statement,
    // about a tenth of the node's CPU in a burst. Plans here rest on literals and indexes.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .map_err(storage)?;

    let version = schema::version(&conn).map_err(storage)?;
    if version > SCHEMA_VERSION {
        return Err(OpenError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    if version == 0 && objects > 0 {
        return Err(foreign("it has tables but no Tern schema version"));
    }
    if version > 0 {
        let app = schema::application_id(&conn).map_err(storage)?;
        if app != APPLICATION_ID {
            return Err(foreign("its application id is not Tern's"));
        }
    }
    Ok(conn)
}

/// Serialises the opening and keying of connections in this process.
///
/// `PRAGMA key` on a fresh connection has been seen to fail now and then ("An error occurred
/// with PRAGMA key or rekey"): about once in a few thousand opens under concurrent opens and
/// closes, and once at the first open of a test process on a loaded machine, where three
/// immediate retries failed too. SQLCipher refuses a key only when it is not initialised or
/// cannot allocate its codec context. Its initialisation cannot race with a concurrent open:
/// opening a connection loads auto-extensions under the same static mutex that SQLCipher's
/// initialisation holds (checked by slowing OpenSSL's `RAND_bytes` by 20 ms in a preloaded
/// library: 20 fresh processes each opening 8 stores at once, no failure). The root cause is
/// not pinned down, so opening takes one connection at a time and a failed keying is retried
/// on a fresh connection with a doubling wait ([`KEYING_ATTEMPTS`], starting at
/// [`KEYING_FIRST_BACKOFF`]). Opening is rare, so the wait costs nothing in normal use.
static KEYING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Opens a connection, keys it and reads page 1. Returns the connection and the number of
/// schema objects in the file.
fn key_connection(path: &Path, key_literal: Option<&str>) -> Result<(Connection, i64), OpenError> {
    let storage = |e: rusqlite::Error| OpenError::Storage {
        path: path.to_owned(),
        source: e.into(),
    };
    // A poisoned lock only means another open panicked; the lock guards no data.
    let _guard = KEYING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut attempt = 1;
    loop {
        let conn = Connection::open_with_flags(path, flags).map_err(storage)?;
        // SQLCipher logs its own failures (a wrong key among them) to stderr unless told not
        // to; our typed errors say it all, and nothing about keys belongs in a log.
        conn.execute_batch("PRAGMA cipher_log_level = NONE;")
            .map_err(storage)?;
        if let Some(literal) = key_literal
            && let Err(e) = conn.pragma_update(None, "key", literal)
        {
            // The transient keying failure (see KEYING): a fresh connection, a little later,
            // keys fine.
            if attempt < KEYING_ATTEMPTS {
                drop(conn);
                std::thread::sleep(KEYING_FIRST_BACKOFF * 2u32.pow(attempt - 1));
                attempt += 1;
                continue;
            }
            return Err(storage(e));
        }
        // The first read of page 1 is where a wrong key shows.
        return match schema::object_count(&conn) {
            Ok(n) => Ok((conn, n)),
            Err(e) if e.sqlite_error_code() == Some(rusqlite::ErrorCode::NotADatabase) => {
                Err(OpenError::WrongKey {
                    path: path.to_owned(),
                })
            }
            Err(e) => Err(storage(e)),
        };
    }
}

fn check_encrypted_shape(path: &Path, plaintext: bool, len: u64) -> Result<(), OpenError> {
    if plaintext {
        return Err(OpenError::NotEncrypted {
            path: path.to_owned(),
        });
    }
    if !len.is_multiple_of(CIPHER_PAGE_SIZE) {
        return Err(OpenError::Foreign {
            path: path.to_owned(),
            reason: "its size is not a whole number of database pages".to_owned(),
        });
    }
    Ok(())
}

fn random_salt(path: &Path) -> Result<[u8; SALT_LEN], OpenError> {
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt).map_err(|e| OpenError::Key {
        path: path.to_owned(),
        source: crate::KeyError::Random(e),
    })?;
    Ok(salt)
}

#[cfg(test)]
mod batch_tests {
    use crate::{StorageKey, Store, Unlock, WriteError};

    fn open(path: &std::path::Path) -> Store {
        let mut k = [4u8; 32];
        Store::open(path, Unlock::Key(&StorageKey::from_bytes(&mut k))).unwrap()
    }

    fn ledger(store: &mut Store, byte: u8) -> Result<(), WriteError> {
        store.transaction(|tx| tx.mark_pairwise_seen("d", &[byte; 16], 1))
    }

    #[test]
    fn a_batch_commits_once_and_a_failed_transaction_inside_it_is_undone_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let mut store = open(&path);
        ledger(&mut store, 0).unwrap();
        assert_eq!(store.commits(), 1, "a transaction on its own is a commit");
        store.begin_batch().unwrap();
        assert!(store.in_batch());
        assert!(store.begin_batch().is_err(), "batches do not nest");
        ledger(&mut store, 1).unwrap();
        let failed: Result<(), WriteError> = store.transaction(|tx| {
            tx.mark_pairwise_seen("d", &[2; 16], 1)?;
            Err(WriteError::OutOfRange {
                op: "test",
                field: "x",
                reason: "fails on purpose",
            })
        });
        assert!(failed.is_err());
        // Reads inside the batch see what it wrote so far.
        assert!(store.pairwise_seen("d", &[1; 16]).unwrap());
        assert!(!store.pairwise_seen("d", &[2; 16]).unwrap());
        store.end_batch().unwrap();
        assert!(!store.in_batch());
        assert_eq!(store.commits(), 2, "the batch's transactions commit as one");
        drop(store);
        let store = open(&path);
        assert!(store.pairwise_seen("d", &[1; 16]).unwrap());
        assert!(!store.pairwise_seen("d", &[2; 16]).unwrap());
    }

    #[test]
    fn commits_leave_checkpointing_to_the_owner_until_the_wal_is_large() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(&dir.path().join("c.db"));
        let limit: i64 = store
            .conn
            .query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0))
            .unwrap();
        assert_eq!(limit, crate::consts::WAL_AUTOCHECKPOINT_PAGES);
        for i in 0..50u8 {
            ledger(&mut store, i).unwrap();
        }
        let (log, done) = store.checkpoint().unwrap();
        assert!(log > 0, "the commits stayed in the WAL");
        assert_eq!(
            done, log,
            "a passive checkpoint with no reader copies everything"
        );
        store.begin_batch().unwrap();
        assert_eq!(store.checkpoint().unwrap(), (0, 0), "not inside a batch");
        store.end_batch().unwrap();
    }

    #[test]
    fn a_batch_never_committed_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.db");
        let mut store = open(&path);
        store.begin_batch().unwrap();
        ledger(&mut store, 1).unwrap();
        drop(store); // as a crash would
        let mut store = open(&path);
        assert!(!store.pairwise_seen("d", &[1; 16]).unwrap());
        // Outside a batch a transaction is durable on its own.
        ledger(&mut store, 3).unwrap();
        store.end_batch().unwrap();
        drop(store);
        assert!(open(&path).pairwise_seen("d", &[3; 16]).unwrap());
    }
}
