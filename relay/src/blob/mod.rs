//! `/tern/blob/1`: chunked, resumable upload and download of encrypted media (blobs).
//!
//! A sending node encrypts a file with the media cipher (`tern_crypto::media`) into a
//! ciphertext file and uploads that file as an opaque blob; recipients learn the blob id and
//! a read capability inside an end-to-end encrypted message and download it. No relay sees a
//! plaintext, a file name or a key.
//!
//! Every operation opens a stream of its own. Frames are a `u32` big-endian length, then a
//! frame in the wire format (version byte, CBOR), as on `/tern/live/1`; the reader applies the
//! cap of the frame it expects next ([`crate::wire::stream`]).
//!
//! ```text
//! upload:   → Create{manifest, read_cap_hash, ttl_secs}
//!           ← Created{have, complete, expires_at_ms} | Error
//!           → Chunk{index = have}, Chunk{have + 1}, ...   (at most `window` unacknowledged)
//!           ← Ack{have} ... (after fsync)   ← Complete{expires_at_ms} | Error
//! download: → Get{blob, read_cap, from, to}
//!           ← Info{manifest, expires_at_ms} | Error
//!           ← Data{index, bytes} ...  ← End | Error
//! delete:   → Delete{blob}   ← Deleted | Error        (the uploader only)
//! ```
//!
//! The blob id is content-addressed ([`Manifest::id`]), and every chunk is checked against
//! the manifest's SHA-256 on both ends, so neither a relay nor a network can substitute bytes.

pub(crate) mod transfer;

use std::{
    fs::File,
    io::{self, Read},
    path::Path,
};

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use sha2::{Digest, Sha256};

pub use transfer::{
    BlobInfo, BlobSource, Uploaded, delete, download, refuse_busy, serve_get, serve_get_request,
    upload,
};

use crate::wire::{self, DecodeError, EncodeError, ErrorCode};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/tern/blob/1");

/// Size of a blob chunk (a slice of the ciphertext file; the last one may be shorter).
pub const CHUNK_BYTES: u32 = 256 * 1024;

/// Default largest blob a relay accepts: 100 MiB of plaintext plus the media cipher's
/// overhead (a 21-byte header and 16 bytes per 64 KiB chunk, about 25 KiB), rounded up.
pub const DEFAULT_MAX_BLOB_BYTES: u64 = 101 * 1024 * 1024;

/// Smallest chunk size a manifest may use (smaller ones only inflate the manifest).
pub const MIN_CHUNK_BYTES: u32 = 1024;
/// Largest chunk size a manifest may use; it bounds a `Chunk` and a `Data` frame.
pub const MAX_CHUNK_BYTES: u32 = 1024 * 1024;
/// Most chunks in one manifest (4 GiB at [`CHUNK_BYTES`]); it bounds `Create` and `Info`.
pub const MAX_CHUNKS: u32 = 16 * 1024;

/// Longest frame without chunk data that may carry a manifest (`Create`, `Info`): the hashes
/// of [`MAX_CHUNKS`] chunks as one byte string, plus room for the other fields.
pub const MAX_MANIFEST_FRAME_BYTES: usize = MAX_CHUNKS as usize * 32 + 1024;
/// Longest of the other control frames (`Get`, `Delete`, `Created`, `Ack`, `Complete`,
/// `End`, `Deleted`, `Error` with its message).
pub const MAX_CONTROL_FRAME_BYTES: usize = 4096;
/// CBOR framing around a chunk's bytes in `Chunk` and `Data`.
const DATA_FRAME_OVERHEAD: usize = 64;
/// Longest `Error` message the relay writes (longer ones are cut).
pub const MAX_ERROR_MESSAGE_BYTES: usize = 512;
/// Longest blob frame of any kind (a `Chunk` or `Data` of [`MAX_CHUNK_BYTES`], or a manifest).
pub const MAX_FRAME_BYTES: usize = max_usize(
    MAX_MANIFEST_FRAME_BYTES,
    MAX_CHUNK_BYTES as usize + DATA_FRAME_OVERHEAD,
);

const fn max_usize(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// Longest `Chunk` or `Data` frame for chunks of `chunk_size` bytes.
pub fn data_frame_cap(chunk_size: u32) -> usize {
    chunk_size.min(MAX_CHUNK_BYTES) as usize + DATA_FRAME_OVERHEAD
}

/// A blob's id: [`Manifest::id`].
pub type BlobId = [u8; 32];

/// Domain separation for [`Manifest::id`].
const ID_DOMAIN: &[u8] = b"tern blob id v1\0";

/// What a blob is: its size and the SHA-256 of each chunk of its ciphertext.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Size of the blob in bytes.
    pub size: u64,
    /// Size of every chunk but the last, which holds what is left (1..=chunk_size bytes;
    /// an empty blob has no chunks).
    pub chunk_size: u32,
    /// SHA-256 of each chunk, in order. On the wire: one byte string of 32-byte hashes.
    #[serde(with = "hashes_serde")]
    pub hashes: Vec<[u8; 32]>,
}

/// Why a manifest is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The chunk size is outside [`MIN_CHUNK_BYTES`]..=[`MAX_CHUNK_BYTES`].
    #[error("chunk size {0} is outside {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES}")]
    ChunkSize(u32),
    /// The blob is larger than allowed.
    #[error("blob of {size} bytes is over the {max}-byte limit")]
    TooLarge {
        /// The blob's size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The number of hashes does not match size and chunk size.
    #[error("{found} chunk hashes for a blob of {expected} chunks")]
    ChunkCount {
        /// Chunks the size implies.
        expected: u64,
        /// Hashes present.
        found: usize,
    },
}

impl ManifestError {
    /// The wire error code for this problem.
    pub fn code(&self) -> ErrorCode {
        match self {
            ManifestError::TooLarge { .. } => ErrorCode::TooLarge,
            ManifestError::ChunkSize(_) | ManifestError::ChunkCount { .. } => ErrorCode::BadRequest,
        }
    }
}

impl Manifest {
    /// Reads a file and hashes it chunk by chunk.
    pub fn of_file(path: &Path, chunk_size: u32) -> io::Result<Manifest> {
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&chunk_size) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                ManifestError::ChunkSize(chunk_size),
            ));
        }
        let mut file = File::open(path)?;
        let mut buf = vec![0u8; chunk_size as usize];
        let mut hashes = Vec::new();
        let mut size = 0u64;
        loop {
            let n = read_full(&mut file, &mut buf)?;
            if n == 0 {
                break;
            }
            size += n as u64;
            hashes.push(chunk_hash(&buf[..n]));
            if n < buf.len() {
                break;
            }
        }
        Ok(Manifest {
            size,
            chunk_size,
            hashes,
        })
    }

    /// The blob id: SHA-256 over a domain string, size, chunk_size and all hashes.
    /// Content-addressed: the same ciphertext cut the same way has the same id.
    pub fn id(&self) -> BlobId {
        let mut h = Sha256::new();
        h.update(ID_DOMAIN);
        h.update(self.size.to_be_bytes());
        h.update(self.chunk_size.to_be_bytes());
        h.update((self.hashes.len() as u64).to_be_bytes());
        for c in &self.hashes {
            h.update(c);
        }
        h.finalize().into()
    }

    /// Number of chunks (the length of `hashes` in a checked manifest).
    pub fn chunks(&self) -> u32 {
        u32::try_from(self.hashes.len()).unwrap_or(u32::MAX)
    }

    /// Length of chunk `index` (0 past the end).
    pub fn chunk_len(&self, index: u32) -> usize {
        let start = u64::from(index) * u64::from(self.chunk_size);
        self.size
            .saturating_sub(start)
            .min(u64::from(self.chunk_size)) as usize
    }

    /// Byte offset of chunk `index` in the blob.
    pub fn offset(&self, index: u32) -> u64 {
        u64::from(index) * u64::from(self.chunk_size)
    }

    /// Checks that the manifest is consistent (chunk size in range, one hash per chunk) and
    /// that the blob is at most `max_bytes` long.
    pub fn check(&self, max_bytes: u64) -> Result<(), ManifestError> {
        if !(MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&self.chunk_size) {
            return Err(ManifestError::ChunkSize(self.chunk_size));
        }
        let max = max_bytes.min(u64::from(MAX_CHUNKS) * u64::from(self.chunk_size));
        if self.size > max {
            return Err(ManifestError::TooLarge {
                size: self.size,
                max,
            });
        }
        let expected = self.size.div_ceil(u64::from(self.chunk_size));
        if self.hashes.len() as u64 != expected {
            return Err(ManifestError::ChunkCount {
                expected,
                found: self.hashes.len(),
            });
        }
        Ok(())
    }
}

/// Reads until `buf` is full or the file ends; returns how many bytes were read.
fn read_full(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// SHA-256 of one chunk, as listed in a manifest.
pub fn chunk_hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The recipient-side secret is 32 random bytes chosen by the uploader and sent only inside
/// the end-to-end encrypted message; the relay stores only this hash of it and compares in
/// constant time.
pub fn read_cap_hash(read_cap: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"tern blob read cap v1\0");
    h.update(read_cap);
    h.finalize().into()
}

/// Whether `read_cap` hashes to `expected`, in constant time.
pub fn read_cap_matches(read_cap: &[u8; 32], expected: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    read_cap_hash(read_cap).ct_eq(expected).into()
}

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BlobError {
    /// The stream or a local file failed.
    #[error("blob transfer I/O: {0}")]
    Io(#[from] io::Error),
    /// The relay (or peer) refused.
    #[error("refused: {code:?}: {message}")]
    Rejected {
        /// Why.
        code: ErrorCode,
        /// Details, for logs.
        message: String,
        /// For `RateLimited` and `Unavailable`: when to try again.
        retry_after_ms: Option<u64>,
    },
    /// The peer broke the protocol (an unexpected or undecodable frame).
    #[error("blob protocol violation: {0}")]
    Protocol(String),
    /// A downloaded chunk does not match the manifest.
    #[error("chunk {index} does not match the manifest")]
    ChunkMismatch {
        /// The chunk.
        index: u32,
    },
    /// The manifest does not hash to the blob id.
    #[error("the manifest does not match the blob id")]
    ManifestMismatch,
    /// The stream failed before the peer's first answer: it was not taken. A peer drops a
    /// new stream unread when its queue of new streams is full (it holds one: several
    /// opened at the same moment meet it), so the same request on a fresh stream is
    /// answered; [`try_again`] says when to open one.
    #[error("the blob stream was closed before its first answer: {0}")]
    NotTaken(io::Error),
}

/// Streams one transfer opens at most while they are not taken ([`BlobError::NotTaken`]).
pub const STREAM_TRIES: u32 = 8;

/// Whether a transfer that failed with `e` should open a fresh stream and ask again, which
/// it should when the stream was not taken, up to [`STREAM_TRIES`] streams in all (`tries`
/// counts those opened after the first). Waits a moment first, so the peer's queue has
/// room again: between half and all of 10 ms doubling per try (at most 1.28 s, 2.5 s in
/// all), spread so that streams refused together do not come back together.
pub async fn try_again(e: &BlobError, tries: &mut u32) -> bool {
    if !matches!(e, BlobError::NotTaken(_)) || *tries + 1 >= STREAM_TRIES {
        return false;
    }
    *tries += 1;
    let most = 10_000u64 << *tries;
    // Spread, not secrecy: the clock's nanoseconds are random enough at this scale.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    let micros = most / 2 + nanos % (most / 2);
    tokio::time::sleep(std::time::Duration::from_micros(micros)).await;
    true
}

impl BlobError {
    /// The error code of a rejection, if this is one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            BlobError::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// A frame from the side that opens the stream (uploader, downloader).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// Create (or resume) an upload. Idempotent for the same owner and manifest.
    Create {
        /// What will be uploaded.
        manifest: Manifest,
        /// [`read_cap_hash`] of the read capability recipients will present.
        #[serde(with = "bytes32")]
        read_cap_hash: [u8; 32],
        /// Requested lifetime; the relay caps it at its own.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u32>,
    },
    /// One chunk of the blob; chunks come in order from the relay's mark.
    Chunk {
        /// Chunk index.
        index: u32,
        /// The chunk's bytes.
        data: ByteBuf,
    },
    /// Download chunks `[from, to)` (to the end without `to`).
    Get {
        /// The blob.
        #[serde(with = "bytes32")]
        blob: BlobId,
        /// The read capability.
        #[serde(with = "bytes32")]
        read_cap: [u8; 32],
        /// First chunk.
        from: u32,
        /// One past the last chunk.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<u32>,
    },
    /// Delete a blob (its uploader only).
    Delete {
        /// The blob.
        #[serde(with = "bytes32")]
        blob: BlobId,
    },
}

/// A frame from the side that serves (relay, or a node serving its own file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// Answer to `Create`: `have` chunks are durable; the uploader sends from there.
    Created {
        /// Chunks already held durably.
        have: u32,
        /// Whether the blob is complete (nothing left to send).
        complete: bool,
        /// When the blob expires (ms since the epoch).
        expires_at_ms: u64,
    },
    /// The first `have` chunks are durable.
    Ack {
        /// Chunks held durably.
        have: u32,
    },
    /// Every chunk is stored and checked.
    Complete {
        /// When the blob expires (ms since the epoch).
        expires_at_ms: u64,
    },
    /// Answer to `Get`: the manifest (the downloader checks it against the id).
    Info {
        /// The manifest.
        manifest: Manifest,
        /// When the blob expires (ms since the epoch).
        expires_at_ms: u64,
    },
    /// One chunk of a download.
    Data {
        /// Chunk index.
        index: u32,
        /// The chunk's bytes.
        bytes: ByteBuf,
    },
    /// The download range is complete.
    End,
    /// Answer to `Delete`.
    Deleted,
    /// The request (or the upload so far) was refused; the stream closes after it.
    Error {
        /// Why.
        code: ErrorCode,
        /// Details for logs (never secrets).
        message: String,
        /// When to try again, for `RateLimited` and `Unavailable`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

impl Request {
    /// Encodes the frame (at most [`MAX_FRAME_BYTES`]).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        wire::encode("blob request", self, MAX_FRAME_BYTES)
    }

    /// Decodes a frame of at most `max` bytes.
    pub fn decode(bytes: &[u8], max: usize) -> Result<Self, DecodeError> {
        wire::decode("blob request", bytes, max.min(MAX_FRAME_BYTES))
    }
}

impl Response {
    /// Encodes the frame (at most [`MAX_FRAME_BYTES`]).
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        wire::encode("blob response", self, MAX_FRAME_BYTES)
    }

    /// Decodes a frame of at most `max` bytes.
    pub fn decode(bytes: &[u8], max: usize) -> Result<Self, DecodeError> {
        wire::decode("blob response", bytes, max.min(MAX_FRAME_BYTES))
    }

    /// An `Error` frame; the message is cut to [`MAX_ERROR_MESSAGE_BYTES`].
    pub fn error(code: ErrorCode, message: &str, retry_after_ms: Option<u64>) -> Self {
        let mut end = message.len().min(MAX_ERROR_MESSAGE_BYTES);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        Response::Error {
            code,
            message: message[..end].to_owned(),
            retry_after_ms,
        }
    }
}

/// `[u8; 32]` as a CBOR byte string.
mod bytes32 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let b = serde_bytes::ByteBuf::deserialize(d)?;
        <[u8; 32]>::try_from(b.as_slice()).map_err(|_| D::Error::custom("expected 32 bytes"))
    }
}

/// A list of 32-byte hashes as one CBOR byte string (32 bytes per hash, not a CBOR array
/// of small integers), so a manifest of [`MAX_CHUNKS`] fits its frame cap.
mod hashes_serde {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(v: &[[u8; 32]], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v.as_flattened())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
        let b = serde_bytes::ByteBuf::deserialize(d)?;
        if b.len() % 32 != 0 || b.len() / 32 > super::MAX_CHUNKS as usize {
            return Err(D::Error::custom("bad hash list length"));
        }
        Ok(b.chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
