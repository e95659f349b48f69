//! What the node keeps to run groups: signed membership operations, this device's sender
//! key per group and the devices that have it, group ciphertexts waiting for their key,
//! and device lists of group members who are not contacts.

use rusqlite::{OptionalExtension, params};

use crate::consts::MAX_BLOB_BYTES;
use crate::error::{Context, ReadError, WriteError};
use crate::messages::check_len;
use crate::store::{Store, Tx};
use crate::types::MessageId;

/// A group ciphertext kept until its sender key or its group is known.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Stashed {
    /// Row id (to remove it).
    pub id: i64,
    /// The device that sent it.
    pub sender_device: String,
    /// The ciphertext.
    pub payload: Vec<u8>,
    /// When it arrived (this device's clock).
    pub received_at_ms: i64,
}

/// An owed row: message id, user, distribution, ciphertext, owed at (ms), message rowid.
type OwedRow = (Vec<u8>, String, Vec<u8>, Vec<u8>, i64, i64);

/// A group message (or membership change) owed to a member who could not be reached when it
/// was sent.
#[derive(Clone, PartialEq, Eq)]
pub struct OwedGroupMessage {
    /// The message.
    pub message_id: MessageId,
    /// The member.
    pub user_id: String,
    /// The sender key as of that message (secret); empty for a membership change.
    pub distribution: zeroize::Zeroizing<Vec<u8>>,
    /// The group ciphertext; empty for a membership change (the operation is the stored
    /// message's body).
    pub ciphertext: Vec<u8>,
    /// Where this row stands in the order owed messages are read in: pass it to
    /// [`Store::owed_group_messages`] to read the rows after it.
    pub position: OwedPosition,
}

/// A sender key as this device sent it with one group message.
#[derive(Clone, PartialEq, Eq)]
pub struct SentKey {
    /// The Megolm session id.
    pub session_id: String,
    /// The group message it went with.
    pub message_id: MessageId,
    /// The group, as hex.
    pub group_id: String,
    /// The key as of that message (a `SenderKeyDistribution` record; secret).
    pub distribution: zeroize::Zeroizing<Vec<u8>>,
    /// That message's group ciphertext.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for SentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentKey")
            .field("session_id", &self.session_id)
            .field("message_id", &self.message_id)
            .field("group_id", &self.group_id)
            .finish_non_exhaustive()
    }
}

/// A place in the order owed group messages are read in (oldest first; for one member, in
/// the order they were owed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwedPosition {
    created_at_ms: i64,
    message: i64,
    user_id: String,
}

impl std::fmt::Debug for OwedGroupMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwedGroupMessage")
            .field("message_id", &self.message_id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl Tx<'_> {
    /// Records that the group message `id` is owed to `user_id`, with the sender key as of
    /// that message and its ciphertext.
    pub fn owe_group_message(
        &mut self,
        id: MessageId,
        user_id: &str,
        distribution: &[u8],
        ciphertext: &[u8],
        now_ms: i64,
    ) -> Result<(), WriteError> {
        const OP: &str = "owe group message";
        check_len(OP, "group message", ciphertext.len(), MAX_BLOB_BYTES)?;
        self.tx
            .prepare_cached(
                "INSERT INTO group_owed (message, user_id, distribution, ciphertext, created_at_ms) \
                 SELECT rowid, ?2, ?3, ?4, ?5 FROM messages WHERE id = ?1 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id.0.as_slice(), user_id, distribution, ciphertext, now_ms]))
            .write_ctx(OP)?;
        Ok(())
    }

    /// Settles an owed group message (it is in the outbox now).
    pub fn settle_owed_group_message(
        &mut self,
        id: MessageId,
        user_id: &str,
    ) -> Result<(), WriteError> {
        self.tx
            .prepare_cached(
                "DELETE FROM group_owed WHERE user_id = ?2 AND message = (SELECT rowid FROM messages WHERE id = ?1)",
            )
            .and_then(|mut s| s.execute(params![id.0.as_slice(), user_id]))
            .write_ctx("settle owed group message")?;
        Ok(())
    }

    /// Stores a signed membership operation; returns whether it is new.
    pub fn save_group_op(
        &mut self,
        group_id: &str,
        hash: &[u8],
        op: &[u8],
        now_ms: i64,
    ) -> Result<bool, WriteError> {
        const OP: &str = "save group operation";
        check_len(OP, "group operation", op.len(), MAX_BLOB_BYTES)?;
        let n = self
            .tx
            .prepare_cached(
                "INSERT INTO group_ops (group_id, hash, op, received_at_ms) VALUES (?1, ?2, ?3, ?4) \
                 ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![group_id, hash, op, now_ms]))
            .write_ctx(OP)?;
        Ok(n > 0)
    }

    /// Retires this device's sender keys in `groups`: the next message in each makes a new
    /// key, shared only with the member devices listed then (a device was revoked).
    pub fn retire_group_sender_keys(&mut self, groups: &[String]) -> Result<(), WriteError> {
        const OP: &str = "retire sender keys";
        let mut stmt = self
            .tx
            .prepare_cached("DELETE FROM group_sender_keys WHERE group_id = ?1")
            .write_ctx(OP)?;
        for g in groups {
            stmt.execute([g]).write_ctx(OP)?;
        }
        Ok(())
    }

    /// Records which sender key this device uses for a group and the membership version
    /// it was made for.
    pub fn set_group_sender_key(
        &mut self,
        group_id: &str,
        session_id: &str,
        epoch: u64,
    ) -> Result<(), WriteError> {
        let epoch = i64::try_from(epoch).unwrap_or(i64::MAX);
        self.tx
            .prepare_cached(
                "INSERT INTO group_sender_keys (group_id, session_id, epoch) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (group_id) DO UPDATE SET session_id = excluded.session_id, epoch = excluded.epoch",
            )
            .and_then(|mut s| s.execute(params![group_id, session_id, epoch]))
            .write_ctx("set group sender key")?;
        Ok(())
    }

    /// Records that `devices` were sent the sender key `session_id`, with the group message
    /// `with` (kept by [`Tx::keep_sent_key`]) when one went with it. A device given the key
    /// before keeps the message it was first given it with.
    pub fn share_sender_key(
        &mut self,
        session_id: &str,
        devices: &[String],
        with: Option<MessageId>,
    ) -> Result<(), WriteError> {
        const OP: &str = "record sender key shares";
        let with = with.map(|m| m.0.to_vec());
        let mut stmt = self
            .tx
            .prepare_cached(
                "INSERT INTO group_key_shares (session_id, device, message_id) VALUES (?1, ?2, ?3) \
                 ON CONFLICT DO NOTHING",
            )
            .write_ctx(OP)?;
        for d in devices {
            stmt.execute(params![session_id, d, with]).write_ctx(OP)?;
        }
        Ok(())
    }

    /// Keeps a sender key as it was sent with the group message `message` of `group_id`
    /// (`distribution` is a secret), so a member device that lost it can be sent it again.
    pub fn keep_sent_key(&mut self, sent: &SentKey, now_ms: i64) -> Result<(), WriteError> {
        const OP: &str = "keep a sent sender key";
        check_len(OP, "group message", sent.ciphertext.len(), MAX_BLOB_BYTES)?;
        check_len(OP, "sender key", sent.distribution.len(), MAX_BLOB_BYTES)?;
        self.tx
            .prepare_cached(
                "INSERT INTO group_key_sent \
                 (session_id, message_id, group_id, distribution, ciphertext, created_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    sent.session_id,
                    sent.message_id.0.as_slice(),
                    sent.group_id,
                    sent.distribution.as_slice(),
                    sent.ciphertext,
                    now_ms
                ])
            })
            .write_ctx(OP)?;
        Ok(())
    }

    /// Records that the own group message `id` went under the sender key `session_id`: a
    /// member device asking for it again is sent it only if it was given that key.
    pub fn note_group_message_key(
        &mut self,
        id: MessageId,
        session_id: &str,
    ) -> Result<(), WriteError> {
        self.tx
            .prepare_cached("UPDATE messages SET group_session = ?2 WHERE id = ?1")
            .and_then(|mut s| s.execute(params![id.0.as_slice(), session_id]))
            .write_ctx("note a group message's sender key")?;
        Ok(())
    }

    /// Forgets the sent sender keys kept since before `before_ms`; returns how many.
    pub fn prune_sent_keys(&mut self, before_ms: i64) -> Result<usize, WriteError> {
        self.tx
            .prepare_cached("DELETE FROM group_key_sent WHERE created_at_ms < ?1")
            .and_then(|mut s| s.execute([before_ms]))
            .write_ctx("forget old sent sender keys")
    }

    /// Keeps a group ciphertext for later. Nothing kept is ever pushed out: once `max` are
    /// kept, or the sending device already has `max_per_sender`, the answer is `false` and the
    /// caller leaves the mail where it came from (the relay keeps it and delivers it again),
    /// so no sender can evict what another sent.
    pub fn stash_group_message(
        &mut self,
        sender_device: &str,
        payload: &[u8],
        now_ms: i64,
        max: u32,
        max_per_sender: u32,
    ) -> Result<bool, WriteError> {
        const OP: &str = "stash group message";
        check_len(OP, "group message", payload.len(), MAX_BLOB_BYTES)?;
        let kept: i64 = self
            .tx
            .prepare_cached("SELECT count(*) FROM group_stash WHERE sender_device = ?1")
            .and_then(|mut s| s.query_row([sender_device], |r| r.get(0)))
            .write_ctx(OP)?;
        if kept >= i64::from(max_per_sender) {
            return Ok(false);
        }
        let total: i64 = self
            .tx
            .prepare_cached("SELECT count(*) FROM group_stash")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .write_ctx(OP)?;
        if total >= i64::from(max) {
            return Ok(false);
        }
        self.tx
            .prepare_cached(
                "INSERT INTO group_stash (sender_device, payload, received_at_ms) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| s.execute(params![sender_device, payload, now_ms]))
            .write_ctx(OP)?;
        Ok(true)
    }

    /// Removes a stashed ciphertext (processed, or given up).
    pub fn unstash_group_message(&mut self, id: i64) -> Result<(), WriteError> {
        self.tx
            .prepare_cached("DELETE FROM group_stash WHERE id = ?1")
            .and_then(|mut s| s.execute([id]))
            .write_ctx("unstash group message")?;
        Ok(())
    }

    /// Saves the signed device list of a group member who is not a contact.
    pub fn save_group_peer(&mut self, user_id: &str, device_list: &[u8]) -> Result<(), WriteError> {
        const OP: &str = "save group peer";
        check_len(OP, "device list", device_list.len(), MAX_BLOB_BYTES)?;
        self.tx
            .prepare_cached(
                "INSERT INTO group_peers (user_id, device_list) VALUES (?1, ?2) \
                 ON CONFLICT (user_id) DO UPDATE SET device_list = excluded.device_list",
            )
            .and_then(|mut s| s.execute(params![user_id, device_list]))
            .write_ctx(OP)?;
        Ok(())
    }
}

impl Store {
    /// Every stored membership operation: (group id, operation bytes), in arrival order.
    pub fn group_ops(&self) -> Result<Vec<(String, Vec<u8>)>, ReadError> {
        self.conn
            .prepare_cached("SELECT group_id, op FROM group_ops ORDER BY received_at_ms, hash")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .read_ctx("read group operations")
    }

    /// Every stored membership operation with when this device stored it: (group id,
    /// operation bytes, ms), in arrival order.
    pub fn group_ops_received(&self) -> Result<Vec<(String, Vec<u8>, i64)>, ReadError> {
        self.conn
            .prepare_cached(
                "SELECT group_id, op, received_at_ms FROM group_ops ORDER BY received_at_ms, hash",
            )
            .and_then(|mut s| {
                s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect()
            })
            .read_ctx("read group operations")
    }

    /// This device's sender key for a group: (session id, membership version it was made
    /// for).
    pub fn group_sender_key(&self, group_id: &str) -> Result<Option<(String, u64)>, ReadError> {
        self.conn
            .prepare_cached("SELECT session_id, epoch FROM group_sender_keys WHERE group_id = ?1")
            .and_then(|mut s| {
                s.query_row([group_id], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                })
                .optional()
            })
            .map(|o| o.map(|(s, e)| (s, u64::try_from(e).unwrap_or(0))))
            .read_ctx("read group sender key")
    }

    /// The devices that were sent the sender key `session_id`.
    pub fn sender_key_shares(&self, session_id: &str) -> Result<Vec<String>, ReadError> {
        self.conn
            .prepare_cached("SELECT device FROM group_key_shares WHERE session_id = ?1")
            .and_then(|mut s| s.query_map([session_id], |r| r.get(0))?.collect())
            .read_ctx("read sender key shares")
    }

    /// The sender key `session_id` as this device first sent it to `device`, with the group
    /// message it went with, while it is kept.
    pub fn sent_key_for(
        &self,
        session_id: &str,
        device: &str,
    ) -> Result<Option<SentKey>, ReadError> {
        const OP: &str = "read a sent sender key";
        /// Message id, group, distribution, ciphertext.
        type Row = (Vec<u8>, String, Vec<u8>, Vec<u8>);
        let row: Option<Row> = self
            .conn
            .prepare_cached(
                "SELECT k.message_id, k.group_id, k.distribution, k.ciphertext \
                 FROM group_key_shares s JOIN group_key_sent k \
                 ON k.session_id = s.session_id AND k.message_id = s.message_id \
                 WHERE s.session_id = ?1 AND s.device = ?2",
            )
            .and_then(|mut s| {
                s.query_row(params![session_id, device], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()
            })
            .read_ctx(OP)?;
        row.map(|(id, group_id, distribution, ciphertext)| {
            Ok(SentKey {
                session_id: session_id.to_owned(),
                message_id: crate::messages::message_id(OP, &id)?,
                group_id,
                distribution: zeroize::Zeroizing::new(distribution),
                ciphertext,
            })
        })
        .transpose()
    }

    /// Whether an inbound group session (a sender key received) with this id is held.
    pub fn holds_inbound_group_session(&self, session_id: &str) -> Result<bool, ReadError> {
        let found: Option<i64> = self
            .conn
            .prepare_cached("SELECT 1 FROM inbound_group_sessions WHERE session_id = ?1")
            .and_then(|mut s| s.query_row([session_id], |r| r.get(0)).optional())
            .read_ctx("look up a received sender key")?;
        Ok(found.is_some())
    }

    /// How many group ciphertexts the stash holds.
    pub fn group_stash_len(&self) -> Result<u64, ReadError> {
        let n: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM group_stash")
            .and_then(|mut s| s.query_row([], |r| r.get(0)))
            .read_ctx("count stashed group messages")?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Stashed group ciphertexts (from `sender_device` only, if given), oldest first, at
    /// most `limit`.
    pub fn stashed_group_messages(
        &self,
        sender_device: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Stashed>, ReadError> {
        self.conn
            .prepare_cached(
                "SELECT id, sender_device, payload, received_at_ms FROM group_stash \
                 WHERE ?1 IS NULL OR sender_device = ?1 ORDER BY id LIMIT ?2",
            )
            .and_then(|mut s| {
                s.query_map(params![sender_device, limit], |r| {
                    Ok(Stashed {
                        id: r.get(0)?,
                        sender_device: r.get(1)?,
                        payload: r.get(2)?,
                        received_at_ms: r.get(3)?,
                    })
                })?
                .collect()
            })
            .read_ctx("read stashed group messages")
    }

    /// Owed group messages, oldest first, at most `limit`.
    pub fn owed_group_messages(
        &self,
        after: Option<&OwedPosition>,
        limit: u32,
    ) -> Result<Vec<OwedGroupMessage>, ReadError> {
        const OP: &str = "read owed group messages";
        // Before every real position: rowids and times are not negative.
        let (t, m, u) = after.map_or((i64::MIN, i64::MIN, ""), |p| {
            (p.created_at_ms, p.message, p.user_id.as_str())
        });
        let rows: Vec<OwedRow> = self
            .conn
            .prepare_cached(
                "SELECT m.id, o.user_id, o.distribution, o.ciphertext, o.created_at_ms, o.message \
                 FROM group_owed o JOIN messages m ON m.rowid = o.message \
                 WHERE (o.created_at_ms, o.message, o.user_id) > (?1, ?2, ?3) \
                 ORDER BY o.created_at_ms, o.message, o.user_id LIMIT ?4",
            )
            .and_then(|mut s| {
                s.query_map(params![t, m, u, limit], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })?
                .collect()
            })
            .read_ctx(OP)?;
        rows.into_iter()
            .map(
                |(id, user_id, distribution, ciphertext, created_at_ms, message)| {
                    Ok(OwedGroupMessage {
                        message_id: crate::messages::message_id(OP, &id)?,
                        position: OwedPosition {
                            created_at_ms,
                            message,
                            user_id: user_id.clone(),
                        },
                        user_id,
                        distribution: zeroize::Zeroizing::new(distribution),
                        ciphertext,
                    })
                },
            )
            .collect()
    }

    /// Device lists of group members who are not contacts: (user id, signed list).
    pub fn group_peers(&self) -> Result<Vec<(String, Vec<u8>)>, ReadError> {
        self.conn
            .prepare_cached("SELECT user_id, device_list FROM group_peers")
            .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect())
            .read_ctx("read group peers")
    }
}
