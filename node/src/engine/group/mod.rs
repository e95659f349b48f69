//! Groups: membership operations, sender keys, fan-out, and receiving group messages.
//!
//! - Membership is the chain of signed operations of [`crate::group`]. Each operation is
//!   stored as a `membership` message in the group's conversation (its id is the first 16
//!   bytes of the operation's hash, so every member stores the same message) and sent to
//!   every member device over its pairwise session; a new member is also sent the chain
//!   before it.
//! - A group text is encrypted once with this device's sender key (Megolm). Member devices
//!   that already have that key get the one ciphertext, stored once in the outbox and
//!   deposited once per relay for all of them; a device that lacks it gets, over Olm, the
//!   key together with the message. The key is replaced whenever the membership changes
//!   (and by [`tern_crypto::group::RotationPolicy`]), and a new key goes only to the member
//!   devices of the moment: a removed member cannot read what is sent after its removal.
//! - A group message whose key or group is not known yet is kept (the stash) and read as
//!   soon as they are; messages from users who are not members are refused.
//!
//! The parts, each an `impl Engine` of its own:
//!
//! - this file: what the engine holds for each group ([`GroupCtx`]), loading it, the group
//!   commands of the API, finding a group and describing it, its history;
//! - `membership`: the commands that change the membership (create, add, remove, leave),
//!   which sign operations and hand them to `ops`;
//! - `ops`: committing operations, recording them in the timeline, sending them to members,
//!   and taking in operations received;
//! - `keys`: sender keys a member device lost, asked for by it and sent again to it;
//! - `outbound`: group texts (sender keys, one ciphertext queued as a fan-out for the engine's
//!   `fanout` to deliver), messages owed to members who could not be reached, and the
//!   pairwise sends to members that `ops` uses;
//! - `peers`: the device lists of members who are not contacts, looked up at their relays;
//! - `inbound`: sender keys and group messages received, the stash of those that cannot be
//!   read yet, batched notifications.
//!
//! Calls between the parts go one way, down that list: `membership` → `ops` → `keys` →
//! `outbound` → `peers` → `inbound`. This file's commands and loading call into the parts; its lookups
//! (`state`, `resolve_group`, `group_info`, `hex`) serve them all.

mod inbound;
pub(crate) mod keys;
mod membership;
mod ops;
mod outbound;
mod peers;

pub(crate) use inbound::Notify;
pub(crate) use keys::KeyRequests;
pub(crate) use ops::membership_info;

use std::collections::HashMap;

use serde_bytes::ByteArray;
use tern_crypto::{UserId, group::GroupId};
use tern_store::ConversationId;

use super::{Engine, GroupCommand};
use crate::{
    consts::LATE_MESSAGE_GRACE_MS,
    error::NodeError,
    group::{Action, GroupState, MemberEntry, Resolved, SignedOp, resolve},
    types::*,
};

/// What the engine holds for one group.
#[derive(Debug, Default)]
pub(crate) struct GroupCtx {
    /// Every operation received or made.
    pub ops: Vec<SignedOp>,
    /// The state derived from them, once the creation is held.
    pub resolved: Option<Resolved>,
    /// When this device stored each operation, ms.
    pub received: HashMap<[u8; 32], i64>,
    /// When former members left (or were removed), as this device learned it, ms: their
    /// messages sent before that and arriving after are shown for a while
    /// ([`crate::consts::LATE_MESSAGE_GRACE_MS`]).
    pub left_at: HashMap<[u8; 16], i64>,
}

impl GroupCtx {
    /// Keeps an operation this device stored at `received` (ms).
    pub(crate) fn hold(&mut self, op: SignedOp, received: i64) {
        self.received.insert(op.hash, received);
        self.ops.push(op);
    }

    /// Derives the state again from the operations held, and when each user who is not a
    /// member now left: when the last applied operation that took them out was stored here.
    pub(crate) fn resolve(&mut self) {
        self.resolved = resolve(&self.ops);
        let mut left_at = HashMap::new();
        let Some(r) = &self.resolved else {
            self.left_at = left_at;
            return;
        };
        for op in self.applied_ops() {
            let gone: Vec<[u8; 16]> = match &op.op.action {
                Action::Remove { users } => users.iter().map(|u| u.into_array()).collect(),
                Action::Leave => vec![op.op.author.into_array()],
                _ => continue,
            };
            let at = self.received.get(&op.hash).copied().unwrap_or_default();
            for u in gone {
                if !r.state.is_member(&u) {
                    left_at.insert(u, at);
                }
            }
        }
        self.left_at = left_at;
    }

    /// The applied operations, in the order they apply.
    fn applied_ops(&self) -> Vec<&SignedOp> {
        let Some(r) = &self.resolved else {
            return Vec::new();
        };
        let by_hash: HashMap<[u8; 32], &SignedOp> = self.ops.iter().map(|o| (o.hash, o)).collect();
        r.applied
            .iter()
            .filter_map(|h| by_hash.get(h).copied())
            .collect()
    }

    /// The entry that last added `user` (an applied creation or addition), for a former
    /// member whose late messages may still be shown.
    pub(crate) fn entry_of(&self, user: &[u8; 16]) -> Option<MemberEntry> {
        self.applied_ops()
            .into_iter()
            .rev()
            .find_map(|op| match &op.op.action {
                Action::Create { members, .. } | Action::Add { members } => members
                    .iter()
                    .find(|m| m.user.into_array() == *user)
                    .cloned(),
                _ => None,
            })
    }

    /// Former members who left less than [`LATE_MESSAGE_GRACE_MS`] before `now`: their
    /// devices are still looked up, so their late messages can be checked.
    pub(crate) fn recently_left(&self, now: i64) -> Vec<([u8; 16], MemberEntry)> {
        self.left_at
            .iter()
            .filter(|(_, at)| now - **at < LATE_MESSAGE_GRACE_MS)
            .filter_map(|(u, _)| Some((*u, self.entry_of(u)?)))
            .collect()
    }

    /// Whether a message from `user`, who is no longer a member, was sent while they were
    /// one: it names membership heads this device holds at which they were a member, and
    /// their leaving reached this device less than a day ago.
    pub(crate) fn sent_while_member(
        &self,
        user: &[u8; 16],
        heads: &[ByteArray<32>],
        now: i64,
    ) -> bool {
        let recent = self
            .left_at
            .get(user)
            .is_some_and(|at| now - at < LATE_MESSAGE_GRACE_MS);
        if !recent || heads.is_empty() {
            return false;
        }
        let heads: Vec<[u8; 32]> = heads.iter().map(|h| h.into_array()).collect();
        crate::group::state_at(&self.ops, &heads).is_some_and(|s| s.is_member(user))
    }
}

/// A user id, group id or other id as lowercase hex.
pub(super) use tern_crypto::hex::encode as hex;

impl Engine {
    /// Loads groups and group peers from the store (at start, and after a rolled-back
    /// batch, with `groups` cleared first).
    pub(crate) fn load_groups(&mut self) -> Result<(), NodeError> {
        for (hex_group, bytes, received) in self.store.group_ops_received()? {
            let Some(group) = GroupId::from_hex(&hex_group) else {
                tracing::error!(group = %hex_group, "a stored group operation names no group id");
                continue;
            };
            match SignedOp::from_bytes(&bytes) {
                Ok(op) => self
                    .groups
                    .by_id
                    .entry(group)
                    .or_default()
                    .hold(op, received),
                Err(e) => tracing::error!(%group, "a stored group operation is unreadable: {e}"),
            }
        }
        for ctx in self.groups.by_id.values_mut() {
            ctx.resolve();
        }
        for (hex_user, list) in self.store.group_peers()? {
            let Some(user) = UserId::from_hex(&hex_user) else {
                continue;
            };
            if self.people.contacts.contains_key(&user) {
                continue;
            }
            if let Some(state) = self.peer_state(&user, &list) {
                self.people.peers.insert(user, state);
            }
        }
        self.people.peers_due = true;
        Ok(())
    }

    pub(crate) fn on_group_command(&mut self, cmd: GroupCommand) {
        match cmd {
            GroupCommand::Create {
                title,
                members,
                reply,
            } => {
                let _ = reply.send(self.group_create(title, members));
            }
            GroupCommand::Add {
                group,
                members,
                admin,
                reply,
            } => {
                let _ = reply.send(self.group_add(&group, members, admin));
            }
            GroupCommand::Remove {
                group,
                members,
                reply,
            } => {
                let _ = reply.send(self.group_remove(&group, members));
            }
            GroupCommand::Leave { group, reply } => {
                let _ = reply.send(self.group_leave(&group));
            }
            GroupCommand::Info { group, reply } => {
                let out = self.resolve_group(&group).and_then(|g| self.group_info(&g));
                let _ = reply.send(out);
            }
            GroupCommand::List(reply) => {
                let mut ids: Vec<GroupId> = self
                    .groups
                    .by_id
                    .iter()
                    .filter(|(_, g)| g.resolved.is_some())
                    .map(|(id, _)| *id)
                    .collect();
                ids.sort();
                let out = ids.iter().map(|g| self.group_info(g)).collect();
                let _ = reply.send(out);
            }
            GroupCommand::Send {
                group,
                text,
                client,
                reply,
            } => {
                let _ = reply.send(self.group_send_once(&group, text, client.as_deref()));
            }
            GroupCommand::History {
                group,
                limit,
                before,
                mark_read,
                reply,
            } => {
                let out = self.group_history(&group, limit, before.as_deref(), &mark_read);
                let _ = reply.send(out);
            }
        }
    }

    pub(crate) fn state(&self, group: &GroupId) -> Result<&GroupState, NodeError> {
        self.groups
            .by_id
            .get(group)
            .and_then(|g| g.resolved.as_ref())
            .map(|r| &r.state)
            .ok_or_else(|| NodeError::UnknownGroup(group.to_string()))
    }

    /// A group by id or (unique, case-insensitive) title; an id that is also another group's
    /// title (an admin chose it) is ambiguous, as for contacts.
    pub(crate) fn resolve_group(&self, name: &str) -> Result<GroupId, NodeError> {
        let by_id = GroupId::from_hex(name).filter(|id| self.state(id).is_ok());
        let lower = name.to_lowercase();
        let mut matches: Vec<GroupId> = self
            .groups
            .by_id
            .iter()
            .filter(|(_, g)| {
                g.resolved
                    .as_ref()
                    .is_some_and(|r| r.state.title.to_lowercase() == lower)
            })
            .map(|(id, _)| *id)
            .collect();
        matches.extend(by_id.filter(|id| !matches.contains(id)));
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(NodeError::UnknownGroup(name.to_owned())),
            _ => Err(NodeError::AmbiguousGroup(name.to_owned())),
        }
    }

    pub(super) fn group_info(&self, group: &GroupId) -> Result<GroupInfo, NodeError> {
        let state = self.state(group)?;
        let me = *self.me.user.as_bytes();
        let mut members: Vec<GroupMemberInfo> = state
            .members
            .iter()
            .map(|(id, m)| {
                let user_id = UserId::from_bytes(*id);
                let name = if id == &me {
                    self.me.config.name.clone()
                } else {
                    self.people
                        .contacts
                        .get(&user_id)
                        .map_or_else(|| m.name.clone(), |c| c.contact.display_name.clone())
                };
                GroupMemberInfo {
                    user_id,
                    name,
                    admin: m.admin,
                }
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name).then(a.user_id.cmp(&b.user_id)));
        let unread = self
            .store
            .conversation(&ConversationId::from(*group))?
            .map_or(0, |c| c.unread_count);
        Ok(GroupInfo {
            id: GroupId::from_bytes(state.id),
            title: state.title.clone(),
            members,
            epoch: state.epoch,
            member: state.is_member(&me),
            admin: state.is_admin(&me),
            unread,
        })
    }

    fn group_history(
        &mut self,
        group: &str,
        limit: Option<u32>,
        before: Option<&str>,
        mark_read: &crate::types::MarkRead,
    ) -> Result<Vec<MessageInfo>, NodeError> {
        let group = self.resolve_group(group)?;
        let conv = ConversationId::from(group);
        let page = self.page(&conv, limit, before)?;
        // Group messages get no read receipts; the mark lowers the unread count.
        self.mark_read_in(&conv, mark_read, false)?;
        // Members who are not contacts are named as the group names them.
        let mut page = self.named(page);
        if let Ok(state) = self.state(&group) {
            for m in page.iter_mut().filter(|m| m.sender_name.is_none()) {
                m.sender_name = UserId::from_hex(&m.sender)
                    .and_then(|u| state.members.get(u.as_bytes()))
                    .map(|member| member.name.clone());
            }
        }
        Ok(page)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::Op;

    fn entry(key: &tern_crypto::IdentityKey, admin: bool) -> MemberEntry {
        MemberEntry {
            user: ByteArray::new(*key.user_id().as_bytes()),
            identity_key: ByteArray::new(*key.public().as_bytes()),
            name: "x".into(),
            relays: vec![],
            admin,
        }
    }

    /// A removed member's late message is shown only when it names a membership at which
    /// they were a member, and only within the grace period after the removal reached here.
    #[test]
    fn late_messages_of_a_removed_member_are_judged_by_the_membership_they_name() {
        let a = tern_crypto::IdentityKey::generate().unwrap();
        let m = tern_crypto::IdentityKey::generate().unwrap();
        let salt = [1; 16];
        let gid = crate::group::group_id(a.user_id().as_bytes(), a.public().as_bytes(), &salt);
        let create = SignedOp::sign(
            Op {
                group: ByteArray::new(gid),
                epoch: 0,
                parents: Vec::new(),
                author: ByteArray::new(*a.user_id().as_bytes()),
                at_ms: 0,
                lamport: 1,
                action: Action::Create {
                    title: "T".into(),
                    members: vec![entry(&a, true), entry(&m, false)],
                    salt: ByteArray::new(salt),
                },
            },
            &a,
        )
        .unwrap();
        let s = GroupState::genesis(&create).unwrap();
        let before: Vec<ByteArray<32>> = s.heads.iter().map(|h| ByteArray::new(*h)).collect();
        let mu = *m.user_id().as_bytes();
        let removal = SignedOp::sign(
            s.next_op(
                *a.user_id().as_bytes(),
                0,
                2,
                Action::Remove {
                    users: vec![ByteArray::new(mu)],
                },
            ),
            &a,
        )
        .unwrap();
        let after = vec![ByteArray::new(removal.hash)];
        let mut ctx = GroupCtx::default();
        ctx.hold(create, 1_000);
        ctx.hold(removal, 5_000);
        ctx.resolve();
        assert_eq!(ctx.left_at.get(&mu), Some(&5_000));
        assert!(ctx.sent_while_member(&mu, &before, 6_000));
        // Sent under the membership that has the removal: refused.
        assert!(!ctx.sent_while_member(&mu, &after, 6_000));
        // Naming nothing, or something not held: refused.
        assert!(!ctx.sent_while_member(&mu, &[], 6_000));
        assert!(!ctx.sent_while_member(&mu, &[ByteArray::new([7; 32])], 6_000));
        // Past the grace period: refused.
        assert!(!ctx.sent_while_member(&mu, &before, 5_000 + LATE_MESSAGE_GRACE_MS));
        // A member never removed has no late messages to judge.
        assert!(!ctx.sent_while_member(a.user_id().as_bytes(), &before, 6_000));
        assert_eq!(ctx.recently_left(6_000).len(), 1);
        assert!(ctx.recently_left(5_000 + LATE_MESSAGE_GRACE_MS).is_empty());
    }
}
