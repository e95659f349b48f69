//! The commands that change a group's membership: create, add, remove and leave. Each signs
//! operations on the current head, checks that they apply, and hands them to
//! [`Engine::commit_ops`], which stores and sends them.

use std::collections::HashSet;

use serde_bytes::ByteArray;
use tern_crypto::group::GroupId;

use super::hex;
use crate::engine::Engine;
use crate::{
    consts::{MAX_GROUP_MEMBERS, MAX_GROUP_TITLE_BYTES, MAX_MEMBERS_PER_OP},
    error::NodeError,
    group::{Action, GroupState, MemberEntry, Op, SignedOp, check_new},
    types::*,
};

impl Engine {
    fn own_entry(&self) -> MemberEntry {
        MemberEntry {
            user: ByteArray::new(*self.me.user.as_bytes()),
            identity_key: ByteArray::new(*self.me.keys.identity.public().as_bytes()),
            name: self.me.config.name.clone(),
            relays: self.home_relay_addrs(),
            admin: true,
        }
    }

    /// Member entries for contacts (names or user ids), refusing unknown contacts, this user
    /// and contacts with an unaccepted identity change.
    fn contact_entries(&self, members: &[String]) -> Result<Vec<MemberEntry>, NodeError> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for m in members {
            let user = self.resolve(m)?;
            if user == self.me.user {
                return Err(NodeError::BadRequest("you cannot add yourself".into()));
            }
            if self.people.pending_identity.contains_key(&user) {
                return Err(NodeError::IdentityChanged(
                    self.people.contacts[&user].contact.display_name.clone(),
                ));
            }
            if !seen.insert(user) {
                continue;
            }
            let c = &self.people.contacts[&user];
            let key: [u8; 32] = c
                .contact
                .identity_key
                .as_slice()
                .try_into()
                .map_err(|_| NodeError::invalid("stored identity key has the wrong length"))?;
            out.push(MemberEntry {
                user: ByteArray::new(*user.as_bytes()),
                identity_key: ByteArray::new(key),
                name: c.contact.display_name.clone(),
                relays: c.contact.relays.clone(),
                admin: false,
            });
        }
        Ok(out)
    }

    pub(super) fn group_create(
        &mut self,
        title: String,
        members: Vec<String>,
    ) -> Result<GroupInfo, NodeError> {
        self.check_not_revoked()?;
        // The title names the group in commands: not a group id (which commands take as
        // one). What it holds is shown escaped, as any admin's title is.
        let title = title.trim();
        if title.is_empty() || title.len() > MAX_GROUP_TITLE_BYTES {
            return Err(NodeError::BadRequest(format!(
                "a group title is 1 to {MAX_GROUP_TITLE_BYTES} bytes"
            )));
        }
        if GroupId::from_hex(title).is_some() {
            return Err(NodeError::BadRequest(format!(
                "{title} is a group id (hex digits), which commands take as one: choose a title"
            )));
        }
        let title = title.to_owned();
        let entries = self.contact_entries(&members)?;
        if entries.len() + 1 > MAX_GROUP_MEMBERS {
            return Err(NodeError::GroupFull {
                group: title,
                members: 1,
                adding: entries.len(),
                max: MAX_GROUP_MEMBERS,
            });
        }
        let salt = *GroupId::random().map_err(NodeError::from)?.as_bytes();
        let id = GroupId::from_bytes(crate::group::group_id(
            self.me.user.as_bytes(),
            self.me.keys.identity.public().as_bytes(),
            &salt,
        ));
        let group = id;
        let mut first = vec![self.own_entry()];
        let split = entries.len().min(MAX_MEMBERS_PER_OP - 1);
        first.extend_from_slice(&entries[..split]);
        let create = SignedOp::sign(
            Op {
                group: ByteArray::new(*id.as_bytes()),
                epoch: 0,
                parents: Vec::new(),
                author: ByteArray::new(*self.me.user.as_bytes()),
                at_ms: self.clock.now_ms(),
                lamport: 1,
                action: Action::Create {
                    title,
                    members: first,
                    salt: ByteArray::new(salt),
                },
            },
            &self.me.keys.identity,
        )
        .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        // The rest joins in operations of at most 64, all committed and sent together.
        let mut state =
            GroupState::genesis(&create).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        let mut ops = vec![create];
        for (n, chunk) in entries[split..].chunks(MAX_MEMBERS_PER_OP).enumerate() {
            let op = SignedOp::sign(
                state.next_op(
                    *self.me.user.as_bytes(),
                    self.clock.now_ms(),
                    2 + n as u64,
                    Action::Add {
                        members: chunk.to_vec(),
                    },
                ),
                &self.me.keys.identity,
            )
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
            state = check_new(&ops, &op)
                .map_err(|e| NodeError::BadRequest(e.to_string()))?
                .state;
            ops.push(op);
        }
        self.commit_ops(&group, ops)?;
        self.group_info(&group)
    }

    fn require_admin(&self, group: &GroupId) -> Result<(), NodeError> {
        let state = self.state(group)?;
        let me = self.me.user.as_bytes();
        if !state.is_member(me) {
            return Err(NodeError::NotMember(state.title.clone()));
        }
        if !state.is_admin(me) {
            return Err(NodeError::NotAdmin(state.title.clone()));
        }
        Ok(())
    }

    pub(super) fn group_add(
        &mut self,
        group: &str,
        members: Vec<String>,
        admin: bool,
    ) -> Result<GroupInfo, NodeError> {
        self.check_not_revoked()?;
        let group = self.resolve_group(group)?;
        self.require_admin(&group)?;
        if members.is_empty() {
            return Err(NodeError::BadRequest(
                "name at least one member to add".into(),
            ));
        }
        let state = self.state(&group)?;
        let entries: Vec<MemberEntry> = self
            .contact_entries(&members)?
            .into_iter()
            .filter(|e| !state.is_member(&e.user.into_array()))
            .map(|e| MemberEntry { admin, ..e })
            .collect();
        if entries.is_empty() {
            return Err(NodeError::BadRequest("they are members already".into()));
        }
        if state.members.len() + entries.len() > MAX_GROUP_MEMBERS {
            return Err(NodeError::GroupFull {
                group: state.title.clone(),
                members: state.members.len(),
                adding: entries.len(),
                max: MAX_GROUP_MEMBERS,
            });
        }
        let adds = entries
            .chunks(MAX_MEMBERS_PER_OP)
            .map(|chunk| Action::Add {
                members: chunk.to_vec(),
            })
            .collect();
        self.issue_many(&group, adds)?;
        self.group_info(&group)
    }

    pub(super) fn group_remove(
        &mut self,
        group: &str,
        members: Vec<String>,
    ) -> Result<GroupInfo, NodeError> {
        self.check_not_revoked()?;
        let group = self.resolve_group(group)?;
        self.require_admin(&group)?;
        let state = self.state(&group)?;
        let mut users = Vec::new();
        for m in &members {
            // A member who is no contact can be named by user id or by the group's name.
            let b = match self.resolve(m) {
                Ok(u) => *u.as_bytes(),
                Err(e) => *state
                    .members
                    .iter()
                    .find(|(id, mm)| hex(*id) == m.to_lowercase() || mm.name == *m)
                    .map(|(id, _)| id)
                    .ok_or(e)?,
            };
            if b == *self.me.user.as_bytes() {
                return Err(NodeError::BadRequest(
                    "to leave a group use `tern group leave`".into(),
                ));
            }
            if !state.is_member(&b) {
                return Err(NodeError::BadRequest(format!("{m} is not a member")));
            }
            if !users.contains(&ByteArray::new(b)) {
                users.push(ByteArray::new(b));
            }
        }
        if users.is_empty() {
            return Err(NodeError::BadRequest(
                "name at least one member to remove".into(),
            ));
        }
        self.issue(&group, Action::Remove { users })?;
        self.group_info(&group)
    }

    pub(super) fn group_leave(&mut self, group: &str) -> Result<GroupInfo, NodeError> {
        self.check_not_revoked()?;
        let group = self.resolve_group(group)?;
        let state = self.state(&group)?;
        if !state.is_member(self.me.user.as_bytes()) {
            return Err(NodeError::NotMember(state.title.clone()));
        }
        self.issue(&group, Action::Leave)?;
        self.group_info(&group)
    }

    /// Signs an operation on the current head and commits it.
    fn issue(&mut self, group: &GroupId, action: Action) -> Result<(), NodeError> {
        self.issue_many(group, vec![action])
    }

    /// Signs operations one on top of the other from the current head, checking each
    /// applies, then commits them together.
    fn issue_many(&mut self, group: &GroupId, actions: Vec<Action>) -> Result<(), NodeError> {
        let (mut lamport, _) = self.conv_state(&group.to_string())?;
        let mut state = self.state(group)?.clone();
        let mut held = self
            .groups
            .by_id
            .get(group)
            .map(|g| g.ops.clone())
            .unwrap_or_default();
        let mut ops = Vec::with_capacity(actions.len());
        for action in actions {
            lamport += 1;
            let op = SignedOp::sign(
                state.next_op(
                    *self.me.user.as_bytes(),
                    self.clock.now_ms(),
                    lamport,
                    action,
                ),
                &self.me.keys.identity,
            )
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
            // Check it applies before anything is stored or sent.
            let before = state.members.len();
            state = check_new(&held, &op)
                .map_err(|e| match e {
                    crate::group::OpError::Full { would, max } => NodeError::GroupFull {
                        group: state.title.clone(),
                        members: before,
                        adding: would - before,
                        max,
                    },
                    other => NodeError::BadRequest(other.to_string()),
                })?
                .state;
            held.push(op.clone());
            ops.push(op);
        }
        self.commit_ops(group, ops)
    }
}
