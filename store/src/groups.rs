//! Groups and their members, and media blob metadata.

use rusqlite::{OptionalExtension, params};

use crate::consts::MAX_BLOB_BYTES;
use crate::error::{Context, ReadError, WriteError};
use crate::messages::{check_len, to_i64};
use crate::store::{Store, Tx};
use crate::types::MessageId;

/// A group member.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Member {
    /// The member's user id.
    pub user_id: String,
    /// Role code (defined by the node: member, admin, ...).
    pub role: u8,
    /// When they were added.
    pub added_at_ms: i64,
}

/// Where a media transfer stands.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum BlobState {
    /// Being uploaded by this device.
    Uploading,
    /// Uploaded.
    Uploaded,
    /// Being downloaded.
    Downloading,
    /// On local disk, complete.
    Complete,
    /// Given up.
    Failed,
}

impl BlobState {
    fn code(self) -> i64 {
        match self {
            BlobState::Uploading => 0,
            BlobState::Uploaded => 1,
            BlobState::Downloading => 2,
            BlobState::Complete => 3,
            BlobState::Failed => 4,
        }
    }
    fn from_code(c: i64) -> Option<Self> {
        Some(match c {
            0 => BlobState::Uploading,
            1 => BlobState::Uploaded,
            2 => BlobState::Downloading,
            3 => BlobState::Complete,
            4 => BlobState::Failed,
            _ => return None,
        })
    }
}

/// Metadata of an encrypted media file.
#[derive(Clone, PartialEq, Eq)]
pub struct BlobRecord {
    /// Blob id at the relay.
    pub blob_id: String,
    /// The message that carries it, if any.
    pub message: Option<MessageId>,
    /// MIME type.
    pub mime: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Chunk size of the media cipher.
    pub chunk_size: u32,
    /// The per-file key (kept inside the encrypted database).
    pub file_key: Vec<u8>,
    /// Digest of the ciphertext.
    pub digest: Vec<u8>,
    /// Where the plaintext lives on disk, once there.
    pub local_path: Option<String>,
    /// A small thumbnail.
    pub thumbnail: Option<Vec<u8>>,
    /// Transfer state.
    pub state: BlobState,
    /// Bytes transferred so far (for resuming).
    pub bytes_done: u64,
    /// When it was recorded.
    pub created_at_ms: i64,
}

impl std::fmt::Debug for BlobRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobRecord")
            .field("blob_id", &self.blob_id)
            .field("size", &self.size)
            .field("state", &self.state)
            .field("bytes_done", &self.bytes_done)
            .field("file_key", &"..")
            .finish()
    }
}

impl Tx<'_> {
    /// Creates or renames a group.
    pub fn save_group(
        &mut self,
        group_id: &str,
        name: &str,
        now_ms: i64,
    ) -> Result<(), WriteError> {
        self.tx
            .execute(
                "INSERT INTO groups (group_id, name, created_at_ms) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (group_id) DO UPDATE SET name = excluded.name",
                params![group_id, name, now_ms],
            )
            .write_ctx("save group")?;
        Ok(())
    }

    /// Adds a member (or changes their role).
    pub fn add_member(&mut self, group_id: &str, member: &Member) -> Result<(), WriteError> {
        self.tx
            .execute(
                "INSERT INTO group_members (group_id, user_id, role, added_at_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT (group_id, user_id) DO UPDATE SET role = excluded.role",
                params![group_id, member.user_id, member.role, member.added_at_ms],
            )
            .write_ctx("add group member")?;
        Ok(())
    }

    /// Removes a member. Returns whether they were one.
    pub fn remove_member(&mut self, group_id: &str, user_id: &str) -> Result<bool, WriteError> {
        let n = self
            .tx
            .execute(
                "DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2",
                params![group_id, user_id],
            )
            .write_ctx("remove group member")?;
        Ok(n > 0)
    }

    /// Saves (replaces) a blob record.
    pub fn save_blob(&mut self, b: &BlobRecord) -> Result<(), WriteError> {
        const OP: &str = "save blob";
        check_len(
            OP,
            "thumbnail",
            b.thumbnail.as_ref().map_or(0, Vec::len),
            MAX_BLOB_BYTES,
        )?;
        self.tx
            .execute(
                "INSERT OR REPLACE INTO blobs (blob_id, message, mime, size, chunk_size, file_key, digest, local_path, \
                 thumbnail, state, bytes_done, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    b.blob_id,
                    b.message.map(|m| m.0.to_vec()),
                    b.mime,
                    to_i64(OP, "size", b.size)?,
                    b.chunk_size,
                    b.file_key,
                    b.digest,
                    b.local_path,
                    b.thumbnail,
                    b.state.code(),
                    to_i64(OP, "bytes done", b.bytes_done)?,
                    b.created_at_ms
                ],
            )
            .write_ctx(OP)?;
        Ok(())
    }

    /// Records transfer progress.
    pub fn blob_progress(
        &mut self,
        blob_id: &str,
        state: BlobState,
        bytes_done: u64,
    ) -> Result<(), WriteError> {
        const OP: &str = "record blob progress";
        let n = self
            .tx
            .execute(
                "UPDATE blobs SET state = ?2, bytes_done = ?3 WHERE blob_id = ?1",
                params![blob_id, state.code(), to_i64(OP, "bytes done", bytes_done)?],
            )
            .write_ctx(OP)?;
        if n == 0 {
            return Err(WriteError::UnknownMessage {
                op: OP,
                message: blob_id.to_owned(),
            });
        }
        Ok(())
    }
}

impl Store {
    /// A group's members, by user id.
    pub fn members(&self, group_id: &str) -> Result<Vec<Member>, ReadError> {
        self.conn
            .prepare_cached("SELECT user_id, role, added_at_ms FROM group_members WHERE group_id = ?1 ORDER BY user_id")
            .and_then(|mut s| {
                s.query_map([group_id], |r| {
                    Ok(Member {
                        user_id: r.get(0)?,
                        role: r.get(1)?,
                        added_at_ms: r.get(2)?,
                    })
                })?
                .collect()
            })
            .read_ctx("list group members")
    }

    /// A blob record by id.
    pub fn blob(&self, blob_id: &str) -> Result<Option<BlobRecord>, ReadError> {
        const OP: &str = "read blob";
        type Raw = (
            String,
            Option<Vec<u8>>,
            String,
            i64,
            u32,
            Vec<u8>,
            Vec<u8>,
            Option<String>,
            Option<Vec<u8>>,
            i64,
            i64,
            i64,
        );
        let raw: Option<Raw> = self
            .conn
            .query_row(
                "SELECT blob_id, message, mime, size, chunk_size, file_key, digest, local_path, thumbnail, state, \
                 bytes_done, created_at_ms FROM blobs WHERE blob_id = ?1",
                [blob_id],
                |r| {
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
                        r.get(9)?,
                        r.get(10)?,
                        r.get(11)?,
                    ))
                },
            )
            .optional()
            .read_ctx(OP)?;
        let Some((
            blob_id,
            message,
            mime,
            size,
            chunk_size,
            file_key,
            digest,
            local_path,
            thumbnail,
            state,
            done,
            created,
        )) = raw
        else {
            return Ok(None);
        };
        let invalid = |what, reason: String| ReadError::Invalid {
            op: OP,
            what,
            reason,
        };
        Ok(Some(BlobRecord {
            blob_id,
            message: message
                .map(|m| crate::messages::message_id(OP, &m))
                .transpose()?,
            mime,
            size: u64::try_from(size).map_err(|_| invalid("size", size.to_string()))?,
            chunk_size,
            file_key,
            digest,
            local_path,
            thumbnail,
            state: BlobState::from_code(state)
                .ok_or_else(|| invalid("blob state", state.to_string()))?,
            bytes_done: u64::try_from(done).map_err(|_| invalid("bytes done", done.to_string()))?,
            created_at_ms: created,
        }))
    }
}
