//! Every limit and timing of the node, with the reason for its value.

use std::time::Duration;

/// Longest message text accepted by `send`, in bytes of UTF-8. The relay's default
/// ciphertext cap is 64 KiB; Olm, the envelope and base64-free CBOR add a few hundred bytes,
/// so 32 KiB leaves ample room and is far beyond a chat message.
pub const MAX_TEXT_BYTES: usize = 32 * 1024;

/// Largest plaintext envelope the node decodes (a text at the limit plus headers and ids).
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;

/// Most message ids carried in one receipt.
pub const MAX_RECEIPT_IDS: usize = 512;

/// Longest contact link accepted, in characters (a link with a few relays is ~1 KiB).
pub const MAX_LINK_CHARS: usize = 8 * 1024;

/// Most relay addresses in a contact link.
pub const MAX_LINK_RELAYS: usize = 8;

/// How long a removed home relay's mailbox is still drained: a relay's default time to live
/// for mail (14 days), so whatever a contact left there before learning the new relays is
/// taken before the relay would drop it.
pub const RELAY_DRAIN: Duration = Duration::from_secs(14 * 24 * 3600);

/// Most removed relays drained at once; beyond it the one whose drain ends first stops.
pub const MAX_DRAINING_RELAYS: usize = MAX_LINK_RELAYS;

/// Longest relay address a device list message may name (a multiaddr with a DNS name and
/// a peer id fits well within it).
pub const MAX_RELAY_ADDR_BYTES: usize = 512;

/// Longest relay transport address in a short contact link, in bytes (`Multiaddr::to_vec()`
/// without the `/p2p/` part: 8 for IPv4 + TCP, 20 for IPv6, 21 + the name for DNS).
pub const MAX_SHORT_LINK_RELAY_BYTES: usize = 96;

/// Longest short contact link, in characters: the prefix and the base32 of a link whose relay
/// address is at [`MAX_SHORT_LINK_RELAY_BYTES`] (a typical one is ~250).
pub const MAX_SHORT_LINK_CHARS: usize = 400;

/// How long adding a short contact link may wait for the relay it names to hand over the
/// user's device list (the dial and the request together).
pub const LINK_LIST_FETCH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest `relay add` waits for the relay to answer at the address given before refusing
/// it (nothing is saved then).
pub const RELAY_ADD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Longest display name for a contact or device, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// Capacity of the command queue from [`crate::Node`] handles to the engine.
pub const COMMAND_QUEUE: usize = 256;

/// Capacity of the command queue from the engine to the network event loop.
pub const NETWORK_COMMAND_QUEUE: usize = 1024;

/// Capacity of the network event queue to the engine. When it is full, mail events are
/// dropped (the mail stays in the relay mailbox and is fetched again) and inbound direct
/// messages are refused (the sender falls back to the mailbox).
pub const NETWORK_EVENT_QUEUE: usize = 4096;

/// Capacity of the broadcast channel of node events to API subscribers; a subscriber that
/// falls further behind loses the oldest events and is told how many.
pub const EVENT_BROADCAST: usize = 1024;

/// One-time keys published per batch (vodozemac keeps at most 100 unpublished private
/// halves, so the relay is never given more than the account remembers).
pub const ONE_TIME_KEYS_BATCH: usize = 50;

/// When the relay holds fewer one-time keys than this, a new batch is published.
pub const ONE_TIME_KEYS_LOW: u32 = 20;

/// Heartbeats between two checks of the one-time keys each home relay holds (with the
/// 10 s heartbeat: every minute). Claims by others take keys without the device seeing any
/// session, so the count is asked for on this timer too, not only after inbound sessions.
pub const PREKEY_CHECK_HEARTBEATS: u64 = 6;

/// New inbound sessions (each consumes a one-time key) between two checks of the count.
pub const INBOUND_SESSIONS_PER_TOPUP_CHECK: u32 = 10;

/// How often the outbox is scanned for due deliveries.
pub const OUTBOX_TICK: Duration = Duration::from_millis(250);

/// Most outbox rows read per scan.
pub const OUTBOX_BATCH: u32 = 200;

/// Most commands the engine takes at once when several wait; texts to send among them are
/// stored in one batch (one sync to disk). The first of a batch is answered once the last is
/// encrypted and stored (about a millisecond each), so this bounds that wait.
pub const MAX_SEND_BATCH: usize = 32;

/// Most device lanes being sent at once.
pub const MAX_LANES_IN_FLIGHT: usize = 64;

/// Most rows of one lane in flight at once on its relay's deposit stream, each naming the
/// one before it (`follows`) so the relay stores none after one it refused. On a link with
/// a real round trip this is what a burst to one device moves per round trip (one at a
/// time, a 50 ms link carried 20 messages a second). At most [`MAX_SAFE_SKIP`]: should
/// order still break (a stream that breaks with rows of the window stored), the receiver
/// waits for what is missing rather than skip keys it cannot keep.
pub const LANE_WINDOW: usize = 16;
const _: () = assert!(LANE_WINDOW as u64 <= MAX_SAFE_SKIP);

/// Most rows one lane task takes from its lane before handing back to the engine.
pub const LANE_BATCH: u32 = 64;

/// Most rows one lane task is handed in all: its first [`LANE_BATCH`] and those queued
/// behind them while it runs (the rest go on its next run).
pub const LANE_RUN_MAX: usize = 4 * LANE_BATCH as usize;

/// A pairwise message that would pass over more than this many earlier messages of its
/// chain waits for them (left in the mailbox, or refused on the direct path so the sender
/// uses the mailbox) instead of being decrypted: vodozemac keeps only 40 skipped keys per
/// chain, and a jump past them loses the earliest ones.
pub const MAX_SAFE_SKIP: u64 = 16;

/// How long a pairwise message waits for the earlier messages of its chain before it is
/// decrypted anyway (anything still missing then is asked for again with a resend request).
pub const REORDER_WAIT: Duration = Duration::from_secs(10);

/// Most pairwise messages remembered as waiting for their predecessors (past this, a
/// message is decrypted at once).
pub const MAX_REORDER_WAITING: usize = 65_536;

/// At most one resend request per remote device in this interval.
pub const RESEND_INTERVAL: Duration = Duration::from_secs(5);

/// Most texts one resend request makes this device send again (one page of the store); a
/// receiver missing more asks again once these came (`Engine::follow_resends`).
pub const MAX_RESEND: u32 = tern_store::consts::MAX_PAGE_SIZE;

/// How long the digests of pairwise messages read are kept to tell copies from losses:
/// longer than any relay keeps a message (14 days by default).
pub const PAIRWISE_SEEN_KEEP: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// First retry delay of a failed delivery; doubles per attempt up to [`RETRY_MAX`].
pub const RETRY_BASE: Duration = Duration::from_millis(500);

/// Longest retry delay.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long a direct delivery may take before the mailbox is used instead.
pub const DIRECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Least time between two direct dials to a contact's device reached only through a relay
/// circuit (one behind a NAT that a dial cannot pass is not dialed every time it is asked).
pub const DIRECT_RETRY: Duration = Duration::from_secs(60);

/// Heartbeats from presence (or a connection) telling of an online contact device to the
/// first time it is dialled again (those connected directly are passed over by the network
/// task); each later redial waits twice as long.
pub const DIRECT_REDIAL_HEARTBEATS: u64 = 3;

/// Most doublings of the wait between redials of an online contact device: 3 heartbeats ×
/// 2⁴, eight minutes.
pub const DIRECT_REDIAL_MAX_DOUBLINGS: u32 = 4;

/// Most of a peer's own (not relayed) listen addresses kept to dial it directly.
pub const MAX_PEER_ADDRS: usize = 8;

/// Timeout of one request to a relay.
pub const RELAY_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// First delay before redialling a lost relay; doubles up to [`REDIAL_MAX`].
pub const REDIAL_BASE: Duration = Duration::from_millis(250);

/// Longest delay between relay redials.
pub const REDIAL_MAX: Duration = Duration::from_secs(10);

/// Close a connection after this long without streams (the relay connection is kept by
/// the circuit reservation and the heartbeat).
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

/// Presence heartbeat interval (the relay's default TTL is 30 s).
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);

/// Safety net: the mailbox is fetched this often even when live delivery is on, so mail
/// whose push was dropped under load is not left waiting for a reconnect.
pub const MAILBOX_POLL: Duration = Duration::from_secs(15);

/// Messages asked for per mailbox fetch.
pub const FETCH_PAGE: u32 = 256;

/// History messages scanned back to find this device's last sequence number in a
/// conversation (once per conversation per run).
pub const SEQ_SCAN_LIMIT: u32 = 500;

/// Most API sessions (authenticated WebSocket connections) at once; one more is refused
/// with 503.
pub const MAX_API_CONNECTIONS: usize = 64;

/// Largest JSON-RPC request accepted on the API, bytes.
pub const MAX_API_MESSAGE_BYTES: usize = 256 * 1024;

/// Length of the API bearer token in random bytes (hex-encoded in the token file).
pub const API_TOKEN_BYTES: usize = 32;

/// Messages per page of `history` by default, and at most.
pub const HISTORY_DEFAULT: u32 = 50;
/// See [`HISTORY_DEFAULT`].
pub const HISTORY_MAX: u32 = 500;

/// How long a received message whose per-sender predecessor is missing is held back (kept
/// out of history and events) waiting for the gap to fill, before it is shown with the gap
/// marked. Olm delivers out of order only when paths race (direct vs mailbox) or a relay
/// redelivers, which settles within a second or so on any working network.
pub const HOLD_BACK: Duration = Duration::from_secs(2);

/// Most members in a group (DESIGN.md: groups of up to 500).
pub const MAX_GROUP_MEMBERS: usize = 500;

/// Most members one membership operation adds (a bigger change is split into several, so
/// each operation fits one envelope).
pub const MAX_MEMBERS_PER_OP: usize = 64;

/// Most parents one membership operation names: the heads of the group's operation graph
/// its author held (more heads are named by the author's next operations).
pub const MAX_OP_PARENTS: usize = 16;

/// Most membership operations one group's graph holds; operations past it are not taken in
/// (about eight years of a change a day, and what keeps resolving a group's state bounded).
pub const MAX_GROUP_OPS: usize = 4_096;

/// Most membership operations kept for one group, linked or waiting for an ancestor (twice
/// what its graph takes in): past it, operations received are dropped and logged, so nobody
/// can grow a device's store with operations that never join the graph.
pub const MAX_HELD_GROUP_OPS: usize = 2 * MAX_GROUP_OPS;

/// How long after a member's removal reached this device a message from them is still
/// shown when it names a membership head at which they were a member (it was sent before
/// the removal and arrived after it).
pub const LATE_MESSAGE_GRACE_MS: i64 = 24 * 3600 * 1000;

/// Longest group title, in bytes.
pub const MAX_GROUP_TITLE_BYTES: usize = 128;

/// Group notifications are batched: at most one per conversation per this interval.
pub const NOTIFY_INTERVAL: Duration = Duration::from_secs(1);

/// Most group ciphertexts kept while waiting for their sender key or group: past it new ones
/// are refused (they stay in the relay's mailbox), none kept is pushed out.
pub const MAX_GROUP_STASH: u32 = 10_000;

/// Most of those from one device: the mail of a device past it stays in the relay's mailbox
/// (under the relay's quota) and is fetched again later, so no sender can push out the rest.
pub const MAX_GROUP_STASH_PER_DEVICE: u32 = 500;

/// Most membership operations one envelope may carry (more are ignored).
pub const MAX_OPS_PER_ENVELOPE: usize = 64;

/// Files up to this size are downloaded as soon as their message arrives; larger ones when
/// asked for (`tern file get`).
pub const AUTO_DOWNLOAD_BYTES: u64 = 25 * 1000 * 1000;

/// Reports from file transfer tasks waiting for the engine at most (progress reports are
/// dropped when it is full; the next one carries the total so far).
pub const MEDIA_EVENT_QUEUE: usize = 256;

/// How long a file the web UI uploaded for sending (`POST /upload`) is kept when no
/// transfer takes it (its `file.send` was refused or never came); swept at start and every
/// [`UPLOAD_SWEEP_HEARTBEATS`] heartbeats.
pub const UPLOAD_KEEP: Duration = Duration::from_secs(600);

/// Heartbeats between two sweeps of uploads no transfer took (an hour).
pub const UPLOAD_SWEEP_HEARTBEATS: u64 = 360;

/// At most this often a `transfer` progress event per transfer (plus the last).
pub const MEDIA_PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

/// Longest `status` waits for its home relays' mailbox figures; a relay slower than this is
/// shown with the figures it gave last.
pub const STATUS_USAGE_WAIT: Duration = Duration::from_secs(1);

/// Peers downloading this device's own files at once, at most; more streams are answered
/// `Unavailable` (the peer fetches from the relay instead).
pub const MEDIA_SERVE_STREAMS: usize = 8;

/// How long a peer's blob stream may wait before asking for a file; a stream that asks for
/// nothing is closed then, so idle streams cannot hold the [`MEDIA_SERVE_STREAMS`] places.
pub const MEDIA_SERVE_FIRST_FRAME: Duration = Duration::from_secs(10);

/// When a peer refused for want of room is told to try this device again.
pub const MEDIA_SERVE_BUSY_RETRY: Duration = Duration::from_secs(1);

/// How long opening a `/tern/blob/1` stream (dial and protocol negotiation) may take.
pub const MEDIA_STREAM_OPEN_TIMEOUT: Duration = Duration::from_secs(20);

/// Chunks of 256 KiB an upload keeps unacknowledged at most (8 MiB): the relay fsyncs and
/// acknowledges in batches, and after a crash at most this much is sent again.
pub const UPLOAD_WINDOW_CHUNKS: u32 = 32;

/// A transfer that moves no byte for this long is stopped and retried (a peer that keeps the
/// connection open but sends nothing).
pub const MEDIA_STALL: Duration = Duration::from_secs(60);

/// Longest a peer may take to download one of this device's files from it directly (a slow
/// or stalled peer then falls back to the relay); with [`MEDIA_SERVE_STREAMS`] it bounds
/// what peers can hold of this device.
pub const MEDIA_SERVE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// How long a client of the local API may take to send its request headers; a connection
/// that sends nothing is closed then, so idle connections cannot hold the API's slots.
pub const API_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections to the local API port that have not (yet) authenticated, at most: a new one
/// over this is closed at once (the accept loop never waits), and each is closed after
/// [`API_HEADER_TIMEOUT`] without a request.
pub const MAX_HTTP_CONNECTIONS: usize = 1024;

/// Most messages kept in the quarantine (mail from devices of no known user, taken out of
/// the relay's mailbox so it cannot pin it; read once the sender is known).
pub const QUARANTINE_MAX_MESSAGES: u64 = 2_000;
/// Most ciphertext bytes kept in the quarantine.
pub const QUARANTINE_MAX_BYTES: u64 = 32 * 1024 * 1024;
/// Most quarantined messages from one device (one stranger cannot take it all).
pub const QUARANTINE_MAX_PER_SENDER: u64 = 200;
/// How long quarantined mail is kept before it is dropped unread (7 days).
pub const QUARANTINE_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// Most quarantined messages read in one tick.
pub const QUARANTINE_REPLAY_BATCH: usize = 200;

/// Most prekey claims in flight at once (each a task asking a contact's relays). A device
/// beyond it is claimed at a later attempt; until then it is owed what it missed.
pub const MAX_CLAIMS_IN_FLIGHT: usize = 256;

/// Most commands whose network part (a presence query, a short link's device list, a device
/// list published, a linking record deposited) runs at once in tasks off the engine. A
/// command beyond it is refused: the caller tries again once some have answered.
pub const MAX_COMMANDS_IN_FLIGHT: usize = 64;
