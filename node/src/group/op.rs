//! Signed membership operations: what they say, their canonical encoding (version 2, and
//! version 1 still read) and their signature. What they do to a group is the parent module's.

use serde::{Deserialize, Serialize};
use serde_bytes::{ByteArray, ByteBuf};
use sha2::{Digest, Sha256};
use tern_crypto::{IdentityKey, IdentityPublicKey};

use crate::consts::MAX_ENVELOPE_BYTES;

/// The operation format version this build writes.
pub const OP_VERSION: u8 = 2;

/// The first format, one parent per operation; still read.
pub(super) const OP_VERSION_1: u8 = 1;

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
        /// The first members (at most [`crate::consts::MAX_MEMBERS_PER_OP`]).
        members: Vec<MemberEntry>,
        /// Random; with the creator's user id and identity key it makes the group id
        /// ([`super::group_id`]), so nobody else can sign a creation for the same group.
        salt: ByteArray<16>,
    },
    /// Adds members (admins only).
    Add {
        /// The new members (at most [`crate::consts::MAX_MEMBERS_PER_OP`]).
        members: Vec<MemberEntry>,
    },
    /// Removes members (admins only; an admin only by a more senior admin).
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
    /// 0 for the creation, else one more than the highest parent's.
    pub epoch: u64,
    /// SHA-256 of each parent's signed bytes, in ascending order (none for the creation; at
    /// most [`crate::consts::MAX_OP_PARENTS`]).
    pub parents: Vec<ByteArray<32>>,
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

/// The first format's operation: one parent (zeros for the creation).
#[derive(Serialize, Deserialize)]
pub(super) struct OpV1 {
    pub(super) group: ByteArray<16>,
    pub(super) epoch: u64,
    pub(super) parent: ByteArray<32>,
    pub(super) author: ByteArray<16>,
    pub(super) at_ms: i64,
    pub(super) lamport: u64,
    pub(super) action: Action,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    body: ByteBuf,
    signature: ByteArray<64>,
}

/// A signed operation as received or made (the signature is checked by [`super::resolve`], which
/// knows the author's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedOp {
    /// The operation.
    pub op: Op,
    body: Vec<u8>,
    signature: [u8; 64],
    bytes: Vec<u8>,
    /// SHA-256 of [`SignedOp::to_bytes`]: the operation's name in the graph.
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
    /// Its author was removed by a concurrent operation (or left), so it does nothing.
    #[error("the author was removed concurrently; the operation is void")]
    Void,
}

pub(super) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, OpError> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).map_err(|e| OpError::Malformed(e.to_string()))?;
    Ok(out)
}

pub(super) fn wire_bytes(
    version: u8,
    body: &[u8],
    signature: [u8; 64],
) -> Result<Vec<u8>, OpError> {
    let mut bytes = vec![version];
    bytes.extend(encode(&Wire {
        body: ByteBuf::from(body.to_vec()),
        signature: ByteArray::new(signature),
    })?);
    Ok(bytes)
}

impl SignedOp {
    /// Signs an operation with the author's identity key.
    pub fn sign(op: Op, identity: &IdentityKey) -> Result<Self, OpError> {
        let body = encode(&op)?;
        let signature = identity.sign_group_operation(&body);
        let bytes = wire_bytes(OP_VERSION, &body, signature)?;
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
        if version != OP_VERSION && version != OP_VERSION_1 {
            return Err(OpError::UnsupportedVersion(version));
        }
        // The decoder's own message is not kept: it could quote names from the operation.
        let wire: Wire = ciborium::from_reader(&mut rest)
            .map_err(|_| OpError::Malformed("not a signed operation".into()))?;
        if !rest.is_empty() {
            return Err(OpError::Malformed("trailing bytes".into()));
        }
        // One encoding per operation, so its hash names it.
        let (op, again) = if version == OP_VERSION {
            let op: Op = ciborium::from_reader(wire.body.as_slice())
                .map_err(|_| OpError::Malformed("not an operation".into()))?;
            let again = encode(&op)?;
            (op, again)
        } else {
            let old: OpV1 = ciborium::from_reader(wire.body.as_slice())
                .map_err(|_| OpError::Malformed("not an operation".into()))?;
            let again = encode(&old)?;
            let parents = if old.epoch == 0 {
                Vec::new()
            } else {
                vec![old.parent]
            };
            let op = Op {
                group: old.group,
                epoch: old.epoch,
                parents,
                author: old.author,
                at_ms: old.at_ms,
                lamport: old.lamport,
                action: old.action,
            };
            (op, again)
        };
        let canonical = wire_bytes(version, &again, wire.signature.into_array())?;
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

    pub(super) fn verify(&self, key: &[u8; 32]) -> Result<(), OpError> {
        IdentityPublicKey::from_bytes(*key)
            .verify_group_operation(&self.body, &self.signature)
            .map_err(|_| OpError::BadSignature)
    }

    /// The users this operation takes out of the group (the removed, or the author leaving).
    pub(super) fn removes(&self) -> Vec<[u8; 16]> {
        match &self.op.action {
            Action::Remove { users } => users.iter().map(|u| u.into_array()).collect(),
            Action::Leave => vec![self.op.author.into_array()],
            _ => Vec::new(),
        }
    }
}
