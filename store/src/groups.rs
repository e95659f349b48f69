//! Groups and their members.

use rusqlite::params;

use crate::error::{Context, ReadError, WriteError};
use crate::store::{Store, Tx};

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
}
