//! Media messages: the reference a message carries to an encrypted file, and the files a
//! node keeps.
//!
//! A sender encrypts a file once with a fresh key (`tern_crypto::media`, 64 KiB chunks) into
//! a staging file under its home, uploads that ciphertext to a relay as a blob
//! (`tern_relay::blob`, `/tern/blob/1`), then sends a message whose end-to-end encrypted
//! envelope carries a [`MediaRef`]: the blob's id and where it lives, the key, a read
//! capability, the plaintext's SHA-256 (the AEAD is not key-committing, so a key that opens
//! the blob must still yield the right bytes), sizes, the MIME type, the file name, and for
//! images the dimensions, a thumbnail and a placeholder hash. The relay sees none of these
//! but the blob id and the hash of the read capability.
//!
//! Both sides keep the file encrypted at rest under `<home>/media/`, named by blob id, and
//! decrypt it on request (`tern file get`); see `docs/decisions.md`.

pub mod image;
pub mod stage;

use serde::{Deserialize, Serialize};
use serde_bytes::{ByteArray, ByteBuf};

/// Largest file a user can send: 100 MiB of plaintext.
pub const MAX_FILE_BYTES: u64 = 100 * 1024 * 1024;
/// Longest file name carried, in bytes of UTF-8 (longer names are shortened at the sender).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest MIME type carried.
pub const MAX_MIME_BYTES: usize = 127;
/// Largest inline thumbnail.
pub const MAX_THUMBNAIL_BYTES: usize = 8 * 1024;
/// Largest placeholder hash (a thumbhash is at most 25 bytes).
pub const MAX_THUMBHASH_BYTES: usize = 64;
/// Most relay addresses in a reference, and the longest one.
pub const MAX_REF_ADDRS: usize = 4;
/// Longest relay address in a reference, in characters.
pub const MAX_REF_ADDR_CHARS: usize = 256;

/// What a message carries about a file (inside the end-to-end encrypted envelope only).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    /// The blob's id at the relay (the hash of its manifest).
    pub blob: ByteArray<32>,
    /// The file's media key.
    pub key: ByteArray<32>,
    /// What the relay asks of a reader: given only to recipients.
    pub read_cap: ByteArray<32>,
    /// SHA-256 of the plaintext, checked after decryption.
    pub sha256: ByteArray<32>,
    /// Plaintext bytes.
    pub size: u64,
    /// Ciphertext bytes (the blob's size).
    pub blob_size: u64,
    /// The blob's chunk size at the relay.
    pub chunk_size: u32,
    /// MIME type (from the image decoder, or `application/octet-stream`).
    pub mime: String,
    /// The file name the sender gave (a base name; the receiver sanitises it again).
    pub name: String,
    /// Image width, after orientation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    /// Image height, after orientation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    /// A small JPEG thumbnail (at most [`MAX_THUMBNAIL_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbnail: Option<ByteBuf>,
    /// A placeholder hash (thumbhash) to draw before the thumbnail decodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thumbhash: Option<ByteBuf>,
    /// The relay holding the blob: full addresses ending in `/p2p/<peer id>`.
    pub relays: Vec<String>,
    /// When the relay drops the blob, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

impl std::fmt::Debug for MediaRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaRef")
            .field("blob", &hex(self.blob.as_slice()))
            .field("size", &self.size)
            .field("mime", &self.mime)
            .finish_non_exhaustive()
    }
}

/// Why a media reference is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad media reference: {0}")]
pub struct BadRef(pub &'static str);

impl MediaRef {
    /// Checks the limits a receiver relies on (a reference comes from a peer).
    pub fn check(&self) -> Result<(), BadRef> {
        if self.size > MAX_FILE_BYTES {
            return Err(BadRef("file over the size limit"));
        }
        let chunk = u64::from(self.chunk_size);
        if !(16 * 1024..=4 * 1024 * 1024).contains(&chunk) {
            return Err(BadRef("chunk size out of range"));
        }
        let expected =
            tern_crypto::media::ciphertext_len(self.size, tern_crypto::consts::MEDIA_CHUNK_SIZE);
        if self.blob_size != expected {
            return Err(BadRef("blob size does not match the file size"));
        }
        if self.name.len() > MAX_NAME_BYTES || self.mime.len() > MAX_MIME_BYTES {
            return Err(BadRef("name or type too long"));
        }
        if self
            .thumbnail
            .as_ref()
            .is_some_and(|t| t.len() > MAX_THUMBNAIL_BYTES)
            || self
                .thumbhash
                .as_ref()
                .is_some_and(|t| t.len() > MAX_THUMBHASH_BYTES)
        {
            return Err(BadRef("thumbnail too large"));
        }
        if self.relays.is_empty()
            || self.relays.len() > MAX_REF_ADDRS
            || self.relays.iter().any(|a| a.len() > MAX_REF_ADDR_CHARS)
        {
            return Err(BadRef("relay addresses missing or too long"));
        }
        Ok(())
    }

    /// Relay chunks in the blob.
    pub fn chunks(&self) -> u64 {
        self.blob_size.div_ceil(u64::from(self.chunk_size.max(1)))
    }

    /// The blob id as hex (the file name under `<home>/media/`).
    pub fn blob_hex(&self) -> String {
        hex(self.blob.as_slice())
    }
}

/// A media message as the store keeps it (`tern_store::Body::Media`'s data).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMedia {
    /// Format version (1).
    pub v: u8,
    /// The reference.
    pub media: MediaRef,
    /// The caption (may be empty).
    pub caption: String,
}

impl StoredMedia {
    /// The store body: the encoding, and the text search and previews use (name and caption).
    pub fn to_body(&self) -> Result<tern_store::Body, crate::NodeError> {
        let mut data = Vec::new();
        ciborium::into_writer(self, &mut data)
            .map_err(|e| crate::NodeError::record("a media message (encoding)", e))?;
        let text = if self.caption.is_empty() {
            self.media.name.clone()
        } else {
            format!("{}\n{}", self.media.name, self.caption)
        };
        Ok(tern_store::Body::Media { data, text })
    }

    /// Decodes a stored media body's data.
    pub fn decode(data: &[u8]) -> Result<Self, crate::NodeError> {
        let m: StoredMedia = ciborium::from_reader(data)
            .map_err(|e| crate::NodeError::record("a stored media message", e))?;
        if m.v != 1 {
            return Err(crate::NodeError::record(
                "a stored media message",
                format_args!("format {} is not known", m.v),
            ));
        }
        Ok(m)
    }
}

/// A message's file as this device holds it: the verified ciphertext and what decrypts it.
#[derive(Clone)]
pub struct LocalFile {
    /// The ciphertext under `<home>/media/`.
    pub path: std::path::PathBuf,
    /// The media key.
    pub key: tern_crypto::media::MediaKey,
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
    /// Plaintext bytes.
    pub size: u64,
    /// MIME type.
    pub mime: String,
    /// The (sanitised) file name.
    pub name: String,
}

impl std::fmt::Debug for LocalFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalFile")
            .field("path", &self.path)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A file name safe to create: the last path component, without control characters,
/// separators or a leading dot, at most [`MAX_NAME_BYTES`]; `file` if nothing is left.
pub fn safe_name(name: &str) -> String {
    let base = name.rsplit(['/', '\\']).next().unwrap_or_default();
    let mut out: String = base
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, ':' | '*' | '?' | '"' | '<' | '>' | '|'))
        .collect();
    while out.starts_with('.') || out.starts_with(' ') {
        out.remove(0);
    }
    let mut end = out.len().min(MAX_NAME_BYTES);
    while !out.is_char_boundary(end) {
        end -= 1;
    }
    out.truncate(end);
    let out = out.trim_end().to_owned();
    if out.is_empty() { "file".into() } else { out }
}

/// The envelope body of a stored message a user wrote: a text, or a file with its caption.
pub(crate) fn wire_body(
    body: &tern_store::Body,
) -> Result<crate::envelope::Body, crate::NodeError> {
    Ok(match body {
        tern_store::Body::Media { data, .. } => {
            let m = StoredMedia::decode(data)?;
            crate::envelope::Body::Text {
                text: m.caption,
                media: Some(Box::new(m.media)),
            }
        }
        other => crate::envelope::Body::Text {
            text: other.text().unwrap_or_default().to_owned(),
            media: None,
        },
    })
}

/// The store body of a received text (with the file it carries, if any).
pub(crate) fn store_body(
    text: String,
    media: Option<Box<MediaRef>>,
) -> Result<tern_store::Body, crate::NodeError> {
    match media {
        None => Ok(tern_store::Body::Text(text)),
        Some(m) => StoredMedia {
            v: 1,
            media: *m,
            caption: text,
        }
        .to_body(),
    }
}

/// What the API shows of a reference (never the key or the read capability).
pub(crate) fn media_info(m: &MediaRef) -> crate::types::MediaInfo {
    use data_encoding::BASE64;
    crate::types::MediaInfo {
        name: safe_name(&m.name),
        mime: m.mime.clone(),
        size: m.size,
        width: m.width,
        height: m.height,
        thumbnail: m.thumbnail.as_ref().map(|t| BASE64.encode(t)),
        thumbhash: m.thumbhash.as_ref().map(|t| BASE64.encode(t)),
        sha256: hex(m.sha256.as_slice()),
        expires_at: m.expires_at_ms,
    }
}

/// Lower-case hex, as blob ids and hashes are shown and named.
pub(crate) use tern_crypto::hex::encode as hex;

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample() -> MediaRef {
        MediaRef {
            blob: ByteArray::new([1; 32]),
            key: ByteArray::new([2; 32]),
            read_cap: ByteArray::new([3; 32]),
            sha256: ByteArray::new([4; 32]),
            size: 1000,
            blob_size: tern_crypto::media::ciphertext_len(1000, 64 * 1024),
            chunk_size: 256 * 1024,
            mime: "text/plain".into(),
            name: "notes.txt".into(),
            width: None,
            height: None,
            thumbnail: None,
            thumbhash: None,
            relays: vec!["/ip4/127.0.0.1/tcp/1/p2p/x".into()],
            expires_at_ms: 5,
        }
    }

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_name("C:\\Users\\x\\photo.jpg"), "photo.jpg");
        assert_eq!(safe_name(".bashrc"), "bashrc");
        assert_eq!(safe_name("a\u{0}b\nc.txt"), "abc.txt");
        assert_eq!(safe_name(".."), "file");
        assert_eq!(safe_name(""), "file");
        let long = "é".repeat(300);
        assert!(safe_name(&long).len() <= MAX_NAME_BYTES);
    }

    #[test]
    fn references_are_checked() {
        assert!(sample().check().is_ok());
        let mut r = sample();
        r.size = MAX_FILE_BYTES + 1;
        assert!(r.check().is_err());
        let mut r = sample();
        r.blob_size += 1;
        assert!(r.check().is_err());
        let mut r = sample();
        r.thumbnail = Some(ByteBuf::from(vec![0; MAX_THUMBNAIL_BYTES + 1]));
        assert!(r.check().is_err());
        let mut r = sample();
        r.relays.clear();
        assert!(r.check().is_err());
        assert!(
            !format!("{:?}", sample()).contains("2, 2"),
            "Debug hides the key"
        );
    }

    #[test]
    fn stored_media_round_trips_and_is_searchable_by_name() {
        let s = StoredMedia {
            v: 1,
            media: sample(),
            caption: "meeting notes".into(),
        };
        let body = s.to_body().unwrap();
        let tern_store::Body::Media { data, text } = &body else {
            panic!("not a media body")
        };
        assert!(text.contains("notes.txt") && text.contains("meeting notes"));
        assert_eq!(StoredMedia::decode(data).unwrap(), s);
    }
}
