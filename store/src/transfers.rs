//! Media transfers: the uploads and downloads of encrypted files that a node resumes after a
//! restart.
//!
//! A transfer is keyed by the message it belongs to (an upload: the message it will send once
//! the relay holds the whole file; a download: the received message that references the
//! file). Its `data` is the node's own encoding of what it needs to go on (the media
//! reference with its key, the staging file, where it is sent); the database's encryption
//! seals it. The store keeps the state and the byte counts that progress reports show.

use rusqlite::{OptionalExtension, params};

use crate::consts::MAX_BLOB_BYTES;
use crate::error::{Context, ReadError, WriteError};
use crate::messages::{check_len, message_id, to_i64};
use crate::store::{Store, Tx};
use crate::types::MessageId;

/// Which way a transfer goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Direction {
    /// This device uploads a file it sends.
    Up,
    /// This device downloads a file it received.
    Down,
}

/// Where a transfer stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TransferState {
    /// Waiting to start (or to be asked for: a download over the automatic limit).
    Queued,
    /// Moving bytes, or waiting to retry after a network failure.
    Active,
    /// Finished: the relay holds the whole file (up), or the file is verified on disk (down).
    Done,
    /// Given up for a reason a retry cannot fix (`error` says which).
    Failed,
}

impl TransferState {
    fn code(self) -> i64 {
        match self {
            TransferState::Queued => 0,
            TransferState::Active => 1,
            TransferState::Done => 2,
            TransferState::Failed => 3,
        }
    }

    fn from_code(c: i64) -> Option<Self> {
        Some(match c {
            0 => TransferState::Queued,
            1 => TransferState::Active,
            2 => TransferState::Done,
            3 => TransferState::Failed,
            _ => return None,
        })
    }
}

/// One transfer.
#[derive(Clone, PartialEq, Eq)]
pub struct Transfer {
    /// The message it belongs to.
    pub id: MessageId,
    /// Up or down.
    pub direction: Direction,
    /// Where it stands.
    pub state: TransferState,
    /// The node's encoding of what it needs to go on (holds a file key).
    pub data: Vec<u8>,
    /// Bytes moved and acknowledged so far.
    pub bytes_done: u64,
    /// Bytes to move in all.
    pub bytes_total: u64,
    /// Why it failed, if it did (a short code).
    pub error: Option<String>,
    /// When it was recorded.
    pub created_at_ms: i64,
    /// When it last changed.
    pub updated_at_ms: i64,
}

impl std::fmt::Debug for Transfer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transfer")
            .field("id", &self.id)
            .field("direction", &self.direction)
            .field("state", &self.state)
            .field("bytes_done", &self.bytes_done)
            .field("bytes_total", &self.bytes_total)
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str =
    "id, direction, state, data, bytes_done, bytes_total, error, created_at_ms, updated_at_ms";

type Raw = (
    Vec<u8>,
    i64,
    i64,
    Vec<u8>,
    i64,
    i64,
    Option<String>,
    i64,
    i64,
);

fn raw(r: &rusqlite::Row<'_>) -> rusqlite::Result<Raw> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn decode(op: &'static str, r: Raw) -> Result<Transfer, ReadError> {
    let (id, direction, state, data, done, total, error, created, updated) = r;
    let invalid = |what, reason: String| ReadError::Invalid { op, what, reason };
    Ok(Transfer {
        id: message_id(op, &id)?,
        direction: match direction {
            0 => Direction::Up,
            1 => Direction::Down,
            d => return Err(invalid("direction", d.to_string())),
        },
        state: TransferState::from_code(state)
            .ok_or_else(|| invalid("transfer state", state.to_string()))?,
        data,
        bytes_done: u64::try_from(done).map_err(|_| invalid("bytes done", done.to_string()))?,
        bytes_total: u64::try_from(total).map_err(|_| invalid("bytes total", total.to_string()))?,
        error,
        created_at_ms: created,
        updated_at_ms: updated,
    })
}

impl Tx<'_> {
    /// Records a transfer, replacing the one of the same message.
    pub fn put_transfer(&mut self, t: &Transfer) -> Result<(), WriteError> {
        const OP: &str = "save transfer";
        check_len(OP, "transfer data", t.data.len(), MAX_BLOB_BYTES)?;
        let done = to_i64(OP, "bytes done", t.bytes_done)?;
        let total = to_i64(OP, "bytes total", t.bytes_total)?;
        self.tx
            .prepare_cached(&format!(
                "INSERT OR REPLACE INTO transfers ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
            ))
            .and_then(|mut s| {
                s.execute(params![
                    t.id.0.as_slice(),
                    match t.direction {
                        Direction::Up => 0,
                        Direction::Down => 1,
                    },
                    t.state.code(),
                    t.data,
                    done,
                    total,
                    t.error,
                    t.created_at_ms,
                    t.updated_at_ms,
                ])
            })
            .write_ctx(OP)?;
        Ok(())
    }

    /// Moves a transfer to `state` with `bytes_done` (and the failure code, for
    /// [`TransferState::Failed`]). An unknown transfer is an error.
    pub fn transfer_progress(
        &mut self,
        id: &MessageId,
        state: TransferState,
        bytes_done: u64,
        error: Option<&str>,
        now_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "record transfer progress";
        let n = self
            .tx
            .prepare_cached(
                "UPDATE transfers SET state = ?2, bytes_done = ?3, error = ?4, updated_at_ms = ?5 WHERE id = ?1",
            )
            .and_then(|mut s| {
                s.execute(params![
                    id.0.as_slice(),
                    state.code(),
                    to_i64(OP, "bytes done", bytes_done).unwrap_or(i64::MAX),
                    error,
                    now_ms
                ])
            })
            .write_ctx(OP)?;
        if n == 0 {
            return Err(WriteError::UnknownMessage {
                op: OP,
                message: id.to_string(),
            });
        }
        Ok(())
    }

    /// Forgets a transfer; whether there was one.
    pub fn delete_transfer(&mut self, id: &MessageId) -> Result<bool, WriteError> {
        const OP: &str = "delete transfer";
        let n = self
            .tx
            .execute("DELETE FROM transfers WHERE id = ?1", [id.0.as_slice()])
            .write_ctx(OP)?;
        Ok(n > 0)
    }
}

impl Store {
    /// The transfer of a message, if any.
    pub fn transfer(&self, id: &MessageId) -> Result<Option<Transfer>, ReadError> {
        const OP: &str = "read transfer";
        let raw: Option<Raw> = self
            .conn
            .prepare_cached(&format!("SELECT {COLUMNS} FROM transfers WHERE id = ?1"))
            .and_then(|mut s| s.query_row([id.0.as_slice()], raw).optional())
            .read_ctx(OP)?;
        raw.map(|r| decode(OP, r)).transpose()
    }

    /// Every transfer in one of `states`, oldest first.
    pub fn transfers(&self, states: &[TransferState]) -> Result<Vec<Transfer>, ReadError> {
        const OP: &str = "list transfers";
        let codes: Vec<String> = states.iter().map(|s| s.code().to_string()).collect();
        let rows: Vec<Raw> = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM transfers WHERE state IN ({}) ORDER BY created_at_ms, id",
                codes.join(", ")
            ))
            .and_then(|mut s| s.query_map([], raw)?.collect())
            .read_ctx(OP)?;
        rows.into_iter().map(|r| decode(OP, r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Options, Store};
    use crate::{StorageKey, Unlock};

    fn store(dir: &tempfile::TempDir) -> Store {
        let mut k = [7u8; 32];
        let key = StorageKey::from_bytes(&mut k);
        Store::open_with(
            &dir.path().join("s.db"),
            Unlock::Key(&key),
            &Options::default(),
        )
        .unwrap()
    }

    fn transfer(n: u8, state: TransferState) -> Transfer {
        Transfer {
            id: MessageId([n; 16]),
            direction: Direction::Down,
            state,
            data: vec![9; 40],
            bytes_done: 0,
            bytes_total: 1_000,
            error: None,
            created_at_ms: i64::from(n),
            updated_at_ms: i64::from(n),
        }
    }

    #[test]
    fn saved_moved_listed_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = store(&dir);
        s.transaction(|tx| {
            tx.put_transfer(&transfer(1, TransferState::Active))?;
            tx.put_transfer(&transfer(2, TransferState::Queued))?;
            tx.put_transfer(&transfer(3, TransferState::Done))
        })
        .unwrap();
        s.transaction(|tx| {
            tx.transfer_progress(
                &MessageId([1; 16]),
                TransferState::Failed,
                500,
                Some("hash"),
                9,
            )
        })
        .unwrap();
        let t = s.transfer(&MessageId([1; 16])).unwrap().unwrap();
        assert_eq!((t.state, t.bytes_done), (TransferState::Failed, 500));
        assert_eq!(t.error.as_deref(), Some("hash"));
        assert!(!format!("{t:?}").contains("9, 9"), "Debug hides the data");
        let open = s
            .transfers(&[TransferState::Queued, TransferState::Active])
            .unwrap();
        assert_eq!(open.len(), 1);
        assert_eq!(open[0].id, MessageId([2; 16]));
        assert!(
            s.transaction(|tx| tx.transfer_progress(
                &MessageId([8; 16]),
                TransferState::Done,
                0,
                None,
                1
            ))
            .is_err()
        );
        assert!(
            s.transaction(|tx| tx.delete_transfer(&MessageId([3; 16])))
                .unwrap()
        );
        assert!(s.transfer(&MessageId([3; 16])).unwrap().is_none());
    }
}
