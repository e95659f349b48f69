//! The records the store keeps, as the rest of Tern sees them.

use std::fmt;

/// A message id: 128 random bits chosen by the sender.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        tern_crypto::hex::write(f, &self.0)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// A conversation: the peer's user id for a direct chat, the group id for a group (hex
/// either way). Serialized as that plain string.
#[derive(
    Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct ConversationId(pub String);

impl ConversationId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Looked up by its text (maps keyed by conversation take a `&str`).
impl std::borrow::Borrow<str> for ConversationId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// Compared with its text as the API and the store hold it.
impl PartialEq<str> for ConversationId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for ConversationId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for ConversationId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for ConversationId {
    fn from(s: &str) -> Self {
        ConversationId(s.to_owned())
    }
}

/// A direct conversation is named by the peer's user id.
impl From<tern_crypto::UserId> for ConversationId {
    fn from(user: tern_crypto::UserId) -> Self {
        ConversationId(user.to_string())
    }
}

/// A group conversation is named by the group id.
impl From<tern_crypto::group::GroupId> for ConversationId {
    fn from(group: tern_crypto::group::GroupId) -> Self {
        ConversationId(group.to_string())
    }
}

/// Direct or group.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ConversationKind {
    /// One-to-one with another user (all of their devices).
    Direct,
    /// A group.
    Group,
}

impl ConversationKind {
    pub(crate) const fn code(self) -> i64 {
        match self {
            ConversationKind::Direct => 0,
            ConversationKind::Group => 1,
        }
    }
    pub(crate) fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(ConversationKind::Direct),
            1 => Some(ConversationKind::Group),
            _ => None,
        }
    }
}

/// Where a message stands. Own messages go Pending → Sent → Delivered → Read, or Failed;
/// others' messages are Received, then Read.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Status {
    /// Own message, not yet accepted by every recipient device's path.
    Pending,
    /// Own message, every outbox row acknowledged.
    Sent,
    /// Own message, a delivery receipt came back.
    Delivered,
    /// Own message read by a recipient, or another's message read here.
    Read,
    /// Own message that could not be sent.
    Failed,
    /// Another's message, not yet read here.
    Received,
}

impl Status {
    pub(crate) const fn code(self) -> i64 {
        match self {
            Status::Pending => 0,
            Status::Sent => 1,
            Status::Delivered => 2,
            Status::Read => 3,
            Status::Failed => 4,
            Status::Received => 5,
        }
    }
    pub(crate) fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            0 => Status::Pending,
            1 => Status::Sent,
            2 => Status::Delivered,
            3 => Status::Read,
            4 => Status::Failed,
            5 => Status::Received,
            _ => return None,
        })
    }
    /// Progress rank: a status only ever moves to a higher rank.
    pub(crate) fn rank(self) -> u8 {
        match self {
            Status::Pending | Status::Received => 0,
            Status::Failed => 1,
            Status::Sent => 2,
            Status::Delivered => 3,
            Status::Read => 4,
        }
    }
}

/// A message body.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Body {
    /// Plain text; indexed for search.
    Text(String),
    /// A file or image (the node's encoding of its media reference and caption), with the
    /// text that search indexes and previews show (the caption and the file name).
    Media {
        /// The node's encoding.
        data: Vec<u8>,
        /// Searchable, previewable text.
        text: String,
    },
    /// Anything else (a membership change, ...), encoded by the node as an opaque,
    /// versioned blob, with optional text that is indexed for search.
    Structured {
        /// The node's encoding.
        data: Vec<u8>,
        /// Searchable, previewable text, if any.
        text: Option<String>,
    },
}

impl Body {
    /// The searchable text, if any.
    pub fn text(&self) -> Option<&str> {
        match self {
            Body::Text(t) | Body::Media { text: t, .. } => Some(t),
            Body::Structured { text, .. } => text.as_deref(),
        }
    }

    /// Whether it is something a user wrote (a text, or a file with its caption), as opposed
    /// to an entry the node records (a membership change).
    pub fn is_user_content(&self) -> bool {
        matches!(self, Body::Text(_) | Body::Media { .. })
    }
}

/// A message as stored.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Message {
    /// Unique id.
    pub id: MessageId,
    /// The conversation it belongs to.
    pub conversation: ConversationId,
    /// The sending user.
    pub sender_user: String,
    /// The sending device.
    pub sender_device: String,
    /// Per-conversation Lamport clock: the first part of the display order.
    pub lamport: u64,
    /// Per-sender-device sequence number.
    pub seq: u64,
    /// When the sender says it sent it (its clock).
    pub sent_at_ms: i64,
    /// When this device stored it (this device's clock); drives "last activity".
    pub received_at_ms: i64,
    /// Sent by this device's user (from any of their devices).
    pub own: bool,
    /// Delivery status.
    pub status: Status,
    /// The content.
    pub body: Body,
    /// When the text was last edited, if ever.
    pub edited_at_ms: Option<i64>,
}

/// Result of inserting a message.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Inserted {
    /// The message is new and was stored.
    New,
    /// A message with this id was already stored; nothing changed.
    Duplicate,
}

/// Which page of a conversation's history to load.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Page {
    /// The newest messages.
    Latest,
    /// The messages just before this one (older), not including it.
    Before(MessageId),
    /// The messages just after this one (newer), not including it.
    After(MessageId),
}

/// A conversation in the list.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConversationSummary {
    /// Its id.
    pub id: ConversationId,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Title, if one is set.
    pub title: Option<String>,
    /// The newest message in display order, if any.
    pub last_message: Option<Preview>,
    /// Local time of the last message stored or the creation.
    pub last_activity_ms: i64,
    /// Others' messages stored since the last mark-read.
    pub unread_count: u64,
}

/// A short form of a message for the conversation list.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Preview {
    /// The message.
    pub id: MessageId,
    /// Its sender.
    pub sender_user: String,
    /// The first [`crate::consts::PREVIEW_CHARS`] characters of its text, if it has text.
    pub text: Option<String>,
}

/// Keyset cursor for the conversation list.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ConversationCursor {
    pub(crate) last_activity_ms: i64,
    pub(crate) rowid: i64,
}

/// A page of the conversation list.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ConversationPage {
    /// Most recently active first.
    pub conversations: Vec<ConversationSummary>,
    /// Where the next page starts, if there may be one.
    pub next: Option<ConversationCursor>,
}

/// One ciphertext waiting in the outbox for one recipient device.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Delivery {
    /// Recipient user.
    pub recipient_user: String,
    /// Recipient device.
    pub recipient_device: String,
    /// The ciphertext for that device.
    pub payload: Vec<u8>,
}

/// An outbox row that is due.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct OutboxEntry {
    /// The message.
    pub message_id: MessageId,
    /// The delivery.
    pub delivery: Delivery,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it is due.
    pub next_attempt_ms: i64,
}

/// Which receipt is owed.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ReceiptKind {
    /// The message was stored here.
    Delivered,
    /// The message was read here.
    Read,
}

impl ReceiptKind {
    pub(crate) fn code(self) -> i64 {
        match self {
            ReceiptKind::Delivered => 0,
            ReceiptKind::Read => 1,
        }
    }
    pub(crate) fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(ReceiptKind::Delivered),
            1 => Some(ReceiptKind::Read),
            _ => None,
        }
    }
}

/// A receipt owed to a sender and not yet delivered.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct DueReceipt {
    /// Who gets it (the sender of the message).
    pub recipient_user: String,
    /// Delivered or read.
    pub kind: ReceiptKind,
    /// The message it is about.
    pub message_id: MessageId,
}

/// A part of a search snippet.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SnippetPart {
    /// The text.
    pub text: String,
    /// Whether it matched the query.
    pub highlighted: bool,
}

/// A search result.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SearchHit {
    /// The conversation.
    pub conversation: ConversationId,
    /// The message.
    pub message_id: MessageId,
    /// Local time it was stored.
    pub received_at_ms: i64,
    /// A piece of the text around the match, with the matches marked.
    pub snippet: Vec<SnippetPart>,
}

/// Keyset cursor for search results.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SearchCursor(pub(crate) i64);

/// A page of search results.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SearchResults {
    /// Newest stored first.
    pub hits: Vec<SearchHit>,
    /// Where the next page starts, if there may be one.
    pub next: Option<SearchCursor>,
}
