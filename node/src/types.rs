//! What the node reports: the values its methods return and the events it pushes. They are
//! serialized as-is on the local API (see `docs/api.md`).

use serde::{Deserialize, Serialize};
use tern_crypto::{DeviceId, UserId, group::GroupId};
use tern_store::ConversationId;

/// This device and user.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdInfo {
    /// User id (32 hex digits).
    pub user_id: UserId,
    /// Device id (libp2p PeerId).
    pub device_id: DeviceId,
    /// The user's display name.
    pub name: String,
    /// Identity key fingerprint (hex of the Ed25519 public key, in groups).
    pub fingerprint: String,
}

/// A contact.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ContactInfo {
    /// User id.
    pub user_id: UserId,
    /// Name shown.
    pub name: String,
    /// Whether the safety number was verified.
    pub verified: bool,
    /// A new identity key was offered for this contact and not yet accepted: sending is
    /// blocked until it is.
    pub identity_change_pending: bool,
    /// Active devices known.
    pub devices: usize,
    /// Their relays.
    pub relays: Vec<String>,
}

/// A message.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MessageInfo {
    /// Message id (32 hex digits).
    pub id: String,
    /// Conversation id (the contact's user id for a direct chat).
    pub conversation: ConversationId,
    /// Sender user id.
    pub sender: String,
    /// Sender device id.
    pub sender_device: String,
    /// Sent by this user.
    pub own: bool,
    /// The text.
    pub text: String,
    /// Sender's clock at sending, ms since the Unix epoch.
    pub sent_at: i64,
    /// This device's clock when stored, ms.
    pub received_at: i64,
    /// Where it stands: `pending`, `sent`, `delivered`, `read`, `failed`, `received`.
    pub status: MessageStatus,
    /// Lamport clock (display order key).
    pub lamport: u64,
    /// Per-sender sequence number.
    pub seq: u64,
    /// The sender's previous message (sequence number `seq - 1`) has not arrived: shown
    /// after being held back for a while, with the gap marked.
    #[serde(default)]
    pub gap_before: bool,
    /// `text`, or `membership` for a group membership change (its `text` describes it).
    #[serde(default)]
    pub kind: MessageKind,
    /// The sender's name: the contact's display name, or this user's own name for `own`
    /// messages; `None` for a sender who is not a contact (a group member only).
    #[serde(default)]
    pub sender_name: Option<String>,
    /// The sending device's name, for an own message sent from another of this user's
    /// devices (`None` from this device, and for contacts).
    #[serde(default)]
    pub sender_device_name: Option<String>,
    /// For `kind` `file`: the file (its caption is `text`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<Box<MediaInfo>>,
    /// For `kind` `membership`: the change itself (`text` says it in words).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub membership: Option<Box<MembershipInfo>>,
}

/// A group membership change as the API shows it; the member who made it is the message's
/// `sender`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MembershipInfo {
    /// `created`, `added`, `removed` or `left`.
    pub action: String,
    /// Whom it added or removed (for `created`, the first members, the creator among them;
    /// none for `left`).
    pub users: Vec<MemberRef>,
    /// For `created`: the title the group was created with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Whether it took effect (a change made concurrently by someone who had just lost the
    /// right to make it did not).
    pub applied: bool,
}

/// A user a membership change names.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberRef {
    /// Their user id.
    pub user_id: UserId,
    /// Their name as this user knows it: their own name for this user, a contact's display
    /// name, else the name the group gave them.
    #[serde(default)]
    pub name: Option<String>,
}

/// A file or image a message carries, as the API shows it (never its key).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MediaInfo {
    /// The file name (sanitised: safe to create).
    pub name: String,
    /// MIME type.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// Image width and height, if an image.
    #[serde(default)]
    pub width: Option<u32>,
    /// Image height.
    #[serde(default)]
    pub height: Option<u32>,
    /// A small JPEG thumbnail, base64.
    #[serde(default)]
    pub thumbnail: Option<String>,
    /// The placeholder hash (thumbhash), base64.
    #[serde(default)]
    pub thumbhash: Option<String>,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// When the relay drops the encrypted file (ms since the epoch): download before then.
    pub expires_at: u64,
}

/// A file transfer (an upload of a file being sent, or a download of a received one).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TransferInfo {
    /// The message it belongs to (for an upload, the message sent once it is done).
    pub id: String,
    /// `up` or `down`.
    pub direction: String,
    /// queued, preparing, uploading, downloading, verifying, paused, done, failed.
    pub state: String,
    /// Bytes the relay (or the peer) has acknowledged (up) or that arrived verified (down).
    pub bytes: u64,
    /// Bytes in all (the encrypted size).
    pub total: u64,
    /// The file name.
    pub name: String,
    /// For `failed` and `paused`: why (a code such as `too_large`, `over_quota`, `network`,
    /// `hash`, `expired`).
    #[serde(default)]
    pub code: Option<String>,
    /// Where the decrypted file was written, once it was.
    #[serde(default)]
    pub path: Option<String>,
}

/// Where a message stands (`status` in the API; these strings on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Own message, not yet accepted by every recipient device's path.
    Pending,
    /// Own message, accepted by every recipient device's path.
    Sent,
    /// Own message, a delivery receipt came back.
    Delivered,
    /// Own message read by a recipient, or another's message read here.
    Read,
    /// Own message that could not be sent.
    Failed,
    /// Another's message, not yet read here.
    Received,
    /// A status this build does not know (from a newer node).
    #[serde(other)]
    Other,
}

impl MessageStatus {
    /// The API's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
            MessageStatus::Received => "received",
            MessageStatus::Other => "other",
        }
    }
}

impl From<tern_store::Status> for MessageStatus {
    fn from(s: tern_store::Status) -> Self {
        match s {
            tern_store::Status::Pending => MessageStatus::Pending,
            tern_store::Status::Sent => MessageStatus::Sent,
            tern_store::Status::Delivered => MessageStatus::Delivered,
            tern_store::Status::Read => MessageStatus::Read,
            tern_store::Status::Failed => MessageStatus::Failed,
            tern_store::Status::Received => MessageStatus::Received,
        }
    }
}

impl std::fmt::Display for MessageStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a message is (`kind` in the API; these strings on the wire).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// A text.
    #[default]
    Text,
    /// A group membership change (its `text` describes it).
    Membership,
    /// A file (`media` describes it; `text` is its caption).
    File,
    /// A message of a kind this build cannot show, from a newer version: kept, never
    /// dropped.
    Unsupported,
    /// A kind this build does not know (from a newer node).
    #[serde(other)]
    Other,
}

/// One of this user's devices.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Device id (libp2p PeerId).
    pub device_id: DeviceId,
    /// Its name.
    pub name: String,
    /// Whether it is the device answering.
    pub this_device: bool,
    /// When it was certified, seconds since the Unix epoch.
    pub created_at: u64,
    /// Only in `device.add`'s answer: the link words of the provisioning record just sent,
    /// which the new device must show before its user confirms there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub words: Option<String>,
    /// For a device this one linked since it started: whether the new device confirmed
    /// this device's record (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkState>,
}

/// Where a link this device made stands ([`DeviceInfo::link`]).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// The record went; the new device has not confirmed it yet.
    Waiting,
    /// The new device applied this device's record: its user confirmed the words.
    Confirmed,
    /// No confirmation came in time (`device_link::confirm::WAIT`), or the relay could not
    /// be reached to wait for it: the new device may have refused the record, or applied
    /// someone else's. If it is not yours, revoke it.
    Unconfirmed,
}

/// An identity backup written by `id.backup`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupInfo {
    /// The file written.
    pub path: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Contacts in it.
    pub contacts: usize,
    /// Groups in it.
    pub groups: usize,
}

/// A group member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupMemberInfo {
    /// User id.
    pub user_id: UserId,
    /// Name (the contact's name if they are a contact, else the name the adder gave).
    pub name: String,
    /// Whether an admin (admins change membership).
    pub admin: bool,
}

/// A group.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupInfo {
    /// Group id (32 hex digits); also its conversation id.
    pub id: GroupId,
    /// Title.
    pub title: String,
    /// Members, by user id.
    pub members: Vec<GroupMemberInfo>,
    /// The membership version: how many changes were applied.
    pub epoch: u64,
    /// Whether this user is a member (false after leaving or being removed).
    pub member: bool,
    /// Whether this user is an admin.
    pub admin: bool,
    /// Unread messages.
    pub unread: u64,
}

/// A conversation in the list.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConversationInfo {
    /// Conversation id.
    pub id: ConversationId,
    /// Title (the contact's name when the conversation began, or the group's title).
    pub title: Option<String>,
    /// The name to show: the contact's current display name for a direct conversation, else
    /// `title`.
    #[serde(default)]
    pub name: Option<String>,
    /// Preview of the newest message.
    pub last_text: Option<String>,
    /// Last activity, ms (this device's clock).
    pub last_activity: i64,
    /// Unread messages.
    pub unread: u64,
}

/// A contact's presence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PresenceInfo {
    /// User id.
    pub user_id: UserId,
    /// Name.
    pub name: String,
    /// online, away, offline or unknown (the best of their devices).
    pub state: String,
    /// For offline: when last seen, ms.
    pub last_seen: Option<u64>,
}

/// A relay connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RelayInfo {
    /// Its address.
    pub addr: String,
    /// Whether connected.
    pub connected: bool,
    /// Whether it is a home relay (else a contact's).
    pub home: bool,
    /// How full this device's mailbox there is, and by whom (home relays; as last asked,
    /// about once a minute while connected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mailbox: Option<MailboxInfo>,
    /// Outbox rows for users who keep a mailbox here that this relay has not taken yet
    /// (every relay of a recipient gets every row; 0 when it is caught up).
    #[serde(default)]
    pub waiting: u64,
    /// A removed home relay whose mailbox is still drained: until when, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub draining_until_ms: Option<i64>,
    /// Not connected: why the last dial failed, in words for the user (what to do about
    /// it included when there is something to do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Why rows wait here: the codes this relay last refused a recipient's rows with, one
    /// per kind (`share_full`, `quota_count`, `rate_limited`, `storage_full`, ...; `network`
    /// when it did not answer), until those rows go on. Empty when nothing is held back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<String>,
}

/// A device's mailbox at one of its relays.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MailboxInfo {
    /// Messages waiting.
    pub messages: u64,
    /// Ciphertext bytes waiting.
    pub bytes: u64,
    /// The mailbox's limits (messages, bytes).
    pub max_messages: u64,
    /// Most bytes.
    pub max_bytes: u64,
    /// Most messages one sender (or grant) may take.
    pub share_messages: u64,
    /// Messages waiting in the introductions share (from senders without a grant).
    pub intro_messages: u64,
    /// Most messages the introductions share takes.
    pub intro_max_messages: u64,
    /// Grants registered there.
    pub grants: u32,
    /// Who fills it, largest first.
    pub by_sender: Vec<MailboxSender>,
    /// When the relay was asked (ms since the epoch).
    pub at_ms: i64,
}

/// One sender's part of a mailbox.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MailboxSender {
    /// `grant` (a granted user, any of its devices), `device` (one device without a grant:
    /// a contact's by the allow-list, or a stranger's introductions).
    pub kind: String,
    /// The user, when known (user id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<UserId>,
    /// Their name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The depositing device, for `device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<DeviceId>,
    /// Messages waiting from them.
    pub messages: u64,
    /// Bytes waiting from them.
    pub bytes: u64,
}

/// The node's state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusInfo {
    /// User id.
    pub user_id: UserId,
    /// Device id.
    pub device_id: DeviceId,
    /// online or away.
    pub status: String,
    /// Relays.
    pub relays: Vec<RelayInfo>,
    /// Addresses the node listens on.
    pub listen: Vec<String>,
    /// Outbox rows waiting for delivery.
    pub outbox: u64,
    /// Open connections to contacts' devices.
    pub peers: Vec<PeerInfo>,
    /// Losses and their repair since the node started.
    pub recovery: RecoveryInfo,
    /// History moving between this user's devices.
    pub history: HistoryInfo,
    /// Unread messages over every conversation (the badge count; kept in the store, so it
    /// is the same after a restart).
    #[serde(default)]
    pub unread: u64,
    /// The push endpoint and its registration at each home relay.
    #[serde(default)]
    pub push: PushInfo,
}

/// This device's push endpoint (`tern push`): the URL its home relays POST a content-free
/// wake-up to when mail arrives while it is not listening.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushInfo {
    /// The URL (`null`: none set).
    pub url: Option<String>,
    /// Its scheme, host and port only (what may be shown or logged; the path is often the
    /// secret part).
    pub host: Option<String>,
    /// Its registration at each home relay.
    pub relays: Vec<PushRelayInfo>,
}

/// The push endpoint at one home relay.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PushRelayInfo {
    /// The relay's address.
    pub addr: String,
    /// Whether it is connected.
    pub connected: bool,
    /// `registered` (it holds the URL), `refused` (see `code`), `pending` (not yet: the relay
    /// is not connected or has not answered), `failed` (see `code`; tried again), `cleared`
    /// (it confirmed dropping the URL), `none` (no URL was ever set).
    pub state: String,
    /// Why, for `refused` (`not_allowed`: outside the relay's allow-list; `too_large`) and
    /// `failed` (a relay code such as `rate_limited`, or `network`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// History moving to a newly linked device: what this device received (as a new device)
/// and what it still sends (to devices it linked).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryInfo {
    /// Messages of moved history received so far (as the last chunk counted them).
    pub received: u64,
    /// Messages in the history being received (0: none seen yet).
    pub total: u64,
    /// Histories this device is sending, one per device it linked.
    pub sending: Vec<HistorySending>,
}

/// A history this device is sending to one it linked.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistorySending {
    /// The new device (as the store's row names it).
    pub device_id: String,
    /// Messages queued for it so far.
    pub sent: u64,
    /// Messages in all.
    pub total: u64,
}

/// What was lost on the way and asked for again, since the node started: all zero when
/// every message arrived in order.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecoveryInfo {
    /// Pairwise messages that could not be decrypted (each one an `undecryptable` event).
    pub undecryptable: u64,
    /// Pairwise messages read only after waiting for earlier ones of their chain.
    pub waited: u64,
    /// Resend requests this device sent.
    pub resends_asked: u64,
    /// Texts this device sent again because a contact's device asked.
    pub texts_resent: u64,
    /// Group messages kept on this device now until their sender key or group arrives (the
    /// stash; not a count since start).
    #[serde(default)]
    pub group_waiting: u64,
    /// Group messages from devices of no known user seen since start: never kept on this
    /// device, left at the relay (each fetch of the same one counts again).
    #[serde(default)]
    pub group_from_strangers: u64,
    /// Requests for a lost sender key this device sent (group messages under it arrived,
    /// the key did not).
    #[serde(default)]
    pub group_keys_asked: u64,
    /// Sender keys this device sent again because a member device asked.
    #[serde(default)]
    pub group_keys_resent: u64,
    /// Messages kept on this device now from devices of no known user (someone not added
    /// as a contact, or a contact's device not in their list yet): read once the sender is
    /// known, dropped after 7 days (not a count since start).
    #[serde(default)]
    pub strangers_waiting: u64,
    /// The devices those messages came from.
    #[serde(default)]
    pub stranger_devices: u64,
    /// Messages from devices of no known user dropped since start, after waiting 7 days.
    #[serde(default)]
    pub strangers_expired: u64,
    /// Direct texts from group members this user has not added as contacts, not kept, since
    /// start: once the sender is added, it sends them again (its notice of how far it has
    /// sent, while its texts stay unreceipted).
    #[serde(default)]
    pub texts_from_non_contacts: u64,
}

/// Connections to one contact device.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerInfo {
    /// Contact user id ("" if the device is no contact's).
    pub user_id: String,
    /// Device id (the connection's PeerId).
    pub device_id: String,
    /// Direct connections.
    pub direct: u32,
    /// Relayed (circuit) connections.
    pub relayed: u32,
}

/// How a file is prepared before it is sent (`file.send`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prepare {
    /// An image is stripped of its metadata (EXIF, GPS) and scaled to 2,048 px; any other
    /// file goes as it is.
    #[default]
    Scaled,
    /// An image is stripped of its metadata, at its full size.
    Original,
    /// The file goes as it is, image or not: nothing decoded, nothing stripped (an image
    /// that cannot be decoded can still be sent this way).
    AsFile,
}

/// How much of a conversation a history request marks read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MarkRead {
    /// Nothing.
    #[default]
    Nothing,
    /// Every message received in it.
    All,
    /// These messages (ids): those the reader saw; the others stay unread.
    Ids(Vec<String>),
}

/// A search hit.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SearchHitInfo {
    /// Conversation.
    pub conversation: ConversationId,
    /// Message id.
    pub id: String,
    /// Snippet with matches in `[` `]`.
    pub snippet: String,
}

/// A safety number.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SafetyInfo {
    /// Contact user id.
    pub user_id: UserId,
    /// Name.
    pub name: String,
    /// Sixty digits in groups of five.
    pub digits: String,
    /// The QR payload (hex) for the other side to scan.
    pub qr: String,
    /// Whether verified.
    pub verified: bool,
}

/// A contact link with a display form.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LinkInfo {
    /// The long link (`tern:` + base58), carrying the signed device list.
    pub link: String,
    /// The short link (`TERN:` + base32, ~250 characters) for a QR code: the identity key
    /// and the first home relay; `None` when there is no home relay it can name.
    pub short: Option<String>,
}

/// What adding a contact did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AddedContact {
    /// The contact.
    pub contact: ContactInfo,
    /// added, updated, or identity_changed (accepted a new key: warn loudly).
    pub outcome: String,
}

/// Something that happened, pushed to API subscribers.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A message was stored (sent here or received).
    Message {
        /// The message.
        message: MessageInfo,
    },
    /// Own messages changed status.
    Receipt {
        /// Conversation.
        conversation: ConversationId,
        /// Message ids.
        ids: Vec<String>,
        /// The new status.
        status: MessageStatus,
    },
    /// A contact's presence changed.
    Presence {
        /// The presence.
        presence: PresenceInfo,
    },
    /// A relay connection came up or went down.
    Connection {
        /// Relay address.
        relay: String,
        /// Whether connected now.
        connected: bool,
    },
    /// A direct connection to a contact's device came up.
    Peer {
        /// Contact user id.
        user_id: UserId,
        /// Device.
        device_id: DeviceId,
        /// Whether through a relay circuit.
        relayed: bool,
    },
    /// A contact's identity key changed: sending is blocked until the user accepts it.
    IdentityChanged {
        /// Contact user id.
        user_id: UserId,
    },
    /// A message from a contact could not be decrypted (nothing was silently lost: the
    /// user is told).
    Undecryptable {
        /// Contact user id ("" when the sending device is no known user's).
        user_id: String,
        /// Device.
        device_id: String,
        /// Why: `message_key_gone` (it came after its key was discarded; the sender is asked
        /// to send its texts again), `cannot_decrypt` (no session reads it; it would fail
        /// again, so nothing is asked for), `group_message` (a group message that does not
        /// open), `group_key_missing` (its sender key never came), `not_a_member` (a group
        /// message from someone no longer a member, sent after their removal or arriving
        /// more than a day after it; refused).
        reason: String,
    },
    /// A group's membership or title changed (or this user joined it).
    Group {
        /// The group as it is now.
        group: GroupInfo,
    },
    /// New messages arrived in a conversation: batched, at most one per conversation per
    /// [`crate::consts::NOTIFY_INTERVAL`] ("7 new messages in Team").
    Notification {
        /// Conversation (group id).
        conversation: ConversationId,
        /// Its title.
        title: String,
        /// Unread messages now.
        unread: u64,
        /// What to show.
        text: String,
    },
    /// A conversation was read here (by any client of this node: another tab, the CLI).
    Read {
        /// Conversation.
        conversation: ConversationId,
        /// Its unread count now (0 once all of it was read).
        #[serde(default)]
        unread: u64,
    },
    /// A chunk of this user's history arrived from the device that linked this one.
    History {
        /// Messages received so far.
        received: u64,
        /// Messages in the whole history.
        total: u64,
    },
    /// A device this one linked confirmed the record, or did not in time.
    DeviceLink {
        /// The new device.
        device_id: DeviceId,
        /// `confirmed` or `unconfirmed`.
        link: LinkState,
    },
    /// Another device of this user revoked this one: it no longer sends.
    Revoked {
        /// This device.
        device_id: DeviceId,
    },
    /// A file transfer moved on (at most a few of these per second per transfer).
    Transfer {
        /// Where it stands.
        transfer: TransferInfo,
    },
    /// Events were dropped because this subscriber fell behind.
    Lagged {
        /// How many.
        missed: u64,
    },
}
