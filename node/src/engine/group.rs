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

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use libp2p::PeerId;
use serde_bytes::{ByteArray, ByteBuf};
use tern_crypto::{
    DeviceId, Kind, SignedDeviceList, UserId,
    group::{
        GroupError, GroupId, GroupMessage, InboundSenderKey, OutboundSenderKey, RotationPolicy,
        SenderKeyDistribution,
    },
};
use tern_store::{
    Body as StoreBody, Contact, ConversationId, ConversationKind, CryptoUpdate,
    InboundGroupSession, Inserted, Message, MessageId, OutboundGroupSession, SenderKeyStore,
    Status,
};

use super::{ContactState, Engine, GroupCommand, Internal, device_peer};
use crate::{
    consts::{
        MAX_GROUP_MEMBERS, MAX_GROUP_STASH, MAX_GROUP_STASH_PER_DEVICE, MAX_GROUP_TITLE_BYTES,
        MAX_MEMBERS_PER_OP, NOTIFY_INTERVAL,
    },
    envelope::{Body, Conversation, Envelope},
    error::NodeError,
    group::{Action, GroupState, MemberEntry, Op, Resolved, SignedOp, resolve},
    home::now_ms,
    net::{NetError, rpc},
    types::*,
};

/// Membership operations sent together in one pairwise envelope: at most this many bytes
/// of them (the envelope holds 64 KiB).
const OPS_PER_ENVELOPE_BYTES: usize = 48 * 1024;

/// A stashed group message older than this is given up (and reported).
const STASH_MAX_AGE_MS: i64 = 7 * 24 * 3600 * 1000;

/// One device of a fan-out: device id, its PeerId, its user's relays.
/// A fan-out recipient: its device id, peer id, relays and the grant it issued.
type FanTarget = (
    String,
    PeerId,
    Vec<PeerId>,
    Option<tern_crypto::grant::Grant>,
);

/// What the engine holds for one group.
#[derive(Debug, Default)]
pub(crate) struct GroupCtx {
    /// Every operation received or made.
    pub ops: Vec<SignedOp>,
    /// The agreed chain, once the creation is held.
    pub resolved: Option<Resolved>,
}

/// Batched notifications of one conversation.
#[derive(Debug)]
pub(crate) struct Notify {
    pub pending: u64,
    pub last: Option<Instant>,
}

/// What happened to a group ciphertext.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum GroupOutcome {
    /// Stored, a duplicate, or refused for good.
    Done,
    /// Its key or group is not known yet.
    Wait,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn user_bytes(hex_id: &str) -> Option<[u8; 16]> {
    UserId::from_hex(hex_id).map(|u| *u.as_bytes())
}

/// The message id of a membership operation: the first 16 bytes of its hash.
fn op_message_id(op: &SignedOp) -> MessageId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&op.hash[..16]);
    MessageId(id)
}

/// Whether a mailbox payload is a group (Megolm) message rather than a pairwise one.
pub(crate) fn is_group_payload(payload: &[u8]) -> bool {
    payload.get(1) == Some(&(Kind::GroupMessage as u8))
}

impl Engine {
    /// A user this device can reach: a contact, or a member of a shared group.
    pub(crate) fn known(&self, user: &str) -> Option<&ContactState> {
        self.contacts.get(user).or_else(|| self.peers.get(user))
    }

    /// Loads groups and group peers from the store (at start, and after a rolled-back
    /// batch, with `groups` cleared first).
    pub(crate) fn load_groups(&mut self) -> Result<(), NodeError> {
        for (group, bytes) in self.store.group_ops()? {
            match SignedOp::from_bytes(&bytes) {
                Ok(op) => self.groups.entry(group).or_default().ops.push(op),
                Err(e) => tracing::error!(%group, "a stored group operation is unreadable: {e}"),
            }
        }
        for ctx in self.groups.values_mut() {
            ctx.resolved = resolve(&ctx.ops);
        }
        for (user, list) in self.store.group_peers()? {
            if self.contacts.contains_key(&user) {
                continue;
            }
            if let Some(state) = self.peer_state(&user, &list) {
                self.peers.insert(user, state);
            }
        }
        self.peers_due = true;
        Ok(())
    }

    /// A group member who is not a contact, from the group state and their device list.
    fn peer_state(&self, user: &str, list_bytes: &[u8]) -> Option<ContactState> {
        let ub = user_bytes(user)?;
        let member = self
            .groups
            .values()
            .filter_map(|g| g.resolved.as_ref())
            .find_map(|r| r.state.members.get(&ub))?;
        let list = SignedDeviceList::from_bytes(list_bytes).ok()?;
        let key = tern_crypto::IdentityPublicKey::from_bytes(member.identity_key);
        list.check_identity(&key).ok()?;
        if list.list().user_id.as_bytes() != &ub {
            return None;
        }
        Some(ContactState {
            contact: Contact {
                user_id: user.to_owned(),
                display_name: member.name.clone(),
                verified: false,
                identity_key: member.identity_key.to_vec(),
                device_list: Some(list_bytes.to_vec()),
                device_list_version: list.list().version,
                relays: member.relays.clone(),
            },
            list: Some(list),
            relays: member
                .relays
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect(),
        })
    }

    pub(crate) async fn on_group_command(&mut self, cmd: GroupCommand) {
        match cmd {
            GroupCommand::Create {
                title,
                members,
                reply,
            } => {
                let _ = reply.send(self.group_create(title, members).await);
            }
            GroupCommand::Add {
                group,
                members,
                reply,
            } => {
                let _ = reply.send(self.group_add(&group, members).await);
            }
            GroupCommand::Remove {
                group,
                members,
                reply,
            } => {
                let _ = reply.send(self.group_remove(&group, members).await);
            }
            GroupCommand::Leave { group, reply } => {
                let _ = reply.send(self.group_leave(&group).await);
            }
            GroupCommand::Info { group, reply } => {
                let out = self.resolve_group(&group).and_then(|g| self.group_info(&g));
                let _ = reply.send(out);
            }
            GroupCommand::List(reply) => {
                let mut ids: Vec<String> = self
                    .groups
                    .iter()
                    .filter(|(_, g)| g.resolved.is_some())
                    .map(|(id, _)| id.clone())
                    .collect();
                ids.sort();
                let out = ids.iter().map(|g| self.group_info(g)).collect();
                let _ = reply.send(out);
            }
            GroupCommand::Send { group, text, reply } => {
                let out = match super::send::check_text(&text) {
                    Ok(()) => {
                        self.group_send(&group, None, tern_store::Body::Text(text))
                            .await
                    }
                    Err(e) => Err(e),
                };
                let _ = reply.send(out);
            }
            GroupCommand::History {
                group,
                limit,
                before,
                mark_read,
                reply,
            } => {
                let out = self.group_history(&group, limit, before.as_deref(), mark_read);
                let _ = reply.send(out);
            }
        }
    }

    pub(crate) fn state(&self, group: &str) -> Result<&GroupState, NodeError> {
        self.groups
            .get(group)
            .and_then(|g| g.resolved.as_ref())
            .map(|r| &r.state)
            .ok_or_else(|| NodeError::UnknownGroup(group.to_owned()))
    }

    /// A group by id or (unique, case-insensitive) title.
    pub(crate) fn resolve_group(&self, name: &str) -> Result<String, NodeError> {
        let lower = name.to_lowercase();
        if self.state(&lower).is_ok() {
            return Ok(lower);
        }
        let matches: Vec<&String> = self
            .groups
            .iter()
            .filter(|(_, g)| {
                g.resolved
                    .as_ref()
                    .is_some_and(|r| r.state.title.to_lowercase() == lower)
            })
            .map(|(id, _)| id)
            .collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(NodeError::UnknownGroup(name.to_owned())),
            _ => Err(NodeError::AmbiguousGroup(name.to_owned())),
        }
    }

    fn group_info(&self, group: &str) -> Result<GroupInfo, NodeError> {
        let state = self.state(group)?;
        let me = *self.user.as_bytes();
        let mut members: Vec<GroupMemberInfo> = state
            .members
            .iter()
            .map(|(id, m)| {
                let user_id = hex(id);
                let name = if id == &me {
                    self.config.name.clone()
                } else {
                    self.contacts
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
            .conversation(&ConversationId(group.to_owned()))?
            .map_or(0, |c| c.unread_count);
        Ok(GroupInfo {
            id: group.to_owned(),
            title: state.title.clone(),
            members,
            epoch: state.epoch,
            member: state.is_member(&me),
            admin: state.is_admin(&me),
            unread,
        })
    }

    fn own_entry(&self) -> MemberEntry {
        MemberEntry {
            user: ByteArray::new(*self.user.as_bytes()),
            identity_key: ByteArray::new(*self.keys.identity.public().as_bytes()),
            name: self.config.name.clone(),
            relays: self.home_relays.iter().map(ToString::to_string).collect(),
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
            if user == self.user_hex {
                return Err(NodeError::BadRequest("you cannot add yourself".into()));
            }
            if self.pending_identity.contains_key(&user) {
                return Err(NodeError::IdentityChanged(
                    self.contacts[&user].contact.display_name.clone(),
                ));
            }
            if !seen.insert(user.clone()) {
                continue;
            }
            let c = &self.contacts[&user];
            let key: [u8; 32] = c.contact.identity_key.as_slice().try_into().map_err(|_| {
                NodeError::Crypto("stored identity key has the wrong length".into())
            })?;
            out.push(MemberEntry {
                user: ByteArray::new(
                    user_bytes(&user).ok_or_else(|| NodeError::UnknownContact(user.clone()))?,
                ),
                identity_key: ByteArray::new(key),
                name: c.contact.display_name.clone(),
                relays: c.contact.relays.clone(),
                admin: false,
            });
        }
        Ok(out)
    }

    async fn group_create(
        &mut self,
        title: String,
        members: Vec<String>,
    ) -> Result<GroupInfo, NodeError> {
        self.check_not_revoked()?;
        let title = title.trim().to_owned();
        if title.is_empty() || title.len() > MAX_GROUP_TITLE_BYTES {
            return Err(NodeError::BadRequest(format!(
                "a group title is 1 to {MAX_GROUP_TITLE_BYTES} bytes"
            )));
        }
        let entries = self.contact_entries(&members)?;
        if entries.len() + 1 > MAX_GROUP_MEMBERS {
            return Err(NodeError::GroupFull {
                group: title,
                members: 1,
                adding: entries.len(),
                max: MAX_GROUP_MEMBERS,
            });
        }
        let salt = *GroupId::random()
            .map_err(|e| NodeError::Crypto(e.to_string()))?
            .as_bytes();
        let id = GroupId::from_bytes(crate::group::group_id(
            self.user.as_bytes(),
            self.keys.identity.public().as_bytes(),
            &salt,
        ));
        let group = hex(id.as_bytes());
        let mut first = vec![self.own_entry()];
        let split = entries.len().min(MAX_MEMBERS_PER_OP - 1);
        first.extend_from_slice(&entries[..split]);
        let create = SignedOp::sign(
            Op {
                group: ByteArray::new(*id.as_bytes()),
                epoch: 0,
                parent: ByteArray::new([0; 32]),
                author: ByteArray::new(*self.user.as_bytes()),
                at_ms: now_ms(),
                lamport: 1,
                action: Action::Create {
                    title,
                    members: first,
                    salt: ByteArray::new(salt),
                },
            },
            &self.keys.identity,
        )
        .map_err(|e| NodeError::BadRequest(e.to_string()))?;
        // The rest joins in operations of at most 64, all committed and sent together.
        let mut state =
            GroupState::genesis(&create).map_err(|e| NodeError::BadRequest(e.to_string()))?;
        let mut ops = vec![create];
        for (n, chunk) in entries[split..].chunks(MAX_MEMBERS_PER_OP).enumerate() {
            let op = SignedOp::sign(
                Op {
                    group: ByteArray::new(*id.as_bytes()),
                    epoch: state.epoch + 1,
                    parent: ByteArray::new(state.head),
                    author: ByteArray::new(*self.user.as_bytes()),
                    at_ms: now_ms(),
                    lamport: 2 + n as u64,
                    action: Action::Add {
                        members: chunk.to_vec(),
                    },
                },
                &self.keys.identity,
            )
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
            state
                .apply(&op)
                .map_err(|e| NodeError::BadRequest(e.to_string()))?;
            ops.push(op);
        }
        self.commit_ops(&group, ops).await?;
        self.group_info(&group)
    }

    fn require_admin(&self, group: &str) -> Result<(), NodeError> {
        let state = self.state(group)?;
        let me = self.user.as_bytes();
        if !state.is_member(me) {
            return Err(NodeError::NotMember(state.title.clone()));
        }
        if !state.is_admin(me) {
            return Err(NodeError::NotAdmin(state.title.clone()));
        }
        Ok(())
    }

    async fn group_add(
        &mut self,
        group: &str,
        members: Vec<String>,
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
        self.issue_many(&group, adds).await?;
        self.group_info(&group)
    }

    async fn group_remove(
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
            let id = match self.resolve(m) {
                Ok(u) => u,
                Err(e) => state
                    .members
                    .iter()
                    .find(|(id, mm)| hex(*id) == m.to_lowercase() || mm.name == *m)
                    .map(|(id, _)| hex(id))
                    .ok_or(e)?,
            };
            let b = user_bytes(&id).ok_or_else(|| NodeError::UnknownContact(m.clone()))?;
            if b == *self.user.as_bytes() {
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
        self.issue(&group, Action::Remove { users }).await?;
        self.group_info(&group)
    }

    async fn group_leave(&mut self, group: &str) -> Result<GroupInfo, NodeError> {
        self.check_not_revoked()?;
        let group = self.resolve_group(group)?;
        let state = self.state(&group)?;
        if !state.is_member(self.user.as_bytes()) {
            return Err(NodeError::NotMember(state.title.clone()));
        }
        self.issue(&group, Action::Leave).await?;
        self.group_info(&group)
    }

    /// Signs an operation on the current head and commits it.
    async fn issue(&mut self, group: &str, action: Action) -> Result<(), NodeError> {
        self.issue_many(group, vec![action]).await
    }

    /// Signs operations one on top of the other from the current head, checking each
    /// applies, then commits them together.
    async fn issue_many(&mut self, group: &str, actions: Vec<Action>) -> Result<(), NodeError> {
        let (mut lamport, _) = self.conv_state(group)?;
        let mut state = self.state(group)?.clone();
        let mut ops = Vec::with_capacity(actions.len());
        for action in actions {
            lamport += 1;
            let op = SignedOp::sign(
                Op {
                    group: ByteArray::new(state.id),
                    epoch: state.epoch + 1,
                    parent: ByteArray::new(state.head),
                    author: ByteArray::new(*self.user.as_bytes()),
                    at_ms: now_ms(),
                    lamport,
                    action,
                },
                &self.keys.identity,
            )
            .map_err(|e| NodeError::BadRequest(e.to_string()))?;
            // Check it applies before anything is stored or sent.
            let before = state.members.len();
            state.apply(&op).map_err(|e| match e {
                crate::group::OpError::Full { would, max } => NodeError::GroupFull {
                    group: state.title.clone(),
                    members: before,
                    adding: would - before,
                    max,
                },
                other => NodeError::BadRequest(other.to_string()),
            })?;
            ops.push(op);
        }
        self.commit_ops(group, ops).await
    }

    /// Stores own operations (a chain on the current head, or a creation and what follows
    /// it), applies them, records them in the timeline and sends them to every member device
    /// in as few pairwise messages as fit; new members also get the chain before them.
    async fn commit_ops(&mut self, group: &str, ops: Vec<SignedOp>) -> Result<(), NodeError> {
        let before: HashSet<[u8; 16]> = self
            .state(group)
            .map(|s| s.members.keys().copied().collect())
            .unwrap_or_default();
        let saved = now_ms();
        self.store.transaction(|tx| -> Result<(), NodeError> {
            for op in &ops {
                tx.save_group_op(group, &op.hash, op.to_bytes(), saved)?;
            }
            Ok(())
        })?;
        let ctx = self.groups.entry(group.to_owned()).or_default();
        ctx.ops.extend(ops.iter().cloned());
        ctx.resolved = resolve(&ctx.ops);
        let state = self.state(group)?.clone();
        for op in &ops {
            self.store_op_message(group, op)?;
        }
        // Who hears of them: the members after them, and those they removed.
        let mut to: Vec<[u8; 16]> = state.members.keys().copied().collect();
        to.extend(before.iter().filter(|u| !state.is_member(u)));
        let me = *self.user.as_bytes();
        if !self.own_other_devices() {
            to.retain(|u| *u != me);
        }
        // New members get the chain before these operations too.
        let newcomers: Vec<[u8; 16]> = state
            .members
            .keys()
            .filter(|u| !before.contains(*u) && **u != me)
            .copied()
            .collect();
        let prior: Vec<SignedOp> = if before.is_empty() || newcomers.is_empty() {
            Vec::new()
        } else {
            let fresh: HashSet<[u8; 32]> = ops.iter().map(|o| o.hash).collect();
            let ctx = &self.groups[group];
            ctx.resolved
                .as_ref()
                .map(|r| r.chain.clone())
                .unwrap_or_default()
                .iter()
                .filter(|h| !fresh.contains(*h))
                .filter_map(|h| ctx.ops.iter().find(|o| o.hash == *h).cloned())
                .collect()
        };
        // The chain is in the timeline (a linked device may hold operations without their
        // messages), so it can be owed and queued.
        for op in &prior {
            self.store_op_message(group, op)?;
        }
        // Everything is owed to its recipients first, in one transaction, and settled as it
        // is queued: a crash while sessions are being set up loses no membership change.
        let now = now_ms();
        self.store.transaction(|tx| -> Result<(), NodeError> {
            for (list, users) in [(&ops, &to), (&prior, &newcomers)] {
                for op in list.iter() {
                    for u in users.iter() {
                        tx.owe_group_message(op_message_id(op), &hex(u), &[], &[], now)?;
                    }
                }
            }
            Ok(())
        })?;
        self.send_ops(group, &ops, &to).await;
        self.send_ops(group, &prior, &newcomers).await;
        self.after_membership_change(group);
        Ok(())
    }

    /// Stores a membership operation as a message of the group's conversation: from its
    /// author (no device: the same row on every member), at its Lamport clock.
    fn store_op_message(&mut self, group: &str, op: &SignedOp) -> Result<Inserted, NodeError> {
        let sender_user = hex(op.op.author.as_slice());
        let own = sender_user == self.user_hex;
        let lamport = op.op.lamport;
        self.observe_lamport(group, lamport)?;
        let title = self.state(group).map(|s| s.title.clone()).ok();
        let text = self.describe(op);
        let now = now_ms();
        let message = Message {
            id: op_message_id(op),
            conversation: ConversationId(group.to_owned()),
            sender_user,
            sender_device: String::new(),
            lamport,
            seq: 0,
            sent_at_ms: op.op.at_ms,
            received_at_ms: now,
            own,
            status: if own { Status::Sent } else { Status::Read },
            body: StoreBody::Structured {
                data: op.to_bytes().to_vec(),
                text: Some(text),
            },
            edited_at_ms: None,
        };
        let inserted = self.store.transaction(|tx| -> Result<_, NodeError> {
            tx.ensure_conversation(
                &message.conversation,
                ConversationKind::Group,
                title.as_deref(),
                now,
            )?;
            Ok(tx.record_incoming(&message, &[])?)
        })?;
        if inserted == Inserted::New {
            self.emit(Event::Message {
                message: super::message_info(&message),
            });
        }
        Ok(inserted)
    }

    fn name_of(&self, user: &[u8; 16]) -> String {
        if user == self.user.as_bytes() {
            return self.config.name.clone();
        }
        let id = hex(user);
        if let Some(c) = self.contacts.get(&id) {
            return c.contact.display_name.clone();
        }
        // Members who left or were removed are named by the operation that added them.
        let mut entries =
            self.groups
                .values()
                .flat_map(|g| &g.ops)
                .flat_map(|o| match &o.op.action {
                    Action::Create { members, .. } | Action::Add { members } => members.as_slice(),
                    _ => &[],
                });
        entries
            .find(|m| m.user.into_array() == *user)
            .map_or_else(|| id[..8].to_owned(), |m| m.name.clone())
    }

    /// A line for the timeline: "Ana added Ben, Cy".
    fn describe(&self, op: &SignedOp) -> String {
        let by = self.name_of(&op.op.author.into_array());
        let names = |users: &mut dyn Iterator<Item = [u8; 16]>| {
            users
                .map(|u| self.name_of(&u))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &op.op.action {
            Action::Create { title, .. } => format!("{by} created the group {title}"),
            Action::Add { members } => {
                format!(
                    "{by} added {}",
                    names(&mut members.iter().map(|m| m.user.into_array()))
                )
            }
            Action::Remove { users } => {
                format!(
                    "{by} removed {}",
                    names(&mut users.iter().map(|u| u.into_array()))
                )
            }
            Action::Leave => format!("{by} left"),
        }
    }

    /// Sends operations over pairwise sessions to every device of `users`, packed into as
    /// few envelopes as fit. They are owed to each user already ([`Engine::commit_ops`]);
    /// queueing settles that, and who cannot be reached now stays owed.
    async fn send_ops(&mut self, group: &str, ops: &[SignedOp], users: &[[u8; 16]]) {
        let Some(gid) = user_bytes(group) else {
            return;
        };
        if users.is_empty() {
            return;
        }
        let users: Vec<String> = users.iter().map(|u| hex(u)).collect();
        let mut packs: Vec<Vec<&SignedOp>> = Vec::new();
        let mut size = 0;
        for op in ops {
            let len = op.to_bytes().len();
            match packs.last_mut() {
                Some(pack) if size + len <= OPS_PER_ENVELOPE_BYTES => {
                    pack.push(op);
                    size += len;
                }
                _ => {
                    packs.push(vec![op]);
                    size = len;
                }
            }
        }
        for pack in packs {
            let id = op_message_id(pack[0]);
            let env = Envelope {
                id: ByteArray::new(id.0),
                conversation: Conversation::Group {
                    id: ByteArray::new(gid),
                },
                sender_user: ByteArray::new(*self.user.as_bytes()),
                sender_device: ByteArray::new(*self.keys.device.device_id().as_bytes()),
                lists: Some(self.list_versions(None)),
                grant: None,
                lamport: pack.iter().map(|o| o.op.lamport).max().unwrap_or(0),
                seq: 0,
                sent_at_ms: pack[0].op.at_ms,
                body: match pack.as_slice() {
                    [one] => Body::GroupOp {
                        op: ByteBuf::from(one.to_bytes().to_vec()),
                    },
                    many => Body::GroupOps {
                        ops: many
                            .iter()
                            .map(|o| ByteBuf::from(o.to_bytes().to_vec()))
                            .collect(),
                    },
                },
            };
            let mut env = env;
            let settle: Vec<MessageId> = pack.iter().map(|o| op_message_id(o)).collect();
            match self.send_pairwise(&users, id, &mut env, &settle).await {
                Ok(failed) => {
                    for (user, e) in &failed {
                        tracing::info!(%group, member = %user, "member not reachable now; the membership change waits for them: {e}");
                    }
                    if !failed.is_empty() {
                        self.owed_due = true;
                    }
                }
                Err(e) => {
                    tracing::error!(%group, "queueing group operations failed; they stay owed: {e}");
                    self.owed_due = true;
                }
            }
        }
    }

    /// Encrypts `env` for every device of each of `users` and queues it as outbox rows of
    /// the stored message `id`, with every ratchet state, in one transaction that also
    /// settles what was owed to them (`settle`). Returns the users who could not be reached
    /// (no device list or no session to be had).
    async fn send_pairwise(
        &mut self,
        users: &[String],
        id: MessageId,
        env: &mut Envelope,
        settle: &[MessageId],
    ) -> Result<Vec<(String, NodeError)>, NodeError> {
        let mut failed = Vec::new();
        let mut deliveries = Vec::new();
        let mut pickles = Vec::new();
        for user in users {
            if let Err(e) = self.ensure_peer(user).await {
                failed.push((user.clone(), e));
                continue;
            }
            let mut sessions = match self.sessions_for(user).await {
                Ok(s) => s,
                Err(e) => {
                    failed.push((user.clone(), e));
                    continue;
                }
            };
            super::send::encrypt_each(
                &mut sessions,
                env,
                &self.grants,
                |_| user.clone(),
                &mut deliveries,
                &mut pickles,
            )?;
        }
        let updates = super::send::crypto_updates(&pickles);
        let now = now_ms();
        let queued: Vec<&String> = users
            .iter()
            .filter(|u| !failed.iter().any(|(f, _)| f == *u))
            .collect();
        // A pack whose first operation is still queued for a device fails as a whole and
        // stays owed (sent again later) rather than being dropped behind the queued one.
        self.store.transaction(|tx| -> Result<(), NodeError> {
            tx.apply_crypto(&updates, now)?;
            tx.add_outbox_rows_new(id, &deliveries, now)?;
            for user in &queued {
                for owed in settle {
                    tx.settle_owed_group_message(*owed, user)?;
                }
            }
            Ok(())
        })?;
        self.kick_lanes_for(&deliveries);
        Ok(failed)
    }

    /// Keeps a group member's device list if the identity key the group gave for them
    /// signed it; returns whether it was kept.
    fn keep_peer(&mut self, user: &str, bytes: &[u8]) -> Result<bool, NodeError> {
        let Some(state) = self.peer_state(user, bytes) else {
            return Ok(false);
        };
        self.store
            .transaction(|tx| tx.save_group_peer(user, bytes))?;
        self.peers.insert(user.to_owned(), state);
        Ok(true)
    }

    /// Makes sure a group member's device list is known (fetched from their relays and
    /// checked against the identity key the group vouches for).
    pub(crate) async fn ensure_peer(&mut self, user: &str) -> Result<(), NodeError> {
        if self.known(user).is_some_and(|c| c.list.is_some()) {
            return Ok(());
        }
        let ub = user_bytes(user).ok_or_else(|| NodeError::UnknownContact(user.to_owned()))?;
        let member = self
            .groups
            .values()
            .filter_map(|g| g.resolved.as_ref())
            .find_map(|r| r.state.members.get(&ub).cloned())
            .ok_or_else(|| NodeError::UnknownContact(user.to_owned()))?;
        let mut last = NodeError::Network(format!("{} has no relay", member.name));
        for addr in &member.relays {
            let Some(relay) = addr.parse().ok().as_ref().and_then(super::relay_peer) else {
                continue;
            };
            if let Ok(a) = addr.parse() {
                let _ = self.net.add_relay(a, false).await;
            }
            // Only connected relays are asked, so an unreachable one never stalls the engine;
            // the lookup runs again when it comes up.
            if !self.relay_up.contains(&relay) {
                last = NodeError::Network(format!("no connection to a relay of {}", member.name));
                continue;
            }
            match rpc::fetch_device_list(&self.net, relay, ub).await {
                Ok(bytes) => {
                    if self.keep_peer(user, &bytes)? {
                        self.rebuild_device_owner();
                        return Ok(());
                    }
                    last = NodeError::Crypto(format!(
                        "the device list of {} does not match the key the group gave",
                        member.name
                    ));
                }
                Err(e) => {
                    last = NodeError::Network(format!(
                        "cannot fetch the device list of {}: {e}",
                        member.name
                    ))
                }
            }
        }
        Err(last)
    }

    /// Fetches the device lists of group members not known yet (on a tick), in a task so a
    /// big group never stalls the engine; [`Engine::on_peer_lists`] takes them. Mail kept for
    /// them is fetched again afterwards.
    pub(crate) async fn fetch_missing_peers(&mut self) {
        if !self.peers_due || self.peers_fetching || self.peers_retry.1 > Instant::now() {
            return;
        }
        self.peers_due = false;
        let me = *self.user.as_bytes();
        let mut missing: HashMap<[u8; 16], Vec<String>> = HashMap::new();
        for r in self.groups.values().filter_map(|g| g.resolved.as_ref()) {
            for (u, m) in &r.state.members {
                if *u != me && self.known(&hex(u)).is_none_or(|c| c.list.is_none()) {
                    missing.entry(*u).or_insert_with(|| m.relays.clone());
                }
            }
        }
        let mut targets = Vec::new();
        for (user, relays) in missing {
            let addrs: Vec<libp2p::Multiaddr> =
                relays.iter().filter_map(|r| r.parse().ok()).collect();
            for a in &addrs {
                let _ = self.net.add_relay(a.clone(), false).await;
            }
            // Only connected relays are asked; the others are tried when they come up.
            match addrs
                .iter()
                .filter_map(super::relay_peer)
                .find(|r| self.relay_up.contains(r))
            {
                Some(relay) => targets.push((hex(&user), relay, user)),
                None => self.peers_due = true,
            }
        }
        if targets.is_empty() {
            self.peers_looked_up(false);
            return;
        }
        self.peers_fetching = true;
        self.fetch_lists(targets, |lists, failed| Internal::PeerLists {
            lists,
            failed,
        });
    }

    /// Device lists of group members fetched by [`Engine::fetch_missing_peers`]: each one
    /// the group's identity key for that member signed is kept.
    pub(crate) fn on_peer_lists(&mut self, lists: Vec<(String, Vec<u8>)>, failed: bool) {
        self.peers_fetching = false;
        let mut learned = false;
        for (user, bytes) in lists {
            match self.keep_peer(&user, &bytes) {
                Ok(true) => learned = true,
                Ok(false) => {
                    tracing::warn!(member = %user, "a member's device list does not match the key the group gave");
                }
                Err(e) => {
                    tracing::error!(member = %user, "saving a member's device list failed: {e}");
                    self.peers_due = true;
                }
            }
        }
        if failed {
            self.peers_due = true;
        }
        self.peers_looked_up(learned);
    }

    /// After a round of member lookups: failures are retried with backoff (and at once when a
    /// relay comes up); what was learned gets its kept mail and owed messages.
    fn peers_looked_up(&mut self, learned: bool) {
        self.peers_retry = if self.peers_due {
            let attempts = self.peers_retry.0.saturating_add(1);
            (attempts, Instant::now() + super::send::backoff(attempts))
        } else {
            (0, Instant::now())
        };
        if learned {
            self.rebuild_device_owner();
            self.owed_due = true;
            for relay in self
                .home_relays
                .iter()
                .filter_map(super::relay_peer)
                .collect::<Vec<_>>()
            {
                if self.relay_up.contains(&relay) {
                    self.fetch_mailbox(relay);
                }
            }
            self.retry_stash(None);
        }
    }

    /// After the membership of `group` changed: members to look up, kept messages to retry,
    /// and an event.
    fn after_membership_change(&mut self, group: &str) {
        self.peers_due = true;
        self.retry_stash(None);
        if let Ok(info) = self.group_info(group) {
            self.emit(Event::Group { group: info });
        }
    }

    /// A membership operation from `user`'s envelope (received over a pairwise session), if it is one for the envelope's group
    /// (anything else is logged by kind and dropped): the group (hex) and the operation.
    pub(crate) fn parse_group_op(
        user: &str,
        env: &Envelope,
        op_bytes: &[u8],
    ) -> Option<(String, SignedOp)> {
        let Conversation::Group { id } = &env.conversation else {
            return None;
        };
        match SignedOp::from_bytes(op_bytes) {
            Ok(op) if op.op.group == *id => Some((hex(id.as_slice()), op)),
            Ok(_) => {
                tracing::warn!(contact = %user, "group operation names another group; dropped");
                None
            }
            Err(e) => {
                tracing::warn!(contact = %user, "bad group operation dropped: {e}");
                None
            }
        }
    }

    /// Takes in a membership operation already stored (new to this device): resolves the
    /// chain again and, when it changed, writes the timeline, keys and what is owed.
    pub(crate) fn apply_group_op(&mut self, group: String, op: SignedOp) -> Result<(), NodeError> {
        let before_chain = self
            .groups
            .get(&group)
            .and_then(|g| g.resolved.as_ref())
            .map(|r| r.chain.clone());
        let ctx = self.groups.entry(group.clone()).or_default();
        ctx.ops.push(op.clone());
        ctx.resolved = resolve(&ctx.ops);
        let after_chain = self.groups[&group]
            .resolved
            .as_ref()
            .map(|r| r.chain.clone());
        if after_chain == before_chain {
            return Ok(());
        }
        // Store the operations new to the chain in the timeline.
        let chain = after_chain.unwrap_or_default();
        let had: HashSet<[u8; 32]> = before_chain.unwrap_or_default().into_iter().collect();
        for hash in chain.iter().filter(|h| !had.contains(*h)) {
            let Some(o) = self.groups[&group]
                .ops
                .iter()
                .find(|o| o.hash == *hash)
                .cloned()
            else {
                continue;
            };
            self.store_op_message(&group, &o)?;
        }
        self.reissue_lost(&group);
        self.after_membership_change(&group);
        Ok(())
    }

    /// Own operations that lost a fork are issued again on the agreed head (once a tick
    /// runs: signing and sending need the async context), while they still change something.
    fn reissue_lost(&mut self, group: &str) {
        let Some(ctx) = self.groups.get(group) else {
            return;
        };
        let Some(r) = &ctx.resolved else {
            return;
        };
        let me = ByteArray::new(*self.user.as_bytes());
        for op in &ctx.ops {
            if op.op.author != me || r.chain.contains(&op.hash) || op.op.epoch > r.state.epoch {
                continue;
            }
            let still = match &op.op.action {
                Action::Add { members } => {
                    let m: Vec<MemberEntry> = members
                        .iter()
                        .filter(|e| !r.state.is_member(&e.user.into_array()))
                        .cloned()
                        .collect();
                    (!m.is_empty()).then_some(Action::Add { members: m })
                }
                Action::Remove { users } => {
                    let u: Vec<ByteArray<16>> = users
                        .iter()
                        .filter(|u| r.state.is_member(&u.into_array()))
                        .copied()
                        .collect();
                    (!u.is_empty()).then_some(Action::Remove { users: u })
                }
                Action::Leave => r.state.is_member(&me.into_array()).then_some(Action::Leave),
                Action::Create { .. } => None,
            };
            if let Some(action) = still
                && r.state.is_admin(&me.into_array()) | matches!(action, Action::Leave)
            {
                self.reissue.push((group.to_owned(), action));
            }
        }
    }

    /// Issues the operations [`Engine::reissue_lost`] queued.
    pub(crate) async fn reissue_due(&mut self) {
        let due = std::mem::take(&mut self.reissue);
        let mut seen = HashSet::new();
        for (group, action) in due {
            if !seen.insert(group.clone()) {
                continue;
            }
            if let Err(e) = self.issue(&group, action).await {
                tracing::warn!(%group, "re-issuing a membership change failed: {e}");
            }
        }
    }

    /// A sender key received over a pairwise session from `user`'s `device`.
    pub(crate) fn on_sender_key(
        &mut self,
        user: &str,
        device: DeviceId,
        conversation: &Conversation,
        distribution: &[u8],
    ) -> Result<Option<InboundGroupSession>, NodeError> {
        let Conversation::Group { id } = conversation else {
            return Ok(None);
        };
        let dist = SenderKeyDistribution::from_bytes(distribution)?;
        if dist.group_id.as_bytes() != id.as_ref() || hex(dist.sender_user.as_bytes()) != user {
            tracing::warn!(contact = %user, "sender key for another group or user; dropped");
            return Ok(None);
        }
        let key = InboundSenderKey::from_distribution(&dist, &device)?;
        let pickle = key.pickle()?;
        Ok(Some(InboundGroupSession {
            session_id: key.session_id(),
            group_id: hex(id.as_slice()),
            sender_user: user.to_owned(),
            sender_device: device.to_peer_id_string(),
            pickle: pickle.to_vec(),
            received_at_ms: now_ms(),
        }))
    }

    /// A group ciphertext from `sender` (mailbox depositor). Kept in the stash when its key
    /// or group is not known yet, or when storing it failed (it is tried again from there).
    /// Returns whether it is durably handled: `false` only when even the stash could not
    /// take it, so the mail must stay in the mailbox.
    pub(crate) fn on_group_message(&mut self, sender: PeerId, payload: &[u8]) -> bool {
        match self.process_group(&sender.to_string(), payload) {
            Ok(GroupOutcome::Done) => return true,
            Ok(GroupOutcome::Wait) => {}
            Err(e) => tracing::error!("storing a group message failed; it is kept to retry: {e}"),
        }
        // Only a device of a known user (a contact, a group member, this user) is given room
        // in the stash: anything else stays at the relay, which keeps it within that
        // mailbox's quota, and is read once the device is learned (lists are fetched again).
        // So a stranger can never fill the stash and keep a member's message out.
        if !self.device_owner.contains_key(&sender) {
            self.recovery.group_from_strangers += 1;
            self.want_device_lists();
            tracing::info!(%sender, "group message from a device of no known user; left at the relay");
            return false;
        }
        let now = now_ms();
        match self.store.transaction(|tx| {
            tx.stash_group_message(
                &sender.to_string(),
                payload,
                now,
                MAX_GROUP_STASH,
                MAX_GROUP_STASH_PER_DEVICE,
            )
        }) {
            Ok(kept) => kept,
            Err(e) => {
                tracing::error!("keeping a group message for later failed: {e}");
                false
            }
        }
    }

    /// Decrypts, checks and stores one group message.
    fn process_group(&mut self, sender: &str, payload: &[u8]) -> Result<GroupOutcome, NodeError> {
        let msg = match GroupMessage::from_bytes(payload) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(%sender, "malformed group message dropped: {e}");
                return Ok(GroupOutcome::Done);
            }
        };
        if msg.sender_device.to_peer_id_string() != sender {
            tracing::warn!(%sender, "group message deposited by another device than its sender; dropped");
            return Ok(GroupOutcome::Done);
        }
        let Some(stored) = self
            .store
            .transaction(|tx| tx.inbound_group_session(&msg.session_id))?
        else {
            return Ok(GroupOutcome::Wait);
        };
        let group = stored.group_id.clone();
        let Ok(state) = self.state(&group) else {
            return Ok(GroupOutcome::Wait);
        };
        let Some(sender_user) = user_bytes(&stored.sender_user) else {
            return Ok(GroupOutcome::Done);
        };
        if !state.is_member(&sender_user) {
            let ever_added = self.groups.get(&group).is_some_and(|g| {
                g.ops.iter().any(|o| match &o.op.action {
                    Action::Create { members, .. } | Action::Add { members } => {
                        members.iter().any(|m| m.user.into_array() == sender_user)
                    }
                    _ => false,
                })
            });
            if !ever_added {
                // Added by an operation that has not reached this device yet (it comes from
                // an admin, the message from the new member): kept until it does.
                return Ok(GroupOutcome::Wait);
            }
            tracing::warn!(%group, sender = %stored.sender_user, "group message from a non-member refused");
            return Ok(GroupOutcome::Done);
        }
        if DeviceId::from_peer_id_string(&stored.sender_device)
            .and_then(|d| self.revoked_owner(&d))
            .is_some()
        {
            tracing::warn!(%group, sender = %stored.sender_device, "group message from a revoked device refused");
            return Ok(GroupOutcome::Done);
        }
        let title = state.title.clone();
        let mut key = InboundSenderKey::from_pickle(&stored.pickle)?;
        let now = now_ms();
        let device_key = stored.sender_device.clone();
        let result = self.store.transaction(|tx| -> Result<Option<Message>, NodeError> {
            let d = match key.decrypt(&msg, tx) {
                Ok(d) => d,
                Err(GroupError::Replay { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            // Only the kind of a decoding failure travels on: it is logged below.
            let env = Envelope::decode(&d.body)
                .map_err(|e| NodeError::Crypto(format!("{} envelope", e.kind())))?;
            let bound = matches!(&env.conversation, Conversation::Group { id } if hex(id.as_slice()) == group)
                && env.sender_user.as_slice() == d.sender_user.as_bytes()
                && env.sender_device.as_slice() == d.sender_device.as_bytes();
            let Body::Text { text, media } = env.body else {
                return Err(NodeError::Crypto("a group message carries only text".into()));
            };
            if !bound {
                return Err(NodeError::Crypto("group message envelope does not match its key".into()));
            }
            let own = stored.sender_user == self.user_hex;
            let message = Message {
                id: MessageId(env.id.into_array()),
                conversation: ConversationId(group.clone()),
                sender_user: stored.sender_user.clone(),
                sender_device: device_key.clone(),
                lamport: env.lamport,
                seq: env.seq,
                sent_at_ms: env.sent_at_ms,
                received_at_ms: now,
                // Sent from this user's other device.
                own,
                status: if own { Status::Sent } else { Status::Received },
                body: crate::media::store_body(text, media)?,
                edited_at_ms: None,
            };
            let pickle = key.pickle()?;
            let updated = InboundGroupSession {
                pickle: pickle.to_vec(),
                ..stored.clone()
            };
            tx.ensure_conversation(&message.conversation, ConversationKind::Group, Some(&title), now)?;
            let inserted = tx.record_incoming(&message, &[CryptoUpdate::InboundGroup(&updated)])?;
            Ok((inserted == Inserted::New).then_some(message))
        });
        let message = match result {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(GroupOutcome::Done),
            Err(e @ NodeError::Store(_)) => return Err(e),
            Err(e) => {
                tracing::warn!(%group, "undecryptable group message: {e}");
                self.emit(Event::Undecryptable {
                    user_id: stored.sender_user.clone(),
                    device_id: device_key,
                    reason: "group_message".into(),
                });
                return Ok(GroupOutcome::Done);
            }
        };
        self.observe_lamport(&group, message.lamport)?;
        self.on_media_message(&message);
        let shown = self.hold.arrived(&self.store, message, Instant::now())?;
        if !shown.is_empty() {
            self.notify
                .entry(group.clone())
                .or_insert(Notify {
                    pending: 0,
                    last: None,
                })
                .pending += shown.len() as u64;
        }
        for message in shown {
            self.emit(Event::Message { message });
        }
        Ok(GroupOutcome::Done)
    }

    /// Retries stashed group messages: those of `from` when that device's key arrived, or
    /// all of them when the membership changed or members were looked up.
    pub(crate) fn retry_stash(&mut self, from: Option<&str>) {
        let stashed = match self.store.stashed_group_messages(from, MAX_GROUP_STASH) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("reading stashed group messages failed: {e}");
                return;
            }
        };
        let now = now_ms();
        for s in stashed {
            let done = match self.process_group(&s.sender_device, &s.payload) {
                Ok(GroupOutcome::Done) => true,
                Ok(GroupOutcome::Wait) if now - s.received_at_ms > STASH_MAX_AGE_MS => {
                    let owner = s
                        .sender_device
                        .parse::<PeerId>()
                        .ok()
                        .and_then(|p| self.device_owner.get(&p).cloned());
                    self.emit(Event::Undecryptable {
                        user_id: owner.unwrap_or_default(),
                        device_id: s.sender_device.clone(),
                        reason: "group_key_missing".into(),
                    });
                    true
                }
                Ok(GroupOutcome::Wait) => false,
                Err(e) => {
                    tracing::error!("retrying a stashed group message failed: {e}");
                    false
                }
            };
            if done && let Err(e) = self.store.transaction(|tx| tx.unstash_group_message(s.id)) {
                tracing::error!("removing a stashed group message failed: {e}");
            }
        }
    }

    /// Emits batched group notifications that are due.
    pub(crate) fn flush_notifications(&mut self) {
        let now = Instant::now();
        let due: Vec<String> = self
            .notify
            .iter()
            .filter(|(_, n)| {
                n.pending > 0
                    && n.last
                        .is_none_or(|l| now.duration_since(l) >= NOTIFY_INTERVAL)
            })
            .map(|(g, _)| g.clone())
            .collect();
        for group in due {
            let Ok(info) = self.group_info(&group) else {
                continue;
            };
            if let Some(n) = self.notify.get_mut(&group) {
                n.pending = 0;
                n.last = Some(now);
            }
            if info.unread == 0 {
                continue;
            }
            let text = if info.unread == 1 {
                format!("1 new message in {}", info.title)
            } else {
                format!("{} new messages in {}", info.unread, info.title)
            };
            self.emit(Event::Notification {
                conversation: group,
                title: info.title,
                unread: info.unread,
                text,
            });
        }
    }

    /// The outbound sender key for a group: the stored one while it fits the membership and
    /// the rotation policy, else a new one.
    fn outbound_key(
        &mut self,
        group: &str,
        gid: GroupId,
        epoch: u64,
    ) -> Result<(OutboundSenderKey, bool), NodeError> {
        let now_secs = u64::try_from(now_ms() / 1000).unwrap_or(0);
        if let Some((sid, key_epoch)) = self.store.group_sender_key(group)?
            && key_epoch == epoch
            && let Some(stored) = self
                .store
                .transaction(|tx| tx.outbound_group_session(group))?
            && stored.session_id == sid
        {
            let key = OutboundSenderKey::from_pickle(&stored.pickle)?;
            if key
                .rotation_due(&RotationPolicy::default(), now_secs)
                .is_none()
            {
                return Ok((key, false));
            }
        }
        Ok((
            OutboundSenderKey::new(gid, self.keys.device.device_id(), now_secs),
            true,
        ))
    }

    /// Sends a text or a file (its caption checked by the caller) to a group, under `id` when
    /// one was chosen before.
    pub(crate) async fn group_send(
        &mut self,
        group: &str,
        id: Option<MessageId>,
        body: tern_store::Body,
    ) -> Result<MessageInfo, NodeError> {
        self.check_not_revoked()?;
        let group = self.resolve_group(group)?;
        let state = self.state(&group)?.clone();
        let me = *self.user.as_bytes();
        if !state.is_member(&me) {
            return Err(NodeError::NotMember(state.title));
        }
        // Every member's devices must be known to address them.
        let mut users: Vec<String> = state
            .members
            .keys()
            .filter(|u| **u != me)
            .map(|u| hex(u))
            .collect();
        // This user's other devices get the message too.
        if self.own_other_devices() {
            users.push(self.user_hex.clone());
        }
        // Members who cannot be reached now are owed the message (with the key as of it).
        let mut owed: Vec<String> = Vec::new();
        for u in &users {
            if let Err(e) = self.ensure_peer(u).await {
                tracing::info!(%group, member = %u, "member not reachable now; the message waits for them: {e}");
                owed.push(u.clone());
            }
        }
        let gid = GroupId::from_bytes(state.id);
        let (mut key, fresh) = self.outbound_key(&group, gid, state.epoch)?;
        let sid = key.session_id();
        let shared: HashSet<String> = if fresh {
            HashSet::new()
        } else {
            self.store.sender_key_shares(&sid)?.into_iter().collect()
        };
        let (lamport, seq) = self.conv_state(&group)?;
        let (lamport, seq) = (lamport + 1, seq + 1);
        let now = now_ms();
        let id = match id {
            Some(id) => id,
            None => MessageId(super::send::random_id()?),
        };
        let env = Envelope {
            id: ByteArray::new(id.0),
            conversation: Conversation::Group {
                id: ByteArray::new(state.id),
            },
            sender_user: ByteArray::new(me),
            sender_device: ByteArray::new(*self.keys.device.device_id().as_bytes()),
            lists: Some(self.list_versions(None)),
            grant: None,
            lamport,
            seq,
            sent_at_ms: now,
            body: crate::media::wire_body(&body)?,
        };
        let plain = zeroize::Zeroizing::new(env.encode()?);
        let distribution = key.distribution(self.user).to_bytes()?;
        let ciphertext = key.encrypt(&plain)?;
        // Devices that have the key share one ciphertext; the others get it with the key.
        let mut fan: Vec<(String, String)> = Vec::new();
        let mut need: Vec<String> = Vec::new();
        for u in &users {
            let Some(c) = self.known(u) else { continue };
            if owed.contains(u) {
                continue;
            }
            let devices = c.devices();
            let mut missing = false;
            let own_device = self.keys.device.device_id();
            for (d, _) in devices.into_iter().filter(|(d, _)| *d != own_device) {
                let dev = d.to_peer_id_string();
                if shared.contains(&dev) {
                    fan.push((u.clone(), dev));
                } else {
                    missing = true;
                }
            }
            if missing {
                need.push(u.clone());
            }
        }
        let mut key_env = Envelope {
            body: Body::SenderKey {
                distribution: ByteBuf::from(distribution.to_vec()),
                message: Some(ByteBuf::from(ciphertext.clone())),
            },
            ..env.clone()
        };
        let mut deliveries = Vec::new();
        let mut pickles = Vec::new();
        let mut newly: Vec<String> = Vec::new();
        for u in &need {
            let mut sessions = match self.sessions_for(u).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::info!(%group, member = %u, "no session now; the message waits for them: {e}");
                    owed.push(u.clone());
                    continue;
                }
            };
            sessions.retain(|(d, _)| !shared.contains(&d.to_peer_id_string()));
            let first = deliveries.len();
            super::send::encrypt_each(
                &mut sessions,
                &mut key_env,
                &self.grants,
                |_| u.clone(),
                &mut deliveries,
                &mut pickles,
            )?;
            newly.extend(
                deliveries[first..]
                    .iter()
                    .map(|d| d.recipient_device.clone()),
            );
        }
        if let Body::SenderKey { distribution, .. } = key_env.body {
            zeroize::Zeroize::zeroize(&mut distribution.into_vec());
        }
        let message = self.own_text(id, &group, (lamport, seq), now, body);
        let key_pickle = key.pickle()?;
        let outbound = OutboundGroupSession {
            group_id: group.clone(),
            session_id: sid.clone(),
            pickle: key_pickle.to_vec(),
            message_count: u64::from(key.message_index()),
            created_at_ms: now,
        };
        let mut updates = super::send::crypto_updates(&pickles);
        updates.push(CryptoUpdate::OutboundGroup(&outbound));
        let title = state.title.clone();
        let epoch = state.epoch;
        self.store.transaction(|tx| -> Result<(), NodeError> {
            tx.ensure_conversation(
                &message.conversation,
                ConversationKind::Group,
                Some(&title),
                now,
            )?;
            tx.record_outgoing_fanout(&message, &updates, &deliveries, &ciphertext, &fan, now)?;
            tx.set_group_sender_key(&group, &sid, epoch)?;
            tx.share_sender_key(&sid, &newly)?;
            for u in &owed {
                tx.owe_group_message(id, u, &distribution, &ciphertext, now)?;
            }
            Ok(())
        })?;
        if !owed.is_empty() {
            self.owed_due = true;
        }
        self.lamport.insert(group.clone(), lamport);
        self.seq.insert(group.clone(), seq);
        let info = super::message_info(&message);
        self.emit(Event::Message {
            message: info.clone(),
        });
        // A message with no other member device is sent at once.
        if deliveries.is_empty() && fan.is_empty() && owed.is_empty() {
            self.store
                .transaction(|tx| tx.advance_status(id, Status::Sent))?;
        }
        self.kick_lanes_for(&deliveries);
        self.start_fanout(id, ciphertext, fan, 0);
        Ok(info)
    }

    /// Sends owed group messages to members who can be reached now: over Olm, with the
    /// sender key as of each message, queued in the outbox.
    pub(crate) async fn deliver_owed(&mut self) {
        if !self.owed_due {
            return;
        }
        // What cannot go now is tried again at the next heartbeat or member lookup.
        self.owed_due = false;
        let owed = match self.store.owed_group_messages(crate::consts::OUTBOX_BATCH) {
            Ok(o) => o,
            Err(e) => {
                tracing::error!("reading owed group messages failed: {e}");
                return;
            }
        };
        let mut unreachable: HashSet<String> = HashSet::new();
        for o in owed {
            if unreachable.contains(&o.user_id) {
                continue;
            }
            if let Err(e) = self.deliver_owed_one(&o).await {
                tracing::debug!(member = %o.user_id, "owed group message still waits: {e}");
                unreachable.insert(o.user_id.clone());
            }
        }
    }

    async fn deliver_owed_one(
        &mut self,
        o: &tern_store::OwedGroupMessage,
    ) -> Result<(), NodeError> {
        let Some(m) = self.store.message(o.message_id)? else {
            return Ok(());
        };
        let gid = user_bytes(&m.conversation.0)
            .ok_or_else(|| NodeError::UnknownGroup(m.conversation.0.clone()))?;
        // An operation: sent as it is (a removed member is told of its removal).
        let is_op = o.distribution.is_empty();
        // A member removed meanwhile is owed no message any more.
        if !is_op
            && !self.state(&m.conversation.0)?.is_member(
                &user_bytes(&o.user_id)
                    .ok_or_else(|| NodeError::UnknownContact(o.user_id.clone()))?,
            )
        {
            self.store
                .transaction(|tx| tx.settle_owed_group_message(o.message_id, &o.user_id))?;
            return Ok(());
        }
        self.ensure_peer(&o.user_id).await?;
        let body = if is_op {
            // The operation is the stored membership message itself.
            let StoreBody::Structured { data, .. } = &m.body else {
                return Err(NodeError::Store("an owed operation is not stored".into()));
            };
            Body::GroupOp {
                op: ByteBuf::from(data.clone()),
            }
        } else {
            Body::SenderKey {
                distribution: ByteBuf::from(o.distribution.to_vec()),
                message: Some(ByteBuf::from(o.ciphertext.clone())),
            }
        };
        let mut env = self.own_group_envelope(gid, &m, body);
        let user = o.user_id.clone();
        let sent = self
            .send_pairwise(
                std::slice::from_ref(&user),
                o.message_id,
                &mut env,
                &[o.message_id],
            )
            .await;
        if let Body::SenderKey { distribution, .. } = env.body {
            zeroize::Zeroize::zeroize(&mut distribution.into_vec());
        }
        match sent?.pop() {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// The envelope of a stored own message of group `gid`, as it was sent, carrying `body`.
    pub(crate) fn own_group_envelope(&self, gid: [u8; 16], m: &Message, body: Body) -> Envelope {
        Envelope {
            id: ByteArray::new(m.id.0),
            conversation: Conversation::Group {
                id: ByteArray::new(gid),
            },
            sender_user: ByteArray::new(*self.user.as_bytes()),
            sender_device: ByteArray::new(*self.keys.device.device_id().as_bytes()),
            lists: Some(self.list_versions(None)),
            grant: None,
            lamport: m.lamport,
            seq: m.seq,
            sent_at_ms: m.sent_at_ms,
            body,
        }
    }

    /// Deposits one ciphertext for many devices: one request per relay.
    pub(crate) fn start_fanout(
        &mut self,
        id: MessageId,
        payload: Vec<u8>,
        recipients: Vec<(String, String)>,
        attempts: u32,
    ) {
        // Inside a store batch the rows are not durable yet: the batch's owner dispatches
        // once it commits.
        if self.store.in_batch() {
            return;
        }
        let recipients: Vec<(String, String)> = recipients
            .into_iter()
            .filter(|(_, d)| self.fan_in_flight.insert((id, d.clone())))
            .collect();
        if recipients.is_empty() {
            return;
        }
        let mut by_relay: HashMap<Option<PeerId>, Vec<FanTarget>> = HashMap::new();
        for (user, dev) in recipients {
            let Some(peer) = DeviceId::from_peer_id_string(&dev).and_then(|d| device_peer(&d))
            else {
                continue;
            };
            let relays = self
                .known(&user)
                .map(|c| c.relay_peers())
                .unwrap_or_default();
            let grant = self.grants.held(&dev);
            by_relay
                .entry(relays.first().copied())
                .or_default()
                .push((dev, peer, relays, grant));
        }
        for (relay, group) in by_relay {
            let net = self.net.clone();
            let tx = self.internal.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut results = Vec::with_capacity(group.len());
                let outcome = match relay {
                    Some(r) => {
                        let to = group
                            .iter()
                            .map(|(_, p, _, g)| (*p, super::grants::token(g.as_ref(), r)))
                            .collect();
                        rpc::deposit_many(&net, r, to, payload.clone()).await
                    }
                    None => Err(NetError::Transport("the member has no relay".into())),
                };
                match outcome {
                    Ok(refused) => {
                        for (dev, peer, _, _) in group {
                            let r = match refused.iter().find(|r| r.peer == peer) {
                                Some(r) => Err(NetError::Rejected(
                                    tern_relay::wire::Rejection::new(r.code),
                                )),
                                None => Ok(()),
                            };
                            results.push((dev, r));
                        }
                    }
                    Err(e) => {
                        // The first relay failed: each device tries its other relays.
                        for (dev, peer, relays, grant) in group {
                            let r = super::lanes::deliver(
                                &net,
                                peer,
                                &relays[1.min(relays.len())..],
                                payload.clone(),
                                false,
                                grant.as_ref(),
                            )
                            .await
                            .map_err(|_| e.clone());
                            results.push((dev, r));
                        }
                    }
                }
                let _ = tx
                    .send(Internal::FannedOut {
                        id,
                        attempts,
                        results,
                    })
                    .await;
            });
        }
    }

    /// A fan-out finished: acknowledge what went, reschedule what did not, in one
    /// transaction.
    pub(crate) fn on_fanned_out(
        &mut self,
        id: MessageId,
        attempts: u32,
        results: Vec<(String, Result<(), NetError>)>,
    ) {
        let now = now_ms();
        let mut remaining = None;
        let went: Vec<String> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(d, _)| d.clone())
            .collect();
        let out = self.store.transaction(|tx| -> Result<(), NodeError> {
            if !went.is_empty() {
                remaining = Some(tx.ack_deliveries(id, &went)?);
            }
            for (dev, r) in &results {
                match r {
                    Ok(()) => {}
                    Err(e) => {
                        let wait = rpc::retry_after(e)
                            .unwrap_or_else(|| super::send::backoff(attempts))
                            .min(crate::consts::RETRY_MAX);
                        let next = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(0));
                        tx.reschedule_delivery(id, dev, next)?;
                    }
                }
            }
            Ok(())
        });
        for (dev, r) in &results {
            self.fan_in_flight.remove(&(id, dev.clone()));
            if let Err(e) = r
                && e.code() == Some(tern_relay::wire::ErrorCode::NoGrant)
            {
                // Revoked or stale: the next attempt goes as an introduction.
                self.drop_grant(dev);
            }
        }
        if let Err(e) = out {
            tracing::error!("recording a group delivery failed: {e}");
            return;
        }
        if remaining == Some(0)
            && let Ok(Some(m)) = self.store.message(id)
            && m.status == Status::Sent
        {
            self.emit(Event::Receipt {
                conversation: m.conversation.0,
                ids: vec![id.to_string()],
                status: "sent".into(),
            });
        }
    }

    fn group_history(
        &mut self,
        group: &str,
        limit: Option<u32>,
        before: Option<&str>,
        mark_read: bool,
    ) -> Result<Vec<MessageInfo>, NodeError> {
        let group = self.resolve_group(group)?;
        let conv = ConversationId(group.clone());
        let page = self.page(&conv, limit, before)?;
        if mark_read {
            // Group messages get no read receipts; the mark clears the unread count.
            self.store
                .transaction(|tx| -> Result<(), tern_store::WriteError> {
                    match tx.mark_read(&conv) {
                        Ok(_) | Err(tern_store::WriteError::UnknownConversation { .. }) => Ok(()),
                        Err(e) => Err(e),
                    }
                })?;
        }
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

    #[test]
    fn group_payloads_are_told_apart_from_pairwise() {
        assert!(is_group_payload(&[1, Kind::GroupMessage as u8, 0]));
        assert!(!is_group_payload(&[1, Kind::PairwiseMessage as u8, 0]));
        assert!(!is_group_payload(&[]));
    }
}
