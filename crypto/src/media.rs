//! The media cipher: a random key per file, XChaCha20-Poly1305 over fixed-size chunks.
//!
//! ```text
//! header (21 bytes, authenticated as part of every chunk's associated data):
//!   version u8 = 1 | chunk_size u32 BE | nonce_prefix [16]
//! chunk i: ciphertext of up to chunk_size plaintext bytes | 16-byte tag
//!   nonce = nonce_prefix || i (u64 BE)
//!   associated data = header || i (u64 BE) || last (u8: 1 on the final chunk, else 0)
//! ```
//!
//! The index in the nonce and associated data makes reordered or dropped chunks fail; the last
//! flag makes a stream cut at a chunk boundary fail (the new final chunk was sealed as "not
//! last"); an empty file is one empty final chunk, so a stream of no chunks is refused too.
//! The streaming functions hold two chunks in memory, whatever the file size.
//!
//! Decryption writes each chunk once it has authenticated, so on an error the output so far
//! must be discarded: write to a temporary file and rename it on success.

use std::io::{self, Read, Write};

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use thiserror::Error;

use crate::consts::{MAX_MEDIA_CHUNK_SIZE, MEDIA_CHUNK_SIZE};
use crate::random::{self, RandomError};
use crate::sealed::Secret32;

/// Version byte of the media format.
pub const MEDIA_VERSION: u8 = 1;
/// Length of the media header.
pub const MEDIA_HEADER_LEN: usize = 21;
/// Length of each chunk's authentication tag.
pub const MEDIA_TAG_LEN: usize = 16;

/// A file's key: 32 random bytes, wiped on drop.
#[derive(Clone, Debug)]
pub struct MediaKey(Secret32);

impl MediaKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, RandomError> {
        Ok(MediaKey(Secret32::random()?))
    }

    /// A key from bytes (as carried in a media reference inside an encrypted message).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        MediaKey(Secret32::new(bytes))
    }

    /// The key bytes, to put in the encrypted message that references the file.
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose()
    }
}

/// Why media could not be encrypted or decrypted.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum MediaError {
    /// Reading the input or writing the output failed.
    #[error("media I/O failed: {0}")]
    Io(#[from] io::Error),
    /// The header names a format version this build does not know.
    #[error("media format version {0} is not supported")]
    UnknownVersion(u8),
    /// The header's chunk size is zero or over [`MAX_MEDIA_CHUNK_SIZE`].
    #[error("media chunk size {0} is out of range")]
    BadChunkSize(u32),
    /// The stream ends before the header or the final chunk.
    #[error("media stream is truncated")]
    Truncated,
    /// A chunk failed authentication: wrong key, altered, reordered, dropped or cut here.
    #[error("media chunk {0} failed authentication (altered, reordered, truncated or wrong key)")]
    Tampered(u64),
    /// No randomness for the nonce prefix.
    #[error(transparent)]
    Random(#[from] RandomError),
}

/// What encrypting a stream produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MediaSummary {
    /// Plaintext bytes read.
    pub plaintext_len: u64,
    /// Ciphertext bytes written, header included.
    pub ciphertext_len: u64,
    /// Chunks written.
    pub chunks: u64,
}

/// The per-file cipher: key, header, chunk size.
pub struct MediaCipher {
    aead: XChaCha20Poly1305,
    header: [u8; MEDIA_HEADER_LEN],
    chunk_size: usize,
}

impl std::fmt::Debug for MediaCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaCipher")
            .field("chunk_size", &self.chunk_size)
            .finish_non_exhaustive()
    }
}

impl MediaCipher {
    /// A cipher for a new file, with a fresh nonce prefix.
    pub fn new(key: &MediaKey, chunk_size: usize) -> Result<Self, MediaError> {
        if chunk_size == 0 || chunk_size > MAX_MEDIA_CHUNK_SIZE {
            return Err(MediaError::BadChunkSize(
                u32::try_from(chunk_size).unwrap_or(u32::MAX),
            ));
        }
        let mut header = [0u8; MEDIA_HEADER_LEN];
        header[0] = MEDIA_VERSION;
        header[1..5].copy_from_slice(&(chunk_size as u32).to_be_bytes());
        random::fill(&mut header[5..])?;
        Ok(Self::with_header(key, header, chunk_size))
    }

    fn with_header(key: &MediaKey, header: [u8; MEDIA_HEADER_LEN], chunk_size: usize) -> Self {
        MediaCipher {
            aead: XChaCha20Poly1305::new(key.expose().into()),
            header,
            chunk_size,
        }
    }

    /// The cipher for an existing file, from its header.
    pub fn from_header(
        key: &MediaKey,
        header: &[u8; MEDIA_HEADER_LEN],
    ) -> Result<Self, MediaError> {
        if header[0] != MEDIA_VERSION {
            return Err(MediaError::UnknownVersion(header[0]));
        }
        let size = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        if size == 0 || size as usize > MAX_MEDIA_CHUNK_SIZE {
            return Err(MediaError::BadChunkSize(size));
        }
        Ok(Self::with_header(key, *header, size as usize))
    }

    /// The header to write before the chunks.
    pub const fn header(&self) -> &[u8; MEDIA_HEADER_LEN] {
        &self.header
    }

    /// Plaintext bytes per chunk.
    pub const fn chunk_size(&self) -> usize {
        self.chunk_size
    }

    fn nonce_and_aad(&self, index: u64, last: bool) -> (XNonce, [u8; MEDIA_HEADER_LEN + 9]) {
        let mut nonce = [0u8; 24];
        nonce[..16].copy_from_slice(&self.header[5..]);
        nonce[16..].copy_from_slice(&index.to_be_bytes());
        let mut aad = [0u8; MEDIA_HEADER_LEN + 9];
        aad[..MEDIA_HEADER_LEN].copy_from_slice(&self.header);
        aad[MEDIA_HEADER_LEN..MEDIA_HEADER_LEN + 8].copy_from_slice(&index.to_be_bytes());
        aad[MEDIA_HEADER_LEN + 8] = u8::from(last);
        (XNonce::from(nonce), aad)
    }

    /// Encrypts one chunk in place: `buf` holds at most `chunk_size` plaintext bytes and ends up
    /// holding the ciphertext followed by the tag.
    pub fn encrypt_chunk(
        &self,
        index: u64,
        last: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(), MediaError> {
        if buf.len() > self.chunk_size {
            return Err(MediaError::BadChunkSize(
                u32::try_from(buf.len()).unwrap_or(u32::MAX),
            ));
        }
        let (nonce, aad) = self.nonce_and_aad(index, last);
        let tag = self
            .aead
            .encrypt_inout_detached(&nonce, &aad, buf.as_mut_slice().into())
            .map_err(|_| MediaError::Tampered(index))?;
        buf.extend_from_slice(&tag);
        Ok(())
    }

    /// Decrypts one chunk in place: `buf` holds ciphertext and tag and ends up holding the
    /// plaintext.
    pub fn decrypt_chunk(
        &self,
        index: u64,
        last: bool,
        buf: &mut Vec<u8>,
    ) -> Result<(), MediaError> {
        if buf.len() < MEDIA_TAG_LEN || buf.len() > self.chunk_size + MEDIA_TAG_LEN {
            return Err(MediaError::Tampered(index));
        }
        let split = buf.len() - MEDIA_TAG_LEN;
        let tag = Tag::try_from(&buf[split..]).map_err(|_| MediaError::Tampered(index))?;
        buf.truncate(split);
        let (nonce, aad) = self.nonce_and_aad(index, last);
        self.aead
            .decrypt_inout_detached(&nonce, &aad, buf.as_mut_slice().into(), &tag)
            .map_err(|_| MediaError::Tampered(index))
    }
}

/// Reads until `buf` holds `want` bytes or the input ends; returns the bytes read.
fn fill<R: Read>(reader: &mut R, buf: &mut Vec<u8>, want: usize) -> io::Result<usize> {
    // Old contents are overwritten by the reads; resizing without clearing first avoids
    // zeroing a whole chunk on every call.
    buf.resize(want, 0);
    let mut got = 0;
    while got < want {
        match reader.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(got);
    Ok(got)
}

/// Encrypts everything `reader` yields to `writer` with [`MEDIA_CHUNK_SIZE`] chunks.
pub fn encrypt_stream<R: Read, W: Write>(
    key: &MediaKey,
    reader: R,
    writer: W,
) -> Result<MediaSummary, MediaError> {
    encrypt_stream_with(key, MEDIA_CHUNK_SIZE, reader, writer)
}

/// [`encrypt_stream`] with a chosen chunk size.
pub fn encrypt_stream_with<R: Read, W: Write>(
    key: &MediaKey,
    chunk_size: usize,
    mut reader: R,
    mut writer: W,
) -> Result<MediaSummary, MediaError> {
    let cipher = MediaCipher::new(key, chunk_size)?;
    writer.write_all(cipher.header())?;
    let mut summary = MediaSummary {
        plaintext_len: 0,
        ciphertext_len: MEDIA_HEADER_LEN as u64,
        chunks: 0,
    };
    let mut current = Vec::with_capacity(chunk_size + MEDIA_TAG_LEN);
    let mut next = Vec::with_capacity(chunk_size + MEDIA_TAG_LEN);
    fill(&mut reader, &mut current, chunk_size)?;
    loop {
        let ahead = fill(&mut reader, &mut next, chunk_size)?;
        let last = ahead == 0;
        summary.plaintext_len += current.len() as u64;
        cipher.encrypt_chunk(summary.chunks, last, &mut current)?;
        writer.write_all(&current)?;
        summary.ciphertext_len += current.len() as u64;
        summary.chunks += 1;
        if last {
            break;
        }
        std::mem::swap(&mut current, &mut next);
    }
    writer.flush()?;
    Ok(summary)
}

/// Decrypts a stream made by [`encrypt_stream`]; returns the plaintext length. On error, discard
/// whatever was written.
pub fn decrypt_stream<R: Read, W: Write>(
    key: &MediaKey,
    mut reader: R,
    mut writer: W,
) -> Result<u64, MediaError> {
    let mut header = [0u8; MEDIA_HEADER_LEN];
    reader.read_exact(&mut header).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => MediaError::Truncated,
        _ => MediaError::Io(e),
    })?;
    let cipher = MediaCipher::from_header(key, &header)?;
    let frame = cipher.chunk_size() + MEDIA_TAG_LEN;
    let mut current = Vec::with_capacity(frame);
    let mut next = Vec::with_capacity(frame);
    if fill(&mut reader, &mut current, frame)? == 0 {
        return Err(MediaError::Truncated);
    }
    let mut index = 0u64;
    let mut total = 0u64;
    loop {
        let ahead = fill(&mut reader, &mut next, frame)?;
        let last = ahead == 0;
        cipher.decrypt_chunk(index, last, &mut current)?;
        writer.write_all(&current)?;
        total += current.len() as u64;
        if last {
            break;
        }
        std::mem::swap(&mut current, &mut next);
        index += 1;
    }
    writer.flush()?;
    Ok(total)
}

/// The ciphertext length for a plaintext of `len` bytes with `chunk_size` chunks.
pub const fn ciphertext_len(len: u64, chunk_size: usize) -> u64 {
    let cs = chunk_size as u64;
    let chunks = if len == 0 { 1 } else { len.div_ceil(cs) };
    MEDIA_HEADER_LEN as u64 + len + chunks * MEDIA_TAG_LEN as u64
}
