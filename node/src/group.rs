//! Group membership: signed operations and the one state every member derives from them.
//!
//! A group is a graph of operations. Each names the group, its `parents` (the SHA-256 of the
//! signed bytes of every head of the graph its author held: one when nothing happened
//! concurrently), its `epoch` (one more than its highest parent's; 0 for the creation) and its
//! author, and is signed with the author's identity key. Operations travel over pairwise
//! sessions and arrive in any order; every member keeps all it has received and derives the
//! state from that set alone ([`resolve`]), so members that hold the same operations hold the
//! same state, whatever order they came in.
//!
//! The rules, in the order they are applied (`docs/decisions.md` says why):
//!
//! - **Nothing is ever chosen over anything else.** Concurrent operations (neither an
//!   ancestor of the other) are all applied, in one deterministic order (epoch, then hash), each
//!   checked against the state before it: signed by a member, by an admin when it changes
//!   others' membership, within the limits. No operation can push another out of the
//!   history, so grinding a hash buys nothing, and settled history is final.
//! - **Removals win.** An operation whose author is removed (or leaves) by an applied
//!   operation concurrent with it is void, whatever it does, and an addition of a user that is
//!   concurrent with that user's removal does not add them. A removed member is back only
//!   when an admin adds them again in an operation made after the removal (one that has it
//!   as an ancestor).
//! - **Seniority, from history.** An admin may remove members and the admins made after them
//!   (an admin whose grant is a strict ancestor of the other's, or the creator over those
//!   the creation made admins); nobody removes a more senior admin, who can only leave. The
//!   order comes from the operations that made them admins, which nobody can change later.
//! - **Succession.** When the last admin leaves, the member who has been in the group the
//!   longest (the earliest operation that added them, counted by ancestors) becomes admin,
//!   never one chosen by user id.
//!
//! ```text
//! signed op = version u8 (= 2) | CBOR {body: bytes, signature: bytes(64)}
//! body      = CBOR Op {group, epoch, parents, author, at_ms, lamport, action}
//! ```
//!
//! Version 1 operations (one `parent` each) are still read, as operations with that one
//! parent.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_bytes::ByteArray;
use sha2::{Digest, Sha256};

use crate::consts::{
    MAX_GROUP_MEMBERS, MAX_GROUP_OPS, MAX_GROUP_TITLE_BYTES, MAX_LINK_RELAYS, MAX_MEMBERS_PER_OP,
    MAX_NAME_BYTES, MAX_OP_PARENTS,
};

mod op;

pub use op::{Action, MemberEntry, OP_VERSION, Op, OpError, SignedOp};

/// Where a member's admin role comes from: the operation that granted it, and whether they
/// were its author (the creator, over the admins its creation lists).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// The granting operation.
    pub op: [u8; 32],
    /// Whether the member signed it.
    pub author: bool,
}

/// When a member joined: the operation that added them (its count of ancestors, its hash)
/// and their place in its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Joined {
    /// How many operations came before the adding one.
    pub depth: u64,
    /// The adding operation.
    pub op: [u8; 32],
    /// Place in its member list.
    pub index: u32,
}

/// A member as the state holds them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Identity key.
    pub identity_key: [u8; 32],
    /// Name.
    pub name: String,
    /// Relays.
    pub relays: Vec<String>,
    /// Admin.
    pub admin: bool,
    /// The admin role's origin, when an admin.
    pub grant: Option<Grant>,
    /// When they joined.
    pub joined: Joined,
}

/// A group's state: the fold of its applied operations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// Group id.
    pub id: [u8; 16],
    /// Title.
    pub title: String,
    /// Operations in the graph besides the creation (grows with every operation taken in).
    pub epoch: u64,
    /// The heads of the graph (operations with no child), ascending: a new operation's
    /// parents. At most [`MAX_OP_PARENTS`] (the rest follow in later operations).
    pub heads: Vec<[u8; 32]>,
    /// The highest epoch among the heads.
    pub top: u64,
    /// Members by user id.
    pub members: BTreeMap<[u8; 16], Member>,
}

fn check_entries(entries: &[MemberEntry]) -> Result<(), OpError> {
    if entries.is_empty() || entries.len() > MAX_MEMBERS_PER_OP {
        return Err(OpError::NotAllowed("an operation adds 1 to 64 members"));
    }
    for e in entries {
        if e.name.len() > MAX_NAME_BYTES || e.relays.len() > MAX_LINK_RELAYS {
            return Err(OpError::NotAllowed("member name or relay list too long"));
        }
    }
    Ok(())
}

/// The id of a group created by `author` (user id and identity key) with `salt`: the first 16
/// bytes of SHA-256 over a domain label, the three of them. A creation whose group id is not
/// this is refused, so a member cannot take a group over by signing another creation for its
/// id.
pub fn group_id(author: &[u8; 16], identity_key: &[u8; 32], salt: &[u8; 16]) -> [u8; 16] {
    let mut h = Sha256::new();
    h.update(b"tern/group-id/v1");
    h.update(author);
    h.update(identity_key);
    h.update(salt);
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// What the rules need to know of the graph around an operation being applied.
trait Causality {
    /// Whether `a` is a strict ancestor of `b`.
    fn precedes(&self, a: &[u8; 32], b: &[u8; 32]) -> bool;
    /// How many ancestors `op` has.
    fn depth(&self, op: &[u8; 32]) -> u64;
}

impl GroupState {
    /// The state a creation operation makes, after checking it.
    pub fn genesis(op: &SignedOp) -> Result<Self, OpError> {
        let Action::Create {
            title,
            members,
            salt,
        } = &op.op.action
        else {
            return Err(OpError::OutOfOrder);
        };
        if op.op.epoch != 0 || !op.op.parents.is_empty() {
            return Err(OpError::OutOfOrder);
        }
        if title.trim().is_empty() || title.len() > MAX_GROUP_TITLE_BYTES {
            return Err(OpError::NotAllowed("a group title is 1 to 128 bytes"));
        }
        check_entries(members)?;
        let author = members
            .iter()
            .find(|m| m.user == op.op.author && m.admin)
            .ok_or(OpError::NotAllowed("the creator must be an admin member"))?;
        op.verify(&author.identity_key.into_array())?;
        let id = group_id(
            &author.user.into_array(),
            &author.identity_key.into_array(),
            &salt.into_array(),
        );
        if op.op.group.into_array() != id {
            return Err(OpError::NotAllowed(
                "the group id does not belong to the group's creator",
            ));
        }
        let mut map = BTreeMap::new();
        for (index, m) in members.iter().enumerate() {
            let member = Member {
                identity_key: m.identity_key.into_array(),
                name: m.name.clone(),
                relays: m.relays.clone(),
                admin: m.admin,
                grant: m.admin.then_some(Grant {
                    op: op.hash,
                    author: m.user == op.op.author,
                }),
                joined: Joined {
                    depth: 0,
                    op: op.hash,
                    index: index as u32,
                },
            };
            if map.insert(m.user.into_array(), member).is_some() {
                return Err(OpError::NotAllowed("a member is listed twice"));
            }
        }
        Ok(GroupState {
            id: op.op.group.into_array(),
            title: title.clone(),
            epoch: 0,
            heads: vec![op.hash],
            top: 0,
            members: map,
        })
    }

    /// An operation by `author` on this state's heads (to be signed).
    pub fn next_op(&self, author: [u8; 16], at_ms: i64, lamport: u64, action: Action) -> Op {
        Op {
            group: ByteArray::new(self.id),
            epoch: self.top + 1,
            parents: self.heads.iter().map(|h| ByteArray::new(*h)).collect(),
            author: ByteArray::new(author),
            at_ms,
            lamport,
            action,
        }
    }

    /// Whether `a` is senior to the admin `b` and may remove them.
    fn senior(a: &Grant, b: &Grant, graph: &dyn Causality) -> bool {
        graph.precedes(&a.op, &b.op) || (a.op == b.op && a.author && !b.author)
    }

    /// Applies one operation at its place in the order, checking signature and permissions.
    /// `skip` names users an addition does not add (their removal was concurrent with it).
    fn apply(
        &mut self,
        op: &SignedOp,
        graph: &dyn Causality,
        skip: &HashSet<[u8; 16]>,
    ) -> Result<(), OpError> {
        let o = &op.op;
        let author = o.author.into_array();
        let by = self
            .members
            .get(&author)
            .ok_or(OpError::NotAllowed("the author is not a member"))?;
        op.verify(&by.identity_key)?;
        let grant = by.grant;
        let mut next = self.members.clone();
        match &o.action {
            Action::Create { .. } => return Err(OpError::OutOfOrder),
            Action::Add { members } => {
                if grant.is_none() {
                    return Err(OpError::NotAllowed("only admins add members"));
                }
                check_entries(members)?;
                let depth = graph.depth(&op.hash);
                for (index, m) in members.iter().enumerate() {
                    let user = m.user.into_array();
                    // Already in (a concurrent addition came first), or removed concurrently.
                    if next.contains_key(&user) || skip.contains(&user) {
                        continue;
                    }
                    next.insert(
                        user,
                        Member {
                            identity_key: m.identity_key.into_array(),
                            name: m.name.clone(),
                            relays: m.relays.clone(),
                            admin: m.admin,
                            grant: m.admin.then_some(Grant {
                                op: op.hash,
                                author: false,
                            }),
                            joined: Joined {
                                depth,
                                op: op.hash,
                                index: index as u32,
                            },
                        },
                    );
                }
                if next.len() == self.members.len() {
                    return Err(OpError::NotAllowed("already members"));
                }
                if next.len() > MAX_GROUP_MEMBERS {
                    return Err(OpError::Full {
                        would: next.len(),
                        max: MAX_GROUP_MEMBERS,
                    });
                }
            }
            Action::Remove { users } => {
                let Some(grant) = grant else {
                    return Err(OpError::NotAllowed("only admins remove members"));
                };
                if users.is_empty() || users.len() > MAX_GROUP_MEMBERS {
                    return Err(OpError::NotAllowed("a removal names 1 to 500 members"));
                }
                for u in users {
                    let user = u.into_array();
                    let Some(target) = next.get(&user) else {
                        // Removed already (a concurrent removal came first): it still counts
                        // as this operation's removal.
                        continue;
                    };
                    if let Some(theirs) = &target.grant
                        && !Self::senior(&grant, theirs, graph)
                    {
                        return Err(OpError::NotAllowed(
                            "only a more senior admin removes an admin",
                        ));
                    }
                    next.remove(&user);
                }
            }
            Action::Leave => {
                next.remove(&author);
            }
        }
        // A group never loses its last admin while it has members: the member who joined
        // first (of those whose joining this operation follows) takes over.
        if !next.is_empty() && !next.values().any(|m| m.admin) {
            let heir = next
                .iter()
                .filter(|(_, m)| m.joined.op == op.hash || graph.precedes(&m.joined.op, &op.hash))
                .min_by_key(|(_, m)| m.joined)
                .or_else(|| next.iter().min_by_key(|(_, m)| m.joined))
                .map(|(u, _)| *u);
            if let Some(m) = heir.and_then(|u| next.get_mut(&u)) {
                m.admin = true;
                m.grant = Some(Grant {
                    op: op.hash,
                    author: false,
                });
            }
        }
        self.members = next;
        Ok(())
    }

    /// Whether `user` is a member.
    pub fn is_member(&self, user: &[u8; 16]) -> bool {
        self.members.contains_key(user)
    }

    /// Whether `user` is an admin.
    pub fn is_admin(&self, user: &[u8; 16]) -> bool {
        self.members.get(user).is_some_and(|m| m.admin)
    }
}

/// What became of one operation held for a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied: part of the state.
    Applied,
    /// In the graph, but refused by the rules at its place (or void).
    Refused(OpError),
    /// Not in the graph: an ancestor is missing, it is malformed for its place, it names
    /// another creation, or the graph is full.
    Unlinked,
}

/// A group's graph as every member derives it from the operations held.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The state.
    pub state: GroupState,
    /// The operations in the graph, in the order they are applied (creation first).
    pub linked: Vec<[u8; 32]>,
    /// Of those, the applied ones, in order.
    pub applied: Vec<[u8; 32]>,
    /// What became of every operation held.
    pub outcomes: HashMap<[u8; 32], Outcome>,
}

impl Resolved {
    /// Whether the operation `hash` is applied.
    pub fn is_applied(&self, hash: &[u8; 32]) -> bool {
        matches!(self.outcomes.get(hash), Some(Outcome::Applied))
    }
}

/// Most rounds [`resolve`] makes to settle what is void (each round follows a removal that
/// voids another's removal; far more than any group's history nests).
const MAX_VOID_ROUNDS: usize = 32;

/// Ancestor sets of the linked operations, one bit per operation in apply order.
struct Graph {
    index: HashMap<[u8; 32], usize>,
    words: usize,
    ancestors: Vec<u64>,
}

impl Graph {
    fn has(&self, of: usize, bit: usize) -> bool {
        self.ancestors[of * self.words + bit / 64] >> (bit % 64) & 1 == 1
    }
    fn concurrent(&self, a: usize, b: usize) -> bool {
        a != b && !self.has(a, b) && !self.has(b, a)
    }
}

impl Causality for Graph {
    fn precedes(&self, a: &[u8; 32], b: &[u8; 32]) -> bool {
        match (self.index.get(a), self.index.get(b)) {
            (Some(&a), Some(&b)) => self.has(b, a),
            _ => false,
        }
    }
    fn depth(&self, op: &[u8; 32]) -> u64 {
        self.index.get(op).map_or(0, |&i| {
            self.ancestors[i * self.words..(i + 1) * self.words]
                .iter()
                .map(|w| u64::from(w.count_ones()))
                .sum()
        })
    }
}

/// Derives the group's state from every operation held for it (see the module
/// documentation). `None` when no valid creation is held yet.
pub fn resolve(ops: &[SignedOp]) -> Option<Resolved> {
    let mut by_hash: HashMap<[u8; 32], &SignedOp> = HashMap::new();
    for op in ops {
        by_hash.entry(op.hash).or_insert(op);
    }
    let mut outcomes: HashMap<[u8; 32], Outcome> =
        by_hash.keys().map(|h| (*h, Outcome::Unlinked)).collect();
    // The creation: only the creator can sign one for the group's id; of several, the lowest
    // hash (the creator's own choice).
    let mut geneses: Vec<&SignedOp> = by_hash
        .values()
        .filter(|o| o.op.parents.is_empty())
        .copied()
        .collect();
    geneses.sort_by_key(|o| o.hash);
    let (genesis_state, genesis) = geneses
        .iter()
        .find_map(|g| GroupState::genesis(g).ok().map(|s| (s, *g)))?;

    // Link: an operation joins the graph when all its parents have, in (epoch, hash) order,
    // which is also the order operations are applied in (parents always come first).
    let mut rest: Vec<&SignedOp> = by_hash
        .values()
        .filter(|o| !o.op.parents.is_empty())
        .copied()
        .collect();
    rest.sort_by_key(|o| (o.op.epoch, o.hash));
    let mut order: Vec<&SignedOp> = vec![genesis];
    let mut index: HashMap<[u8; 32], usize> = HashMap::from([(genesis.hash, 0)]);
    for op in rest {
        if order.len() >= MAX_GROUP_OPS {
            break;
        }
        let o = &op.op;
        let parents: Vec<[u8; 32]> = o.parents.iter().map(|p| p.into_array()).collect();
        let well_formed = o.group.into_array() == genesis_state.id
            && parents.len() <= MAX_OP_PARENTS
            && parents.windows(2).all(|w| w[0] < w[1])
            && parents.iter().all(|p| index.contains_key(p))
            && o.epoch
                .checked_sub(1)
                .is_some_and(|e| parents.iter().map(|p| order[index[p]].op.epoch).max() == Some(e));
        if well_formed {
            index.insert(op.hash, order.len());
            order.push(op);
        }
    }
    let n = order.len();
    let words = n.div_ceil(64);
    let mut ancestors = vec![0u64; n * words];
    for (i, op) in order.iter().enumerate() {
        for p in &op.op.parents {
            let p = index[&p.into_array()];
            for w in 0..words {
                ancestors[i * words + w] |= ancestors[p * words + w];
            }
            ancestors[i * words + p / 64] |= 1 << (p % 64);
        }
    }
    let graph = Graph {
        index,
        words,
        ancestors,
    };

    // Apply in order; then void what the applied removals void, and apply again, until what
    // is void no longer changes. Each round starts from the removals of the one before (a
    // removal that itself turns out void voids nothing); the rounds are bounded, and the
    // same operations give the same rounds everywhere.
    let mut void: HashSet<usize> = HashSet::new();
    let mut skip: HashMap<usize, HashSet<[u8; 16]>> = HashMap::new();
    let none = HashSet::new();
    let mut rounds = 0;
    let (state, results) = loop {
        rounds += 1;
        let mut state = genesis_state.clone();
        let mut results: Vec<Result<(), OpError>> = vec![Ok(())];
        let mut removals: Vec<(usize, [u8; 16])> = Vec::new();
        for (i, op) in order.iter().enumerate().skip(1) {
            if void.contains(&i) {
                results.push(Err(OpError::Void));
                continue;
            }
            let r = state.apply(op, &graph, skip.get(&i).unwrap_or(&none));
            if r.is_ok() {
                removals.extend(op.removes().into_iter().map(|u| (i, u)));
            }
            results.push(r);
        }
        let mut next_void: HashSet<usize> = HashSet::new();
        let mut next_skip: HashMap<usize, HashSet<[u8; 16]>> = HashMap::new();
        for &(r, user) in &removals {
            for (j, op) in order.iter().enumerate().skip(1) {
                if !graph.concurrent(r, j) {
                    continue;
                }
                if op.op.author.into_array() == user {
                    next_void.insert(j);
                }
                if let Action::Add { members } = &op.op.action
                    && members.iter().any(|m| m.user.into_array() == user)
                {
                    next_skip.entry(j).or_default().insert(user);
                }
            }
        }
        if (next_void == void && next_skip == skip) || rounds >= MAX_VOID_ROUNDS {
            break (state, results);
        }
        void = next_void;
        skip = next_skip;
    };
    let mut state = state;
    let mut has_child = vec![false; n];
    for op in &order {
        for p in &op.op.parents {
            has_child[graph.index[&p.into_array()]] = true;
        }
    }
    let mut heads: Vec<usize> = (0..n).filter(|i| !has_child[*i]).collect();
    // The newest heads first when there are more than one operation can name.
    heads.sort_by_key(|i| std::cmp::Reverse((order[*i].op.epoch, order[*i].hash)));
    heads.truncate(MAX_OP_PARENTS);
    state.top = heads.iter().map(|i| order[*i].op.epoch).max().unwrap_or(0);
    let mut head_hashes: Vec<[u8; 32]> = heads.iter().map(|i| order[*i].hash).collect();
    head_hashes.sort();
    state.heads = head_hashes;
    state.epoch = (n - 1) as u64;
    let mut applied = Vec::new();
    for (op, result) in order.iter().zip(results) {
        let outcome = match result {
            Ok(()) => {
                applied.push(op.hash);
                Outcome::Applied
            }
            Err(e) => Outcome::Refused(e),
        };
        outcomes.insert(op.hash, outcome);
    }
    Some(Resolved {
        state,
        linked: order.iter().map(|o| o.hash).collect(),
        applied,
        outcomes,
    })
}

/// The state of the group as it was at `heads` (the operations an author held when sending
/// something): resolved from those operations and their ancestors only. `None` when one of
/// them is not held.
pub fn state_at(ops: &[SignedOp], heads: &[[u8; 32]]) -> Option<GroupState> {
    let by_hash: HashMap<[u8; 32], &SignedOp> = ops.iter().map(|o| (o.hash, o)).collect();
    let mut keep: HashSet<[u8; 32]> = HashSet::new();
    let mut todo: Vec<[u8; 32]> = heads.to_vec();
    while let Some(h) = todo.pop() {
        if !keep.insert(h) {
            continue;
        }
        let op = by_hash.get(&h)?;
        todo.extend(op.op.parents.iter().map(|p| p.into_array()));
    }
    let subset: Vec<SignedOp> = keep.iter().map(|h| by_hash[h].clone()).collect();
    let r = resolve(&subset)?;
    // Every named head must be in the graph (not cut off as malformed).
    heads
        .iter()
        .all(|h| r.outcomes.get(h) != Some(&Outcome::Unlinked))
        .then_some(r.state)
}

/// Checks that `op` (made on the heads of `ops`) applies, returning the state after it or
/// why it does not.
pub fn check_new(ops: &[SignedOp], op: &SignedOp) -> Result<Resolved, OpError> {
    let mut all = ops.to_vec();
    all.push(op.clone());
    let r = resolve(&all).ok_or(OpError::OutOfOrder)?;
    match r.outcomes.get(&op.hash) {
        Some(Outcome::Applied) => Ok(r),
        Some(Outcome::Refused(e)) => Err(e.clone()),
        _ => Err(OpError::OutOfOrder),
    }
}

#[cfg(test)]
mod tests;
