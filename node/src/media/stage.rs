//! The node's encrypted files: encrypting a file once into the staging area, checking a
//! downloaded blob, and decrypting one on request. Every function here blocks (file I/O and
//! the cipher over up to 100 MiB): callers run them in `tokio::task::spawn_blocking`.
//!
//! Files live under `<home>/media/`: `<blob id>` a complete ciphertext (sent or received),
//! `<blob id>.part` a download in progress, `<message id>.staging` an upload being encrypted.
//! A decrypted copy is written through a temporary file in the target directory and renamed
//! into place only once its hash matched, so no partial or unverified file ever carries the
//! name the user asked for.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tern_crypto::media::{MediaError, MediaKey};

/// Why a file could not be staged, checked or decrypted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StageError {
    /// Reading or writing a file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The file is over the limit.
    #[error("the file is {size} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The ciphertext does not open with the key (altered, cut, or the wrong key).
    #[error("the file does not decrypt: {0}")]
    Cipher(String),
    /// It opened, but the plaintext is not the one the sender described.
    #[error("the decrypted file does not match the sender's hash or size")]
    HashMismatch,
    /// The target exists already.
    #[error("{0} exists; choose another path")]
    Exists(PathBuf),
}

impl StageError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> StageError {
        let what = what.into();
        move |source| StageError::Io { what, source }
    }

    /// A short code for events and the API (`io`, `too_large`, `tampered`, `hash`, `exists`).
    pub fn code(&self) -> &'static str {
        match self {
            StageError::Io { .. } => "io",
            StageError::TooLarge { .. } => "too_large",
            StageError::Cipher(_) => "tampered",
            StageError::HashMismatch => "hash",
            StageError::Exists(_) => "exists",
        }
    }
}

impl From<MediaError> for StageError {
    fn from(e: MediaError) -> Self {
        match e {
            MediaError::Io(source) => StageError::Io {
                what: "media stream".into(),
                source,
            },
            other => StageError::Cipher(other.to_string()),
        }
    }
}

/// What encrypting a file produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Staged {
    /// SHA-256 of the plaintext.
    pub sha256: [u8; 32],
    /// Plaintext bytes.
    pub size: u64,
    /// Ciphertext bytes.
    pub blob_size: u64,
}

/// Counts and hashes what passes through.
struct Hashing<T> {
    inner: T,
    hash: Sha256,
    bytes: u64,
    max: u64,
}

impl<T> Hashing<T> {
    fn new(inner: T, max: u64) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
            bytes: 0,
            max,
        }
    }

    fn finish(self) -> ([u8; 32], u64) {
        (self.hash.finalize().into(), self.bytes)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        if self.bytes > self.max {
            return Err(io::Error::new(
                io::ErrorKind::FileTooLarge,
                "over the limit",
            ));
        }
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Creates a file only this user can read (0600 on Unix), failing if it exists.
pub(crate) fn create_private(path: &Path) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    o.open(path)
}

/// A temporary name beside `path`.
fn temp_beside(path: &Path) -> PathBuf {
    let mut n = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut r = [0u8; 6];
    let _ = getrandom::fill(&mut r);
    n.push(format!(".{}.tmp", super::hex(&r)));
    path.with_file_name(n)
}

/// Writes through `write` into a temporary file beside `to`, syncs it and renames it to `to`
/// (replacing it when `replace`); on any error the temporary file is removed.
fn write_then_rename(
    to: &Path,
    replace: bool,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<(), StageError>,
) -> Result<(), StageError> {
    if !replace && to.exists() {
        return Err(StageError::Exists(to.to_owned()));
    }
    let tmp = temp_beside(to);
    let out =
        create_private(&tmp).map_err(StageError::io(format!("creating {}", tmp.display())))?;
    let mut w = BufWriter::with_capacity(256 * 1024, out);
    let done = write(&mut w).and_then(|()| {
        let f = w.into_inner().map_err(|e| StageError::Io {
            what: "writing".into(),
            source: e.into_error(),
        })?;
        f.sync_all().map_err(StageError::io("syncing"))
    });
    if let Err(e) = done {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if !replace && to.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(StageError::Exists(to.to_owned()));
    }
    std::fs::rename(&tmp, to).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        StageError::Io {
            what: format!("renaming into {}", to.display()),
            source: e,
        }
    })?;
    if let Some(dir) = to.parent() {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}

/// Encrypts `input` with `key` into `out` (replaced if present), hashing the plaintext on
/// the way. Refuses input over `max` bytes.
pub fn encrypt_file(
    key: &MediaKey,
    input: impl Read,
    out: &Path,
    max: u64,
) -> Result<Staged, StageError> {
    let mut reader = Hashing::new(BufReader::with_capacity(256 * 1024, input), max);
    let mut summary = None;
    write_then_rename(out, true, |w| {
        match tern_crypto::media::encrypt_stream(key, &mut reader, w) {
            Ok(s) => {
                summary = Some(s);
                Ok(())
            }
            Err(MediaError::Io(e)) if e.kind() == io::ErrorKind::FileTooLarge => {
                Err(StageError::TooLarge {
                    size: reader.bytes,
                    max,
                })
            }
            Err(e) => Err(e.into()),
        }
    })?;
    let summary = summary.ok_or(StageError::Cipher("nothing was encrypted".into()))?;
    let (sha256, size) = reader.finish();
    Ok(Staged {
        sha256,
        size,
        blob_size: summary.ciphertext_len,
    })
    .and_then(|s| {
        if s.size == summary.plaintext_len {
            Ok(s)
        } else {
            Err(StageError::Cipher(
                "plaintext length changed while reading".into(),
            ))
        }
    })
}

/// Decrypts `ciphertext` into `out`, checking the plaintext's hash and size at the end (the
/// output so far must then be discarded on an error).
pub fn decrypt_into(
    key: &MediaKey,
    ciphertext: &Path,
    out: impl Write,
    sha256: &[u8; 32],
    size: u64,
) -> Result<(), StageError> {
    let f = File::open(ciphertext)
        .map_err(StageError::io(format!("opening {}", ciphertext.display())))?;
    let mut w = Hashing::new(out, u64::MAX);
    tern_crypto::media::decrypt_stream(key, BufReader::with_capacity(256 * 1024, f), &mut w)?;
    w.flush().map_err(StageError::io("writing"))?;
    let (got, n) = w.finish();
    let same: bool = subtle::ConstantTimeEq::ct_eq(&got[..], &sha256[..]).into();
    if !same || n != size {
        return Err(StageError::HashMismatch);
    }
    Ok(())
}

/// Checks that a complete ciphertext opens with `key` to the described plaintext.
pub fn verify(
    key: &MediaKey,
    ciphertext: &Path,
    sha256: &[u8; 32],
    size: u64,
) -> Result<(), StageError> {
    decrypt_into(key, ciphertext, io::sink(), sha256, size)
}

/// Decrypts a complete ciphertext to `to` (which must not exist), readable by this user only;
/// `to` appears only once the whole plaintext matched.
pub fn decrypt_to(
    key: &MediaKey,
    ciphertext: &Path,
    to: &Path,
    sha256: &[u8; 32],
    size: u64,
) -> Result<(), StageError> {
    write_then_rename(to, false, |w| {
        decrypt_into(key, ciphertext, w, sha256, size)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> MediaKey {
        MediaKey::from_bytes([5; 32])
    }

    #[test]
    fn staged_files_decrypt_to_the_same_bytes_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let ct = dir.path().join("blob");
        let s = encrypt_file(&key(), &data[..], &ct, 1 << 20).unwrap();
        assert_eq!(s.size, data.len() as u64);
        assert_eq!(s.sha256, <[u8; 32]>::from(Sha256::digest(&data)));
        verify(&key(), &ct, &s.sha256, s.size).unwrap();
        let out = dir.path().join("out.bin");
        decrypt_to(&key(), &ct, &out, &s.sha256, s.size).unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), data);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&out).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // An existing target is never overwritten.
        assert!(matches!(
            decrypt_to(&key(), &ct, &out, &s.sha256, s.size),
            Err(StageError::Exists(_))
        ));
        // A wrong hash (a key that opens the blob but a different file) leaves no file.
        let other = dir.path().join("other.bin");
        assert!(matches!(
            decrypt_to(&key(), &ct, &other, &[0; 32], s.size),
            Err(StageError::HashMismatch)
        ));
        assert!(!other.exists());
        // A flipped byte, or the wrong key: refused, no file.
        let mut bytes = std::fs::read(&ct).unwrap();
        bytes[70_000] ^= 1;
        std::fs::write(&ct, &bytes).unwrap();
        assert!(matches!(
            decrypt_to(&key(), &ct, &other, &s.sha256, s.size),
            Err(StageError::Cipher(_))
        ));
        assert!(!other.exists());
        assert!(
            std::fs::read_dir(dir.path())
                .unwrap()
                .all(|e| { !e.unwrap().file_name().to_string_lossy().ends_with(".tmp") })
        );
    }

    #[test]
    fn input_over_the_limit_is_refused_without_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let ct = dir.path().join("blob");
        let data = vec![1u8; 1001];
        assert!(matches!(
            encrypt_file(&key(), &data[..], &ct, 1000),
            Err(StageError::TooLarge { .. })
        ));
        assert!(!ct.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
