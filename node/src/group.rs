//! Group membership: signed operations and the one state every member derives from them.
//!
//! A group is a chain of operations. Each names the group, its `epoch` (0 for the creation,
//! then one more than its parent's), its `parent` (the SHA-256 of the parent operation's
//! signed bytes) and its author, and is signed with the author's identity key. The state
//! (title, members with their identity keys and relays, admins) is the fold of the chain.
//!
//! Operations travel over pairwise sessions and can arrive in any order. Every member keeps
//! all it has received and derives the chain the same way ([`resolve`]): start at the
//! creation; at each step, of the operations whose parent is the head, take the one with the
//! lowest hash that is valid on the state so far (signed by a member's key, by an admin when
//! it changes others' membership, within the limits). Two admins changing the group at once
//! fork it; everyone picks the same branch, and the author of the losing operation issues it
//! again on top of the winner, so nothing an admin did is lost. Members therefore converge
//! to the same member list once they hold the same operations.
//!
//! ```text
//! signed op = version u8 (= 1) | CBOR {body: bytes, signature: bytes(64)}
//! body      = CBOR Op {group, epoch, parent, author, at_ms, lamport, action}
//! ```

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_bytes::{ByteArray, ByteBuf};
use sha2::{Digest, Sha256};
use tern_crypto::{IdentityKey, IdentityPublicKey};

use crate::consts::{
    MAX_ENVELOPE_BYTES, MAX_GROUP_MEMBERS, MAX_GROUP_TITLE_BYTES, MAX_LINK_RELAYS,
    MAX_MEMBERS_PER_OP, MAX_NAME_BYTES,
};

/// The operation format version this build writes and reads.
pub const OP_VERSION: u8 = 1;

/// A member as an operation introduces them: enough for every other member to reach them
/// (user id, identity key to check their device list, relays that hold their mailboxes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberEntry {
    /// User id.
    pub user: ByteArray<16>,
    /// Identity key.
    pub identity_key: ByteArray<32>,
    /// The name the adder knows them by.
    pub name: String,
    /// Their relays (multiaddrs ending in `/p2p/<peer id>`).
    pub relays: Vec<String>,
    /// Whether they are an admin.
    pub admin: bool,
}

/// What an operation does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Creates the group; the author must be among the members, as an admin.
    Create {
        /// Title.
        title: String,
        /// The first members (at most [`MAX_MEMBERS_PER_OP`]).
        members: Vec<MemberEntry>,
        /// Random; with the creator's user id and identity key it makes the group id
        /// ([`group_id`]), so nobody else can sign a creation for the same group.
        salt: ByteArray<16>,
    },
    /// Adds members (admins only).
    Add {
        /// The new members (at most [`MAX_MEMBERS_PER_OP`]).
        members: Vec<MemberEntry>,
    },
    /// Removes members (admins only).
    Remove {
        /// Their user ids.
        users: Vec<ByteArray<16>>,
    },
    /// The author leaves.
    Leave,
}

/// An operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The group id.
    pub group: ByteArray<16>,
    /// 0 for the creation, else the parent's epoch plus one.
    pub epoch: u64,
    /// SHA-256 of the parent's signed bytes (zeros for the creation).
    pub parent: ByteArray<32>,
    /// The author's user id.
    pub author: ByteArray<16>,
    /// The author's clock, ms.
    pub at_ms: i64,
    /// The group conversation's Lamport clock at the author when issued: every member
    /// shows the change at the same place in the timeline.
    pub lamport: u64,
    /// What it does.
    pub action: Action,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    body: ByteBuf,
    signature: ByteArray<64>,
}

/// A signed operation as received or made (the signature is checked by [`GroupState`],
/// which knows the author's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedOp {
    /// The operation.
    pub op: Op,
    body: Vec<u8>,
    signature: [u8; 64],
    bytes: Vec<u8>,
    /// SHA-256 of [`SignedOp::to_bytes`]: the operation's name in the chain.
    pub hash: [u8; 32],
}

/// Why an operation is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpError {
    /// Not a valid encoding.
    #[error("malformed group operation: {0}")]
    Malformed(String),
    /// A version this build does not read.
    #[error("group operation version {0} is not supported")]
    UnsupportedVersion(u8),
    /// The signature does not verify under the author's key.
    #[error("bad signature on a group operation")]
    BadSignature,
    /// The author may not do this.
    #[error("{0}")]
    NotAllowed(&'static str),
    /// The group would have too many members.
    #[error("a group has at most {max} members; this makes {would}")]
    Full {
        /// Members it would have.
        would: usize,
        /// The limit.
        max: usize,
    },
    /// The operation does not follow the state it is applied to.
    #[error("group operation out of order")]
    OutOfOrder,
}

impl SignedOp {
    /// Signs an operation with the author's identity key.
    pub fn sign(op: Op, identity: &IdentityKey) -> Result<Self, OpError> {
        let mut body = Vec::new();
        ciborium::into_writer(&op, &mut body).map_err(|e| OpError::Malformed(e.to_string()))?;
        let signature = identity.sign_group_operation(&body);
        let mut bytes = vec![OP_VERSION];
        ciborium::into_writer(
            &Wire {
                body: ByteBuf::from(body.clone()),
                signature: ByteArray::new(signature),
            },
            &mut bytes,
        )
        .map_err(|e| OpError::Malformed(e.to_string()))?;
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(OpError::Malformed(format!(
                "{} bytes, over the {MAX_ENVELOPE_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let hash = Sha256::digest(&bytes).into();
        Ok(SignedOp {
            op,
            body,
            signature,
            bytes,
            hash,
        })
    }

    /// Decodes a signed operation (size, version, structure and canonical encoding; the
    /// signature is checked when it is applied).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OpError> {
        if bytes.len() > MAX_ENVELOPE_BYTES {
            return Err(OpError::Malformed("too large".into()));
        }
        let (&version, mut rest) = bytes
            .split_first()
            .ok_or_else(|| OpError::Malformed("empty".into()))?;
        if version != OP_VERSION {
            return Err(OpError::UnsupportedVersion(version));
        }
        // The decoder's own message is not kept: it could quote names from the operation.
        let wire: Wire = ciborium::from_reader(&mut rest)
            .map_err(|_| OpError::Malformed("not a signed operation".into()))?;
        if !rest.is_empty() {
            return Err(OpError::Malformed("trailing bytes".into()));
        }
        let op: Op = ciborium::from_reader(wire.body.as_slice())
            .map_err(|_| OpError::Malformed("not an operation".into()))?;
        // One encoding per operation, so its hash names it.
        let mut again = Vec::new();
        ciborium::into_writer(&op, &mut again).map_err(|e| OpError::Malformed(e.to_string()))?;
        let mut canonical = vec![OP_VERSION];
        ciborium::into_writer(
            &Wire {
                body: ByteBuf::from(again.clone()),
                signature: wire.signature,
            },
            &mut canonical,
        )
        .map_err(|e| OpError::Malformed(e.to_string()))?;
        if again != wire.body.as_slice() || canonical != bytes {
            return Err(OpError::Malformed("non-canonical encoding".into()));
        }
        Ok(SignedOp {
            op,
            body: again,
            signature: wire.signature.into_array(),
            bytes: bytes.to_vec(),
            hash: Sha256::digest(bytes).into(),
        })
    }

    /// The signed bytes.
    pub fn to_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn verify(&self, key: &[u8; 32]) -> Result<(), OpError> {
        IdentityPublicKey::from_bytes(*key)
            .verify_group_operation(&self.body, &self.signature)
            .map_err(|_| OpError::BadSignature)
    }
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
}

/// A group's state at the head of its chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupState {
    /// Group id.
    pub id: [u8; 16],
    /// Title.
    pub title: String,
    /// Epoch of the head operation.
    pub epoch: u64,
    /// Hash of the head operation.
    pub head: [u8; 32],
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

fn member_of(e: &MemberEntry) -> Member {
    Member {
        identity_key: e.identity_key.into_array(),
        name: e.name.clone(),
        relays: e.relays.clone(),
        admin: e.admin,
    }
}

/// The id of a group created by `author` (user id and identity key) with `salt`: the first 16
/// bytes of SHA-256 over a domain label, the three of them. A creation whose group id is not
/// this is refused, so a member cannot take a group over by signing another creation for its
/// id (the lowest-hash valid creation would win).
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
        if op.op.epoch != 0 || op.op.parent.into_array() != [0; 32] {
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
        for m in members {
            if map.insert(m.user.into_array(), member_of(m)).is_some() {
                return Err(OpError::NotAllowed("a member is listed twice"));
            }
        }
        Ok(GroupState {
            id: op.op.group.into_array(),
            title: title.clone(),
            epoch: 0,
            head: op.hash,
            members: map,
        })
    }

    /// Applies the next operation, checking order, signature and permissions.
    pub fn apply(&mut self, op: &SignedOp) -> Result<(), OpError> {
        let o = &op.op;
        if o.group.into_array() != self.id
            || o.epoch != self.epoch + 1
            || o.parent.into_array() != self.head
        {
            return Err(OpError::OutOfOrder);
        }
        let author = o.author.into_array();
        let by = self
            .members
            .get(&author)
            .ok_or(OpError::NotAllowed("the author is not a member"))?;
        op.verify(&by.identity_key)?;
        let admin = by.admin;
        let mut next = self.members.clone();
        match &o.action {
            Action::Create { .. } => return Err(OpError::OutOfOrder),
            Action::Add { members } => {
                if !admin {
                    return Err(OpError::NotAllowed("only admins add members"));
                }
                check_entries(members)?;
                for m in members {
                    if next.insert(m.user.into_array(), member_of(m)).is_some() {
                        return Err(OpError::NotAllowed("already a member"));
                    }
                }
                if next.len() > MAX_GROUP_MEMBERS {
                    return Err(OpError::Full {
                        would: next.len(),
                        max: MAX_GROUP_MEMBERS,
                    });
                }
            }
            Action::Remove { users } => {
                if !admin {
                    return Err(OpError::NotAllowed("only admins remove members"));
                }
                if users.is_empty() || users.len() > MAX_GROUP_MEMBERS {
                    return Err(OpError::NotAllowed("a removal names 1 to 500 members"));
                }
                for u in users {
                    if next.remove(&u.into_array()).is_none() {
                        return Err(OpError::NotAllowed("not a member"));
                    }
                }
            }
            Action::Leave => {
                next.remove(&author);
            }
        }
        // A group never loses its last admin while it has members: the member with the
        // lowest user id takes over (the same choice everywhere).
        if !next.is_empty()
            && !next.values().any(|m| m.admin)
            && let Some(first) = next.values_mut().next()
        {
            first.admin = true;
        }
        self.members = next;
        self.epoch = o.epoch;
        self.head = op.hash;
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

/// The agreed chain of a group's operations.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The state at its head.
    pub state: GroupState,
    /// The hashes of the operations in the chain, creation first.
    pub chain: Vec<[u8; 32]>,
}

/// Derives the agreed chain from every operation held for one group (see the module
/// documentation). `None` when no valid creation is held yet.
pub fn resolve(ops: &[SignedOp]) -> Option<Resolved> {
    let mut children: HashMap<[u8; 32], Vec<&SignedOp>> = HashMap::new();
    let mut geneses: Vec<&SignedOp> = Vec::new();
    for op in ops {
        if op.op.epoch == 0 {
            geneses.push(op);
        } else {
            children
                .entry(op.op.parent.into_array())
                .or_default()
                .push(op);
        }
    }
    geneses.sort_by_key(|o| o.hash);
    let (mut state, first) = geneses
        .iter()
        .find_map(|g| GroupState::genesis(g).ok().map(|s| (s, g.hash)))?;
    let mut chain = vec![first];
    while let Some(kids) = children.get_mut(&state.head) {
        kids.sort_by_key(|o| o.hash);
        let mut advanced = false;
        for kid in kids.iter() {
            let mut next = state.clone();
            if next.apply(kid).is_ok() {
                chain.push(kid.hash);
                state = next;
                advanced = true;
                break;
            }
        }
        if !advanced {
            break;
        }
    }
    Some(Resolved { state, chain })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct User {
        key: IdentityKey,
    }

    impl User {
        fn new() -> Self {
            User {
                key: IdentityKey::generate().unwrap(),
            }
        }
        fn id(&self) -> ByteArray<16> {
            ByteArray::new(*self.key.user_id().as_bytes())
        }
        fn entry(&self, admin: bool) -> MemberEntry {
            MemberEntry {
                user: self.id(),
                identity_key: ByteArray::new(*self.key.public().as_bytes()),
                name: "x".into(),
                relays: vec![],
                admin,
            }
        }
        fn op(&self, group: [u8; 16], parent: &GroupState, action: Action) -> SignedOp {
            SignedOp::sign(
                Op {
                    group: ByteArray::new(group),
                    epoch: parent.epoch + 1,
                    parent: ByteArray::new(parent.head),
                    author: self.id(),
                    at_ms: 0,
                    lamport: 0,
                    action,
                },
                &self.key,
            )
            .unwrap()
        }
    }

    fn create(admin: &User, others: &[&User]) -> SignedOp {
        let mut members = vec![admin.entry(true)];
        members.extend(others.iter().map(|u| u.entry(false)));
        let salt = [7; 16];
        let group = group_id(
            &members[0].user.into_array(),
            &members[0].identity_key.into_array(),
            &salt,
        );
        SignedOp::sign(
            Op {
                group: ByteArray::new(group),
                epoch: 0,
                parent: ByteArray::new([0; 32]),
                author: admin.id(),
                at_ms: 0,
                lamport: 0,
                action: Action::Create {
                    title: "Team".into(),
                    members,
                    salt: ByteArray::new(salt),
                },
            },
            &admin.key,
        )
        .unwrap()
    }

    #[test]
    fn nobody_but_the_creator_can_sign_a_creation_for_a_group_id() {
        let (a, b) = (User::new(), User::new());
        let real = create(&a, &[&b]);
        let s = GroupState::genesis(&real).unwrap();
        // Bob signs his own creation for Alice's group id, as its admin: refused, whatever
        // its hash, so it can never win the lowest-hash choice.
        let mut forged = create(&b, &[&a]).op;
        forged.group = ByteArray::new(s.id);
        let forged = SignedOp::sign(forged, &b.key).unwrap();
        assert_eq!(
            GroupState::genesis(&forged),
            Err(OpError::NotAllowed(
                "the group id does not belong to the group's creator"
            ))
        );
        // Nor can Alice's own creation be moved to another id.
        let mut moved = real.op.clone();
        moved.group = ByteArray::new([9; 16]);
        let moved = SignedOp::sign(moved, &a.key).unwrap();
        assert!(GroupState::genesis(&moved).is_err());
    }

    #[test]
    fn round_trip_and_tampering() {
        let a = User::new();
        let op = create(&a, &[]);
        let back = SignedOp::from_bytes(op.to_bytes()).unwrap();
        assert_eq!(back, op);
        assert!(GroupState::genesis(&back).is_ok());
        // A flipped byte in the body breaks the signature or the encoding.
        let mut bytes = op.to_bytes().to_vec();
        let n = bytes.len();
        bytes[n - 70] ^= 1;
        if let Ok(o) = SignedOp::from_bytes(&bytes) {
            assert!(GroupState::genesis(&o).is_err());
        }
        assert!(matches!(
            SignedOp::from_bytes(&[9, 1, 2]),
            Err(OpError::UnsupportedVersion(9))
        ));
        assert!(SignedOp::from_bytes(&[]).is_err());
    }

    #[test]
    fn permissions_limits_and_order() {
        let (a, b, c) = (User::new(), User::new(), User::new());
        let g = create(&a, &[&b]);
        let mut s = GroupState::genesis(&g).unwrap();
        // A non-admin cannot add.
        let by_b = b.op(
            s.id,
            &s,
            Action::Add {
                members: vec![c.entry(false)],
            },
        );
        assert!(matches!(s.apply(&by_b), Err(OpError::NotAllowed(_))));
        // A forged author fails the signature.
        let mut forged = b.op(
            s.id,
            &s,
            Action::Add {
                members: vec![c.entry(false)],
            },
        );
        forged.op.author = a.id();
        assert_eq!(s.clone().apply(&forged), Err(OpError::BadSignature));
        let add = a.op(
            s.id,
            &s,
            Action::Add {
                members: vec![c.entry(false)],
            },
        );
        s.apply(&add).unwrap();
        assert!(s.is_member(&c.id().into_array()));
        // Replaying it is out of order.
        assert_eq!(s.clone().apply(&add), Err(OpError::OutOfOrder));
        let rm = a.op(
            s.id,
            &s,
            Action::Remove {
                users: vec![b.id()],
            },
        );
        s.apply(&rm).unwrap();
        assert!(!s.is_member(&b.id().into_array()));
        // A removed member's operations are refused.
        let late = b.op(s.id, &s, Action::Leave);
        assert!(s.clone().apply(&late).is_err());
        // The last admin leaving hands admin to the remaining member.
        let leave = a.op(s.id, &s, Action::Leave);
        s.apply(&leave).unwrap();
        assert!(s.is_admin(&c.id().into_array()));
    }

    #[test]
    fn five_hundred_members_then_full() {
        let a = User::new();
        let g = create(&a, &[]);
        let mut s = GroupState::genesis(&g).unwrap();
        let users: Vec<User> = (0..MAX_GROUP_MEMBERS).map(|_| User::new()).collect();
        for chunk in users[..MAX_GROUP_MEMBERS - 1].chunks(MAX_MEMBERS_PER_OP) {
            let op = a.op(
                s.id,
                &s,
                Action::Add {
                    members: chunk.iter().map(|u| u.entry(false)).collect(),
                },
            );
            s.apply(&op).unwrap();
        }
        assert_eq!(s.members.len(), MAX_GROUP_MEMBERS);
        let one_more = a.op(
            s.id,
            &s,
            Action::Add {
                members: vec![users[MAX_GROUP_MEMBERS - 1].entry(false)],
            },
        );
        assert_eq!(
            s.apply(&one_more),
            Err(OpError::Full {
                would: MAX_GROUP_MEMBERS + 1,
                max: MAX_GROUP_MEMBERS
            })
        );
    }

    #[test]
    fn forks_resolve_the_same_whatever_the_arrival_order() {
        let (a, b, c, d) = (User::new(), User::new(), User::new(), User::new());
        let mut g = create(&a, &[&b]);
        // Make b an admin too.
        if let Action::Create { members, .. } = &mut g.op.action {
            members[1].admin = true;
        }
        let g = SignedOp::sign(g.op, &a.key).unwrap();
        let s = GroupState::genesis(&g).unwrap();
        // a adds c while b adds d, both on the creation.
        let x = a.op(
            s.id,
            &s,
            Action::Add {
                members: vec![c.entry(false)],
            },
        );
        let y = b.op(
            s.id,
            &s,
            Action::Add {
                members: vec![d.entry(false)],
            },
        );
        let r1 = resolve(&[g.clone(), x.clone(), y.clone()]).unwrap();
        let r2 = resolve(&[y.clone(), g.clone(), x.clone()]).unwrap();
        assert_eq!(r1.chain, r2.chain);
        assert_eq!(r1.state, r2.state);
        assert_eq!(r1.chain.len(), 2);
        // The loser re-issues on the winner; everyone then has both changes.
        let (loser, user) = if r1.chain[1] == x.hash {
            (&b, &d)
        } else {
            (&a, &c)
        };
        let again = loser.op(
            s.id,
            &r1.state,
            Action::Add {
                members: vec![user.entry(false)],
            },
        );
        let r3 = resolve(&[x, y, again, g]).unwrap();
        assert_eq!(r3.state.members.len(), 4);
        assert_eq!(r3.chain.len(), 3);
    }
}
