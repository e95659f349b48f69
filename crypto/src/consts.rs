//! Every limit of the crypto layer in one place, with the reason for its value.

/// The one record format version this build writes and reads. A record with any other
/// version is refused with [`crate::DecodeError::UnknownVersion`].
pub const FORMAT_VERSION: u8 = 1;

/// Longest device name, in bytes of UTF-8. Names are shown in device lists; a few words suffice.
pub const MAX_DEVICE_NAME_LEN: usize = 64;

/// Most entries (active and revoked) in one device list. Revoked devices stay listed forever, so
/// this bounds a user's lifetime device count; 256 is far beyond what a person links.
pub const MAX_DEVICE_LIST_ENTRIES: usize = 256;

/// Largest relay record (the DHT value a user publishes: relays and device list, signed),
/// header included. 32 KiB holds a device list of about eighty devices; a user with more is
/// found through the contact link and relays only, not the DHT.
pub const MAX_RELAY_RECORD_BYTES: usize = 32 * 1024;

/// Most relay addresses in one relay record.
pub const MAX_RELAY_RECORD_RELAYS: usize = 16;

/// Longest relay address (a multiaddr as text) in a relay record, bytes.
pub const MAX_RELAY_ADDRESS_LEN: usize = 256;

/// Most one-time keys in one published prekey bundle. vodozemac keeps at most 100 unpublished
/// one-time keys per account; publishing more at once would make it forget private halves.
pub const MAX_ONE_TIME_KEYS_PER_BUNDLE: usize = 50;

/// Archived sessions kept per remote device besides the current one (Sesame). A session race or
/// a peer that restarted adds one; five covers repeated races without unbounded growth.
pub const MAX_ARCHIVED_SESSIONS: usize = 5;

/// Digests of recently decrypted pairwise messages kept per remote device, so a redelivered
/// copy is reported as a duplicate rather than as a decryption failure.
pub const PAIRWISE_DUPLICATE_WINDOW: usize = 128;

/// Largest pairwise plaintext accepted for encryption (the node's message size limit sits
/// below this; history chunks and sync copies need room).
pub const MAX_PAIRWISE_PLAINTEXT: usize = 256 * 1024;

/// Largest group plaintext accepted for encryption.
pub const MAX_GROUP_PLAINTEXT: usize = 256 * 1024;

/// Default rotation of an outbound sender key: after this many messages.
pub const DEFAULT_ROTATION_MESSAGES: u32 = 100;

/// Default rotation of an outbound sender key: after this many seconds (7 days).
pub const DEFAULT_ROTATION_SECS: u64 = 7 * 24 * 60 * 60;

/// How far behind the newest message index an inbound sender key keeps the ability to decrypt.
/// Older ratchet state is discarded for forward secrecy; a message that arrives later than this
/// many messages behind the newest one cannot be decrypted any more.
pub const MEGOLM_RETAIN_WINDOW: u32 = 1024;

/// Old inbound ratchet state is discarded once it is this many messages beyond the retain
/// window, so the work of discarding is done once per step rather than once per message.
pub const MEGOLM_DISCARD_STEP: u32 = 64;

/// Plaintext bytes per media chunk. 64 KiB keeps per-chunk overhead (16-byte tag) at 0.02 %
/// while a resumable upload loses little on a broken connection.
pub const MEDIA_CHUNK_SIZE: usize = 64 * 1024;

/// Largest media chunk size a header may announce; decoders refuse more so a hostile header
/// cannot make the reader allocate without bound.
pub const MAX_MEDIA_CHUNK_SIZE: usize = 1024 * 1024;

/// SHA-512 iterations for each half of a safety number (as Signal does), so that finding a
/// second identity key with the same digits costs real work per try.
pub const SAFETY_NUMBER_ITERATIONS: u32 = 5200;

/// Argon2id memory cost in KiB of a passphrase-derived store key (64 MiB, 3 passes, 1 lane:
/// RFC 9106's second recommended option with one lane). Paid at every start of a node whose
/// store is unlocked by a passphrase, so it stays under a second on a small machine.
///
/// The store keeps no copy of its costs inside the database: changing these defaults makes
/// existing stores unopenable with the new ones, so a change needs a rekey step.
pub const ARGON2_MEMORY_KIB: u32 = 64 * 1024;

/// Argon2id passes of a passphrase-derived store key.
pub const ARGON2_ITERATIONS: u32 = 3;

/// Argon2id lanes of a passphrase-derived store key.
pub const ARGON2_LANES: u32 = 1;

/// Argon2id memory cost in KiB of a new identity backup (256 MiB). A backup is made and opened
/// rarely, and the file may sit on a disk or a cloud drive where anyone can copy it and guess
/// offline, so each guess is made four times dearer than the store's.
pub const BACKUP_ARGON2_MEMORY_KIB: u32 = 256 * 1024;

/// Argon2id passes of a new identity backup.
pub const BACKUP_ARGON2_ITERATIONS: u32 = 3;

/// Argon2id lanes of a new identity backup.
pub const BACKUP_ARGON2_LANES: u32 = 1;

/// Largest Argon2id memory cost a backup header may ask of a reader (1 GiB): the costs are
/// read before the tag can be checked, so a damaged or hostile header must not make the reader
/// allocate without bound.
pub const BACKUP_MAX_ARGON2_MEMORY_KIB: u32 = 1024 * 1024;

/// Most Argon2id passes a backup header may ask of a reader.
pub const BACKUP_MAX_ARGON2_ITERATIONS: u32 = 16;

/// Most Argon2id lanes a backup header may ask of a reader.
pub const BACKUP_MAX_ARGON2_LANES: u32 = 16;

/// Largest plaintext inside a backup (16 MiB): the identity, contacts with their device lists
/// and the groups' operations; a backup carries no history.
pub const MAX_BACKUP_PLAINTEXT: usize = 16 * 1024 * 1024;

/// A new passphrase (backup or store) has at least this many characters.
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// ...and at least this many different characters, so `aaaaaaaaaaaa` or `abababababab` are
/// refused.
pub const MIN_PASSPHRASE_DISTINCT_CHARS: usize = 6;

/// Longest passphrase accepted, in bytes of UTF-8.
pub const MAX_PASSPHRASE_BYTES: usize = 1024;
