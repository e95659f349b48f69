//! Membership operations on their way in and out: committing this device's own (stored,
//! applied, recorded in the timeline, owed to every member and sent over pairwise sessions,
//! packed into as few envelopes as fit), taking in those received, and the timeline's line
//! for each ("Ana added Ben").

use std::collections::HashSet;

use serde_bytes::{ByteArray, ByteBuf};
use tern_crypto::{UserId, group::GroupId};
use tern_store::{
    Body as StoreBody, ConversationId, ConversationKind, Inserted, Message, MessageId, Status,
};

use super::hex;
use crate::engine::{Engine, message_info};
use crate::{
    envelope::{Body, Conversation, Envelope},
    error::NodeError,
    group::{Action, SignedOp},
    types::*,
};

/// Membership operations sent together in one pairwise envelope: at most this many bytes
/// of them (the envelope holds 64 KiB).
const OPS_PER_ENVELOPE_BYTES: usize = 48 * 1024;

/// The message id of a membership operation: the first 16 bytes of its hash.
fn op_message_id(op: &SignedOp) -> MessageId {
    let mut id = [0u8; 16];
    id.copy_from_slice(&op.hash[..16]);
    MessageId(id)
}

impl Engine {
    /// Stores own operations (a chain on the current head, or a creation and what follows
    /// it), applies them, records them in the timeline and sends them to every member device
    /// in as few pairwise messages as fit; new members also get the chain before them.
    pub(super) fn commit_ops(
        &mut self,
        group: &GroupId,
        ops: Vec<SignedOp>,
    ) -> Result<(), NodeError> {
        let before: HashSet<[u8; 16]> = self
            .state(group)
            .map(|s| s.members.keys().copied().collect())
            .unwrap_or_default();
        let saved = self.clock.now_ms();
        let hex_group = group.to_string();
        self.store.transaction(|tx| -> Result<(), NodeError> {
            for op in &ops {
                tx.save_group_op(&hex_group, &op.hash, op.to_bytes(), saved)?;
            }
            Ok(())
        })?;
        let ctx = self.groups.by_id.entry(*group).or_default();
        for op in &ops {
            ctx.hold(op.clone(), saved);
        }
        ctx.resolve();
        let state = self.state(group)?.clone();
        // Parents these operations name that others signed go with them: a member who
        // missed one (its author reached only some members) can then place them.
        let me = *self.me.user.as_bytes();
        let mut outgoing: Vec<SignedOp> = {
            let fresh: HashSet<[u8; 32]> = ops.iter().map(|o| o.hash).collect();
            let mut wanted: Vec<[u8; 32]> = ops
                .iter()
                .flat_map(|o| o.op.parents.iter().map(|p| p.into_array()))
                .filter(|p| !fresh.contains(p))
                .collect();
            wanted.sort();
            wanted.dedup();
            let ctx = &self.groups.by_id[group];
            wanted
                .iter()
                .filter_map(|h| ctx.ops.iter().find(|o| o.hash == *h))
                .filter(|o| o.op.author.into_array() != me)
                .cloned()
                .collect()
        };
        outgoing.sort_by_key(|o| (o.op.epoch, o.hash));
        outgoing.extend(ops.iter().cloned());
        for op in &outgoing {
            self.store_op_message(group, op)?;
        }
        let ops = outgoing;
        // Who hears of them: the members after them, and those they removed.
        let mut to: Vec<[u8; 16]> = state.members.keys().copied().collect();
        to.extend(before.iter().filter(|u| !state.is_member(u)));
        if !self.own_other_devices() {
            to.retain(|u| *u != me);
        }
        // New members get the graph before these operations too (all of it, so that they
        // derive the same state).
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
            let ctx = &self.groups.by_id[group];
            ctx.resolved
                .as_ref()
                .map(|r| r.linked.clone())
                .unwrap_or_default()
                .iter()
                .filter(|h| !fresh.contains(*h))
                .filter_map(|h| ctx.ops.iter().find(|o| o.hash == *h).cloned())
                .collect()
        };
        // The graph is in the timeline (a linked device may hold operations without their
        // messages), so it can be owed and queued.
        for op in &prior {
            self.store_op_message(group, op)?;
        }
        // Everything is owed to its recipients first, in one transaction, and settled as it
        // is queued: a crash while sessions are being set up loses no membership change.
        let now = self.clock.now_ms();
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
        self.send_ops(group, &ops, &to);
        self.send_ops(group, &prior, &newcomers);
        self.after_membership_change(group);
        Ok(())
    }

    /// Stores a membership operation as a message of the group's conversation: from its
    /// author (no device: the same row on every member), at its Lamport clock.
    fn store_op_message(&mut self, group: &GroupId, op: &SignedOp) -> Result<Inserted, NodeError> {
        let sender_user = hex(op.op.author.as_slice());
        let own = sender_user == self.me.user_hex;
        let lamport = op.op.lamport;
        self.observe_lamport(&group.to_string(), lamport)?;
        let title = self.state(group).map(|s| s.title.clone()).ok();
        let mut text = self.describe(op);
        let applied = self
            .groups
            .by_id
            .get(group)
            .and_then(|g| g.resolved.as_ref())
            .is_some_and(|r| r.is_applied(&op.hash));
        if !applied {
            text.push_str(NOT_APPLIED);
        }
        let now = self.clock.now_ms();
        let message = Message {
            id: op_message_id(op),
            conversation: ConversationId::from(*group),
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
                message: message_info(&message),
            });
        }
        Ok(inserted)
    }

    /// What this user calls `user`: their own name for this user, a contact's display name,
    /// else the name the group gave them when adding them (else the start of the id).
    pub(crate) fn name_of(&self, user: &[u8; 16]) -> String {
        if user == self.me.user.as_bytes() {
            return self.me.config.name.clone();
        }
        if let Some(c) = self.people.contacts.get(&UserId::from_bytes(*user)) {
            return c.contact.display_name.clone();
        }
        // Members who left or were removed are named by the operation that added them.
        let mut entries = self
            .groups
            .by_id
            .values()
            .flat_map(|g| &g.ops)
            .flat_map(|o| match &o.op.action {
                Action::Create { members, .. } | Action::Add { members } => members.as_slice(),
                _ => &[],
            });
        entries
            .find(|m| m.user.into_array() == *user)
            .map_or_else(|| hex(&user[..4]), |m| m.name.clone())
    }

    /// Names the users of a membership message's change ([`membership_info`]).
    pub(crate) fn name_membership(&self, info: &mut MembershipInfo) {
        for u in &mut info.users {
            u.name = Some(self.name_of(u.user_id.as_bytes()));
        }
    }

    /// A line for the timeline: "Ana added Ben, Cy".
    fn describe(&self, op: &SignedOp) -> String {
        let by = self.name_of(&op.op.author.into_array());
        let (action, users, title) = change(&op.op.action);
        match action {
            "created" => format!("{by} created the group {}", title.unwrap_or_default()),
            "left" => format!("{by} left"),
            verb => {
                let names: Vec<String> = users.iter().map(|u| self.name_of(u)).collect();
                format!("{by} {verb} {}", names.join(", "))
            }
        }
    }

    /// Sends operations over pairwise sessions to every device of `users`, packed into as
    /// few envelopes as fit. They are owed to each user already ([`Engine::commit_ops`]);
    /// queueing settles that, and who cannot be reached now stays owed.
    fn send_ops(&mut self, group: &GroupId, ops: &[SignedOp], users: &[[u8; 16]]) {
        let gid = *group.as_bytes();
        if users.is_empty() {
            return;
        }
        let users: Vec<UserId> = users.iter().map(|u| UserId::from_bytes(*u)).collect();
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
                sender_user: ByteArray::new(*self.me.user.as_bytes()),
                sender_device: ByteArray::new(*self.me.keys.device.device_id().as_bytes()),
                lists: Some(self.list_versions(None)),
                grant: None,
                heads: Vec::new(),
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
            match self.send_pairwise(&users, id, &mut env, &settle, None) {
                Ok(failed) => {
                    for (user, e) in &failed {
                        tracing::info!(%group, member = %user, "member not reachable now; the membership change waits for them: {e}");
                    }
                    if !failed.is_empty() {
                        self.groups.owed_due = true;
                    }
                }
                Err(e) => {
                    tracing::error!(%group, "queueing group operations failed; they stay owed: {e}");
                    self.groups.owed_due = true;
                }
            }
        }
    }

    /// After the membership of `group` changed: members to look up, kept messages to retry,
    /// and an event.
    fn after_membership_change(&mut self, group: &GroupId) {
        self.people.peers_due = true;
        self.retry_stash(None);
        if let Ok(info) = self.group_info(group) {
            self.emit(Event::Group { group: info });
        }
    }

    /// A membership operation from `user`'s envelope (received over a pairwise session), if it is one for the envelope's group
    /// (anything else is logged by kind and dropped): the group and the operation.
    pub(crate) fn parse_group_op(
        user: &str,
        env: &Envelope,
        op_bytes: &[u8],
    ) -> Option<(GroupId, SignedOp)> {
        let Conversation::Group { id } = &env.conversation else {
            return None;
        };
        match SignedOp::from_bytes(op_bytes) {
            Ok(op) if op.op.group == *id => Some((GroupId::from_bytes(**id), op)),
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
    /// group again and, when what is applied changed, writes the timeline and notes who
    /// left (for their messages still in flight).
    pub(crate) fn apply_group_op(&mut self, group: GroupId, op: SignedOp) -> Result<(), NodeError> {
        let before = self
            .groups
            .by_id
            .get(&group)
            .and_then(|g| g.resolved.as_ref())
            .map(|r| r.applied.clone());
        let ctx = self.groups.by_id.entry(group).or_default();
        ctx.hold(op.clone(), self.clock.now_ms());
        ctx.resolve();
        let Some(after) = ctx.resolved.as_ref() else {
            return Ok(());
        };
        let had_applied = before.unwrap_or_default();
        if after.applied == had_applied {
            return Ok(());
        }
        // Store the operations newly applied in the timeline.
        let had: HashSet<[u8; 32]> = had_applied.into_iter().collect();
        let new: Vec<SignedOp> = after
            .applied
            .iter()
            .filter(|h| !had.contains(*h))
            .filter_map(|h| ctx.ops.iter().find(|o| o.hash == *h).cloned())
            .collect();
        for o in &new {
            self.store_op_message(&group, o)?;
        }
        self.after_membership_change(&group);
        Ok(())
    }
}

/// What a membership message's text ends with when its change did not take effect.
const NOT_APPLIED: &str = " (did not take effect)";

/// The change a membership message stores (`data`, the signed operation; `text`, its line),
/// with the users it names still unnamed ([`Engine::name_membership`]); `None` if `data` is
/// not an operation.
pub(crate) fn membership_info(data: &[u8], text: Option<&str>) -> Option<Box<MembershipInfo>> {
    let op = SignedOp::from_bytes(data).ok()?;
    let (action, users, title) = change(&op.op.action);
    Some(Box::new(MembershipInfo {
        action: action.to_owned(),
        users: users
            .into_iter()
            .map(|u| MemberRef {
                user_id: UserId::from_bytes(u),
                name: None,
            })
            .collect(),
        title: title.map(str::to_owned),
        applied: !text.is_some_and(|t| t.ends_with(NOT_APPLIED)),
    }))
}

/// What a membership operation does, as the API names it (`created`, `added`, `removed`,
/// `left`), to whom (for a creation, the first members), and a creation's title.
fn change(action: &Action) -> (&'static str, Vec<[u8; 16]>, Option<&str>) {
    match action {
        Action::Create { title, members, .. } => (
            "created",
            members.iter().map(|m| m.user.into_array()).collect(),
            Some(title),
        ),
        Action::Add { members } => (
            "added",
            members.iter().map(|m| m.user.into_array()).collect(),
            None,
        ),
        Action::Remove { users } => (
            "removed",
            users.iter().map(|u| u.into_array()).collect(),
            None,
        ),
        Action::Leave => ("left", Vec::new(), None),
    }
}
