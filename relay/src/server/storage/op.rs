//! The operations the writer thread takes, and the answers of the mailbox ones.

use libp2p::PeerId;
use tokio::sync::oneshot;

use super::{ListCheck, OpError, Share, directory::Claimed};
use crate::wire::mailbox::{self, Envelope, Refusal};

/// The result of a durable deposit.
#[derive(Debug, Clone)]
pub struct Deposited {
    /// Relay-wide message id.
    pub message: u64,
    /// Each mailbox the message now sits in.
    pub stored: Vec<Stored>,
    /// Recipients skipped, and why (a full mailbox or share).
    pub refused: Vec<Refusal>,
}

/// One mailbox a deposit now sits in.
#[derive(Debug, Clone, Copy)]
pub struct Stored {
    /// The recipient.
    pub peer: PeerId,
    /// Its mailbox id (the recipient's fetch cursor).
    pub id: u64,
    /// How many messages that mailbox now holds.
    pub depth: u64,
    /// In the introductions share.
    pub intro: bool,
}

/// A page of a mailbox.
#[derive(Debug, Clone)]
pub struct Page {
    /// Oldest first.
    pub messages: Vec<Envelope>,
    /// More follow.
    pub more: bool,
}

pub(super) type Reply<T> = oneshot::Sender<Result<T, OpError>>;

/// Answers a deposit where its result is known (on the flusher's thread, once the deposit
/// is on disk), with no trip back through the event loop: for deposits whose answer needs
/// nothing else of the loop's state.
pub trait Answerer: Send {
    /// The deposit is stored, and on disk.
    fn stored(self: Box<Self>, deposited: Deposited);
    /// The deposit failed.
    fn failed(self: Box<Self>, error: OpError);
}

/// Where a deposit's result goes.
pub enum DepositReply {
    /// Back to whoever submitted it, to answer from there.
    Channel(Reply<Deposited>),
    /// Answered at once ([`Answerer`]).
    Direct(Box<dyn Answerer>),
}

impl DepositReply {
    /// Hands over the result.
    pub fn send(self, result: Result<Deposited, OpError>) {
        match (self, result) {
            // The submitter may have given up (connection closed); nothing to do then.
            (DepositReply::Channel(tx), r) => drop(tx.send(r)),
            (DepositReply::Direct(a), Ok(d)) => a.stored(d),
            (DepositReply::Direct(a), Err(e)) => a.failed(e),
        }
    }
}

impl From<Reply<Deposited>> for DepositReply {
    fn from(tx: Reply<Deposited>) -> Self {
        DepositReply::Channel(tx)
    }
}

impl std::fmt::Debug for DepositReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DepositReply::Channel(_) => "DepositReply::Channel",
            DepositReply::Direct(_) => "DepositReply::Direct",
        })
    }
}

/// An operation for the writer thread.
#[derive(Debug)]
pub enum Op {
    /// Store a ciphertext for recipients.
    Deposit {
        /// The authenticated sender.
        sender: PeerId,
        /// Deduplicated recipients, each with the share the deposit counts in.
        recipients: Vec<(PeerId, Share)>,
        /// The payload.
        ciphertext: Vec<u8>,
        /// Now (ms since the epoch).
        now_ms: u64,
        /// Expiry (ms since the epoch).
        expires_ms: u64,
        /// Expiry of an entry in an introductions share (ms since the epoch; at most
        /// `expires_ms`).
        intro_expires_ms: u64,
        /// The mailbox id of the first recipient's entry, reserved with the
        /// [`super::DepositSlot`] the deposit is queued with (the `i`th recipient's is
        /// `first_id + i`; a refused recipient's goes unused). Known before the deposit is
        /// applied, so that listening recipients can have it at once.
        first_id: u64,
        /// Its place behind its deposit stream's fence (a deposit from a stream): refused
        /// `OutOfOrder` if the deposit it follows was refused, and marked refused if it is.
        fenced: Option<crate::server::fence::Fenced>,
        /// Answer.
        reply: DepositReply,
    },
    /// Read a mailbox page.
    Fetch {
        /// The authenticated owner.
        owner: PeerId,
        /// Cursor.
        after: u64,
        /// Most messages.
        limit: u32,
        /// Most ciphertext bytes (at least one message is returned).
        max_bytes: usize,
        /// Now, to hide expired entries not yet swept.
        now_ms: u64,
        /// Answer.
        reply: Reply<Page>,
    },
    /// Delete acknowledged messages from a mailbox.
    Ack {
        /// The authenticated owner.
        owner: PeerId,
        /// Mailbox ids.
        ids: Vec<u64>,
        /// Answer: how many were removed.
        reply: Reply<u32>,
    },
    /// Delete expired entries.
    Expire {
        /// Now (ms since the epoch).
        now_ms: u64,
        /// Answer: how many mailbox entries were removed.
        reply: Reply<u64>,
    },
    /// Set or clear a push endpoint.
    SetPush {
        /// The device.
        owner: PeerId,
        /// The URL, or `None` to remove.
        url: Option<String>,
        /// Answer.
        reply: Reply<()>,
    },
    /// Record when a device was last online.
    SetLastSeen {
        /// The device.
        peer: PeerId,
        /// Ms since the epoch.
        ms: u64,
    },
    /// Replace a presence allow-list.
    SetAllowList {
        /// The device.
        owner: PeerId,
        /// Allowed viewers.
        viewers: Vec<PeerId>,
        /// Answer.
        reply: Reply<()>,
    },
    /// Replace the deposit grants of a mailbox (and mark it closed to deposits without one).
    SetGrants {
        /// The device.
        owner: PeerId,
        /// Token hashes.
        hashes: Vec<[u8; 32]>,
        /// Now (ms since the epoch): grants of an owner who stops refreshing them expire.
        now_ms: u64,
        /// Answer.
        reply: Reply<()>,
    },
    /// Delete what devices keep here (prekeys, allow-lists, push endpoints, last seen) for
    /// devices not seen since `before_ms`, and device lists not published since then.
    ExpireDevices {
        /// The cutoff (ms since the epoch).
        before_ms: u64,
        /// Answer: the devices whose registrations went.
        reply: Reply<Vec<PeerId>>,
    },
    /// How full a mailbox is, and by whom.
    Usage {
        /// The device.
        owner: PeerId,
        /// Answer.
        reply: Reply<mailbox::Usage>,
    },
    /// A no-op that proves the writer commits (health check).
    Ping {
        /// Answer.
        reply: Reply<()>,
    },
    /// Store a user's signed device list if `check` allows it given the stored one.
    PublishList {
        /// The user id.
        user: Vec<u8>,
        /// The signed list.
        body: Vec<u8>,
        /// Successor check.
        check: ListCheck,
        /// Answer.
        reply: Reply<()>,
    },
    /// Read a user's signed device list.
    FetchList {
        /// The user id.
        user: Vec<u8>,
        /// Answer.
        reply: Reply<Option<Vec<u8>>>,
    },
    /// Store a device's bundle (without one-time keys) and add its one-time keys, if
    /// `check` accepts the user's stored device list.
    PublishPrekeys {
        /// The device (peer id bytes).
        device: Vec<u8>,
        /// Its user.
        user: Vec<u8>,
        /// The bundle without one-time keys.
        bundle: Vec<u8>,
        /// One-time keys, each an encoded record.
        one_time: Vec<Vec<u8>>,
        /// Listing check.
        check: ListCheck,
        /// Answer: one-time keys now held.
        reply: Reply<u32>,
    },
    /// Take one prekey of a device: its bundle and a one-time key, removed atomically.
    Claim {
        /// The device (peer id bytes).
        device: Vec<u8>,
        /// The user it must belong to.
        user: Vec<u8>,
        /// Whether a one-time key may be taken; if not (the claim limits), the bundle is
        /// answered without one and the claimer uses the fallback key.
        one_time: bool,
        /// Answer: `None` if the relay holds no bundle for that device and user.
        reply: Reply<Option<Claimed>>,
    },
    /// How many one-time keys the relay holds for a device.
    PrekeyCount {
        /// The device (peer id bytes).
        device: Vec<u8>,
        /// Answer.
        reply: Reply<u32>,
    },
    /// Keep a DHT record the relay stored (no answer: the record is served from memory
    /// either way; this copy is for the next start).
    PutDhtRecord(super::DhtRow),
    /// Commit what came before and stop; later operations are answered `Closed`.
    Shutdown,
}

impl Op {
    /// Whether the operation stores more than it frees.
    pub(super) fn grows(&self) -> bool {
        matches!(
            self,
            Op::Deposit { .. }
                | Op::PutDhtRecord(_)
                | Op::SetPush { url: Some(_), .. }
                | Op::SetAllowList { .. }
                | Op::SetGrants { .. }
                | Op::PublishList { .. }
                | Op::PublishPrekeys { .. }
        )
    }
}
