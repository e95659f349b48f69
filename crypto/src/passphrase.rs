//! Keys from passphrases: the Argon2id derivation (shared by the store's passphrase unlock and
//! identity backups), the strength rule for new passphrases, and the passphrase-sealed file
//! format of identity backups.
//!
//! ```text
//! header (66 bytes, all of it the AEAD's associated data):
//!   magic "TERNBKUP" | version u8 = 1 | kdf u8 = 1 (Argon2id v1.3)
//!   | memory KiB u32 BE | passes u32 BE | lanes u32 BE | salt [16] | nonce [24]
//!   | ciphertext length u32 BE
//! body: XChaCha20-Poly1305(key = Argon2id(passphrase, salt, params), nonce, aad = header)
//! ```
//!
//! The KDF parameters travel in the header so a file made with other costs (older or newer
//! defaults) still opens; a reader refuses parameters outside the `BACKUP_*` bounds before
//! spending memory on them, and any change to the header fails the tag.

use std::fmt;

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use thiserror::Error;
use zeroize::{Zeroize, Zeroizing};

use crate::consts::{
    ARGON2_ITERATIONS, ARGON2_LANES, ARGON2_MEMORY_KIB, BACKUP_ARGON2_ITERATIONS,
    BACKUP_ARGON2_LANES, BACKUP_ARGON2_MEMORY_KIB, BACKUP_MAX_ARGON2_ITERATIONS,
    BACKUP_MAX_ARGON2_LANES, BACKUP_MAX_ARGON2_MEMORY_KIB, MAX_BACKUP_PLAINTEXT,
    MAX_PASSPHRASE_BYTES, MIN_PASSPHRASE_CHARS, MIN_PASSPHRASE_DISTINCT_CHARS,
};
use crate::random;
use crate::sealed::Secret32;

/// What a passphrase-sealed backup file starts with.
pub const BACKUP_MAGIC: &[u8; 8] = b"TERNBKUP";
/// The backup file format version this build writes and reads.
pub const BACKUP_VERSION: u8 = 1;
/// The KDF id for Argon2id (version 0x13) in a backup header.
pub const KDF_ARGON2ID: u8 = 1;
/// Salt length in a backup header.
pub const BACKUP_SALT_LEN: usize = 16;
/// Length of a backup header.
pub const BACKUP_HEADER_LEN: usize = 8 + 1 + 1 + 4 + 4 + 4 + BACKUP_SALT_LEN + 24 + 4;
/// Length of the AEAD tag after the ciphertext.
const TAG_LEN: usize = 16;
/// Largest backup file a reader accepts.
pub const MAX_BACKUP_FILE: usize = BACKUP_HEADER_LEN + MAX_BACKUP_PLAINTEXT + TAG_LEN;

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory cost in KiB.
    pub memory_kib: u32,
    /// Number of passes.
    pub iterations: u32,
    /// Degree of parallelism.
    pub lanes: u32,
}

impl Default for KdfParams {
    /// The store's costs: paid at every start of a passphrase-protected node.
    fn default() -> Self {
        KdfParams {
            memory_kib: ARGON2_MEMORY_KIB,
            iterations: ARGON2_ITERATIONS,
            lanes: ARGON2_LANES,
        }
    }
}

impl KdfParams {
    /// The costs of a new backup file: higher than the store's, since a backup is made rarely
    /// and may sit where anyone can copy it (docs/decisions.md).
    pub fn backup() -> Self {
        KdfParams {
            memory_kib: BACKUP_ARGON2_MEMORY_KIB,
            iterations: BACKUP_ARGON2_ITERATIONS,
            lanes: BACKUP_ARGON2_LANES,
        }
    }
}

/// Why a key could not be derived.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[error("Argon2id failed: {0}")]
pub struct KdfError(String);

/// Stretches `passphrase` over `salt` with Argon2id (v1.3) into 32 bytes.
pub fn derive_key(
    passphrase: &[u8],
    salt: &[u8],
    params: &KdfParams,
) -> Result<Secret32, KdfError> {
    let argon_params =
        argon2::Params::new(params.memory_kib, params.iterations, params.lanes, Some(32))
            .map_err(|e| KdfError(e.to_string()))?;
    let argon = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        argon_params,
    );
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, key.as_mut_slice())
        .map_err(|e| KdfError(e.to_string()))?;
    Ok(Secret32::new(*key))
}

/// A new passphrase that does not meet the rule of [`check_strength`].
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum WeakPassphrase {
    /// Fewer than [`MIN_PASSPHRASE_CHARS`] characters.
    #[error(
        "the passphrase has {0} characters; use at least {MIN_PASSPHRASE_CHARS} (several words are easiest)"
    )]
    TooShort(usize),
    /// Fewer than [`MIN_PASSPHRASE_DISTINCT_CHARS`] different characters.
    #[error(
        "the passphrase uses only {0} different characters; use at least {MIN_PASSPHRASE_DISTINCT_CHARS}"
    )]
    TooFewDistinct(usize),
    /// Longer than [`MAX_PASSPHRASE_BYTES`].
    #[error("the passphrase is longer than {MAX_PASSPHRASE_BYTES} bytes")]
    TooLong,
}

/// The rule for a new passphrase: at least [`MIN_PASSPHRASE_CHARS`] (12) characters, of which
/// at least [`MIN_PASSPHRASE_DISTINCT_CHARS`] (6) different, and at most
/// [`MAX_PASSPHRASE_BYTES`] bytes. It stops the passphrases that Argon2id cannot save
/// (`aaaaaaaaaaaa`, `password`, a PIN); it does not measure entropy.
pub fn check_strength(passphrase: &str) -> Result<(), WeakPassphrase> {
    if passphrase.len() > MAX_PASSPHRASE_BYTES {
        return Err(WeakPassphrase::TooLong);
    }
    let chars = passphrase.chars().count();
    if chars < MIN_PASSPHRASE_CHARS {
        return Err(WeakPassphrase::TooShort(chars));
    }
    let mut distinct: Vec<char> = passphrase.chars().collect();
    distinct.sort_unstable();
    distinct.dedup();
    let n = distinct.len();
    distinct.zeroize();
    if n < MIN_PASSPHRASE_DISTINCT_CHARS {
        return Err(WeakPassphrase::TooFewDistinct(n));
    }
    Ok(())
}

/// Why a backup file could not be opened or made.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackupError {
    /// The file does not start with [`BACKUP_MAGIC`].
    #[error("not a Tern backup file")]
    NotABackup,
    /// A format version this build does not read.
    #[error(
        "backup format version {0} is not supported (this build reads version {BACKUP_VERSION})"
    )]
    UnsupportedVersion(u8),
    /// A KDF this build does not know.
    #[error("backup key derivation {0} is not supported")]
    UnsupportedKdf(u8),
    /// KDF costs outside what a reader accepts (a damaged or hostile header).
    #[error(
        "backup key derivation costs out of range (memory {memory_kib} KiB, {iterations} passes, {lanes} lanes)"
    )]
    KdfOutOfRange {
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Passes.
        iterations: u32,
        /// Lanes.
        lanes: u32,
    },
    /// Shorter than its header says: the file was cut.
    #[error("the backup file is truncated ({have} bytes, {want} expected)")]
    Truncated {
        /// Bytes present.
        have: usize,
        /// Bytes the header announces.
        want: usize,
    },
    /// Longer than its header says.
    #[error("the backup file has {0} bytes after its end")]
    TrailingBytes(usize),
    /// Over [`MAX_BACKUP_FILE`] (or a plaintext over [`MAX_BACKUP_PLAINTEXT`]).
    #[error("the backup is {len} bytes, over the {max}-byte limit")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The tag does not verify: a wrong passphrase, or a changed byte anywhere in the file.
    #[error("wrong passphrase, or the backup file was altered")]
    WrongPassphraseOrDamaged,
    /// Argon2id failed.
    #[error(transparent)]
    Kdf(#[from] KdfError),
    /// No randomness.
    #[error("the operating system's random number generator failed")]
    Random,
}

struct Header {
    params: KdfParams,
    salt: [u8; BACKUP_SALT_LEN],
    nonce: [u8; 24],
    len: u32,
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Header")
            .field("params", &self.params)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl Header {
    fn encode(&self) -> [u8; BACKUP_HEADER_LEN] {
        let mut out = [0u8; BACKUP_HEADER_LEN];
        let mut w = 0;
        let mut put = |bytes: &[u8]| {
            out[w..w + bytes.len()].copy_from_slice(bytes);
            w += bytes.len();
        };
        put(BACKUP_MAGIC);
        put(&[BACKUP_VERSION, KDF_ARGON2ID]);
        put(&self.params.memory_kib.to_be_bytes());
        put(&self.params.iterations.to_be_bytes());
        put(&self.params.lanes.to_be_bytes());
        put(&self.salt);
        put(&self.nonce);
        put(&self.len.to_be_bytes());
        out
    }

    /// Checks the header in the order: size cap, magic, version, KDF, costs, length.
    fn decode(file: &[u8]) -> Result<Header, BackupError> {
        if file.len() > MAX_BACKUP_FILE {
            return Err(BackupError::TooLarge {
                len: file.len(),
                max: MAX_BACKUP_FILE,
            });
        }
        if file.len() < BACKUP_MAGIC.len() || &file[..BACKUP_MAGIC.len()] != BACKUP_MAGIC {
            return Err(BackupError::NotABackup);
        }
        if file.len() < BACKUP_HEADER_LEN {
            return Err(BackupError::Truncated {
                have: file.len(),
                want: BACKUP_HEADER_LEN,
            });
        }
        let h = &file[..BACKUP_HEADER_LEN];
        if h[8] != BACKUP_VERSION {
            return Err(BackupError::UnsupportedVersion(h[8]));
        }
        if h[9] != KDF_ARGON2ID {
            return Err(BackupError::UnsupportedKdf(h[9]));
        }
        let u32_at = |i: usize| u32::from_be_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
        let params = KdfParams {
            memory_kib: u32_at(10),
            iterations: u32_at(14),
            lanes: u32_at(18),
        };
        if !(1..=BACKUP_MAX_ARGON2_LANES).contains(&params.lanes)
            || !(1..=BACKUP_MAX_ARGON2_ITERATIONS).contains(&params.iterations)
            || params.memory_kib < 8 * params.lanes
            || params.memory_kib > BACKUP_MAX_ARGON2_MEMORY_KIB
        {
            return Err(BackupError::KdfOutOfRange {
                memory_kib: params.memory_kib,
                iterations: params.iterations,
                lanes: params.lanes,
            });
        }
        let mut salt = [0u8; BACKUP_SALT_LEN];
        salt.copy_from_slice(&h[22..22 + BACKUP_SALT_LEN]);
        let mut nonce = [0u8; 24];
        nonce.copy_from_slice(&h[38..62]);
        let len = u32_at(62);
        let want = BACKUP_HEADER_LEN.saturating_add(len as usize);
        if want > MAX_BACKUP_FILE {
            return Err(BackupError::TooLarge {
                len: want,
                max: MAX_BACKUP_FILE,
            });
        }
        if file.len() < want {
            return Err(BackupError::Truncated {
                have: file.len(),
                want,
            });
        }
        if file.len() > want {
            return Err(BackupError::TrailingBytes(file.len() - want));
        }
        Ok(Header {
            params,
            salt,
            nonce,
            len,
        })
    }
}

/// Seals `plaintext` under `passphrase` into a backup file (header and ciphertext). The
/// caller checks the passphrase's strength first ([`check_strength`]).
pub fn seal_backup(
    passphrase: &[u8],
    plaintext: &[u8],
    params: &KdfParams,
) -> Result<Vec<u8>, BackupError> {
    if plaintext.len() > MAX_BACKUP_PLAINTEXT {
        return Err(BackupError::TooLarge {
            len: plaintext.len(),
            max: MAX_BACKUP_PLAINTEXT,
        });
    }
    let len = u32::try_from(plaintext.len() + TAG_LEN).map_err(|_| BackupError::TooLarge {
        len: plaintext.len(),
        max: MAX_BACKUP_PLAINTEXT,
    })?;
    let header = Header {
        params: *params,
        salt: random::array().map_err(|_| BackupError::Random)?,
        nonce: random::array().map_err(|_| BackupError::Random)?,
        len,
    };
    let key = derive_key(passphrase, &header.salt, params)?;
    let aad = header.encode();
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    let ciphertext = cipher
        .encrypt(
            &XNonce::from(header.nonce),
            Payload {
                msg: plaintext,
                aad: &aad,
            },
        )
        .map_err(|_| BackupError::WrongPassphraseOrDamaged)?;
    let mut out = Vec::with_capacity(aad.len() + ciphertext.len());
    out.extend_from_slice(&aad);
    out.extend_from_slice(&ciphertext);
    Ok(out)
}

/// Checks a backup file's header and length without deriving any key: what
/// [`open_backup`] checks before the (expensive) Argon2id derivation.
pub fn check_backup_header(file: &[u8]) -> Result<(), BackupError> {
    Header::decode(file).map(|_| ())
}

/// Opens a backup file made by [`seal_backup`]. The plaintext is wiped on drop.
pub fn open_backup(passphrase: &[u8], file: &[u8]) -> Result<Zeroizing<Vec<u8>>, BackupError> {
    let header = Header::decode(file)?;
    let key = derive_key(passphrase, &header.salt, &header.params)?;
    let cipher = XChaCha20Poly1305::new(key.expose().into());
    cipher
        .decrypt(
            &XNonce::from(header.nonce),
            Payload {
                msg: &file[BACKUP_HEADER_LEN..],
                aad: &file[..BACKUP_HEADER_LEN],
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| BackupError::WrongPassphraseOrDamaged)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_check_alone_accepts_a_sealed_file_and_refuses_its_cuts() {
        let file = seal_backup(b"correct horse battery", b"hello", &CHEAP).unwrap();
        check_backup_header(&file).unwrap();
        assert!(check_backup_header(&file[..file.len() - 1]).is_err());
        assert!(check_backup_header(&file[..10]).is_err());
    }

    /// Cheap costs so every-byte tests stay quick; the format is the same.
    const CHEAP: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };

    #[test]
    fn round_trip_and_wrong_passphrase() {
        let file = seal_backup(b"correct horse battery", b"the identity", &CHEAP).unwrap();
        assert_eq!(file.len(), BACKUP_HEADER_LEN + 12 + TAG_LEN);
        assert_eq!(&file[..8], BACKUP_MAGIC);
        assert_eq!(
            open_backup(b"correct horse battery", &file)
                .unwrap()
                .as_slice(),
            b"the identity"
        );
        assert_eq!(
            open_backup(b"correct horse batterY", &file),
            Err(BackupError::WrongPassphraseOrDamaged)
        );
        // A fresh salt and nonce every time.
        let again = seal_backup(b"correct horse battery", b"the identity", &CHEAP).unwrap();
        assert_ne!(file, again);
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let file = seal_backup(b"correct horse battery", b"some secret payload", &CHEAP).unwrap();
        for i in 0..file.len() {
            for flip in [0x01u8, 0x80] {
                let mut bad = file.clone();
                bad[i] ^= flip;
                let r = open_backup(b"correct horse battery", &bad);
                assert!(r.is_err(), "byte {i} flipped by {flip:#x} was accepted");
            }
        }
        // The header's fields give their own errors.
        let mut bad = file.clone();
        bad[0] ^= 1;
        assert_eq!(
            open_backup(b"correct horse battery", &bad),
            Err(BackupError::NotABackup)
        );
        let mut bad = file.clone();
        bad[8] = 2;
        assert_eq!(
            open_backup(b"correct horse battery", &bad),
            Err(BackupError::UnsupportedVersion(2))
        );
        let mut bad = file.clone();
        bad[9] = 7;
        assert_eq!(
            open_backup(b"correct horse battery", &bad),
            Err(BackupError::UnsupportedKdf(7))
        );
        let mut bad = file.clone();
        bad[10] = 0xff;
        assert!(matches!(
            open_backup(b"correct horse battery", &bad),
            Err(BackupError::KdfOutOfRange { .. })
        ));
    }

    #[test]
    fn truncation_trailing_bytes_and_size_caps() {
        let file = seal_backup(b"correct horse battery", b"some secret payload", &CHEAP).unwrap();
        for cut in 0..file.len() {
            let r = open_backup(b"correct horse battery", &file[..cut]);
            if cut < BACKUP_MAGIC.len() {
                assert_eq!(r, Err(BackupError::NotABackup), "cut at {cut}");
            } else {
                assert!(
                    matches!(r, Err(BackupError::Truncated { .. })),
                    "cut at {cut}: {r:?}"
                );
            }
        }
        let mut longer = file.clone();
        longer.push(0);
        assert_eq!(
            open_backup(b"correct horse battery", &longer),
            Err(BackupError::TrailingBytes(1))
        );
        let huge = vec![0u8; MAX_BACKUP_FILE + 1];
        assert!(matches!(
            open_backup(b"x", &huge),
            Err(BackupError::TooLarge { .. })
        ));
        // A header announcing more than the cap is refused before anything is derived.
        let mut announced = file.clone();
        announced[62..66].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            open_backup(b"correct horse battery", &announced),
            Err(BackupError::TooLarge { .. })
        ));
        let big = vec![0u8; MAX_BACKUP_PLAINTEXT + 1];
        assert!(matches!(
            seal_backup(b"correct horse battery", &big, &CHEAP),
            Err(BackupError::TooLarge { .. })
        ));
    }

    #[test]
    fn strength_rule() {
        assert_eq!(check_strength("short"), Err(WeakPassphrase::TooShort(5)));
        assert_eq!(
            check_strength("aaaaaaaaaaaaaaaa"),
            Err(WeakPassphrase::TooFewDistinct(1))
        );
        assert_eq!(
            check_strength("abababababab"),
            Err(WeakPassphrase::TooFewDistinct(2))
        );
        assert!(check_strength("correct horse battery").is_ok());
        // Characters, not bytes: 12 accented letters are 24 bytes but still 12 characters.
        assert!(check_strength("éàüöçñßøåæœë").is_ok());
        assert_eq!(
            check_strength("éàüöçñßøåæœ"),
            Err(WeakPassphrase::TooShort(11))
        );
        assert_eq!(
            check_strength(&"ab".repeat(MAX_PASSPHRASE_BYTES)),
            Err(WeakPassphrase::TooLong)
        );
    }

    #[test]
    fn argon2id_is_deterministic_per_salt() {
        let a = derive_key(b"pass", &[1; 16], &CHEAP).unwrap();
        let b = derive_key(b"pass", &[1; 16], &CHEAP).unwrap();
        let c = derive_key(b"pass", &[2; 16], &CHEAP).unwrap();
        assert_eq!(a.expose(), b.expose());
        assert_ne!(a.expose(), c.expose());
    }
}
