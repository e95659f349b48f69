//! The storage key: where it comes from and how it is kept.
//!
//! Two sources (see `docs/store.md` for the trade-off):
//! - a passphrase, stretched with Argon2id over the file's own salt, for a person at a desktop;
//! - a random key in a 0600 keyfile beside the database, for an unattended node.

use std::fmt;
use std::io::{Read, Write};
use std::path::Path;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::consts::{KEY_LEN, KEYFILE_LEN, KEYFILE_MAGIC, KEYFILE_VERSION, SALT_LEN};
use crate::error::KeyError;

/// A 256-bit database key. Zeroized on drop; `Debug` never shows it.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct StorageKey(Box<[u8; KEY_LEN]>);

impl fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageKey(..)")
    }
}

impl StorageKey {
    /// A fresh random key from the operating system.
    pub fn generate() -> Result<Self, KeyError> {
        let mut key = Box::new([0u8; KEY_LEN]);
        getrandom::fill(key.as_mut_slice()).map_err(KeyError::Random)?;
        Ok(StorageKey(key))
    }

    /// Takes a key from raw bytes, wiping the caller's copy.
    pub fn from_bytes(bytes: &mut [u8; KEY_LEN]) -> Self {
        let key = Box::new(*bytes);
        bytes.zeroize();
        StorageKey(key)
    }

    /// Stretches a passphrase with Argon2id over `salt` (tern-crypto's derivation, the one
    /// identity backups use too).
    pub fn derive(
        passphrase: &[u8],
        salt: &[u8; SALT_LEN],
        params: &KdfParams,
    ) -> Result<Self, KeyError> {
        let derived =
            tern_crypto::passphrase::derive_key(passphrase, salt, params).map_err(|e| {
                KeyError::Kdf {
                    reason: e.to_string(),
                }
            })?;
        Ok(StorageKey(Box::new(*derived.expose())))
    }

    /// Reads the key from `path`, or creates a new random one there (mode 0600) if there is
    /// no file. An existing keyfile is never overwritten: losing it loses the database.
    pub fn load_or_create_keyfile(path: &Path) -> Result<Self, KeyError> {
        match Self::read_keyfile(path) {
            Err(KeyError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                key.write_new_keyfile(path)?;
                Ok(key)
            }
            other => other,
        }
    }

    /// Reads a keyfile, refusing one that others can read.
    pub fn read_keyfile(path: &Path) -> Result<Self, KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(io)?;
        check_owner_only(path, &file)?;
        let mut buf = Zeroizing::new(Vec::with_capacity(KEYFILE_LEN + 1));
        // One byte more than a keyfile holds, so an overlong file is noticed without reading it all.
        Read::by_ref(&mut file)
            .take(KEYFILE_LEN as u64 + 1)
            .read_to_end(&mut buf)
            .map_err(io)?;
        let malformed = |reason| KeyError::Malformed {
            path: path.to_owned(),
            reason,
        };
        if buf.len() != KEYFILE_LEN {
            return Err(malformed("wrong length"));
        }
        if &buf[..KEYFILE_MAGIC.len()] != KEYFILE_MAGIC {
            return Err(malformed("wrong magic bytes"));
        }
        if buf[KEYFILE_MAGIC.len()] != KEYFILE_VERSION {
            return Err(malformed("unknown keyfile version"));
        }
        let mut key = Box::new([0u8; KEY_LEN]);
        key.copy_from_slice(&buf[KEYFILE_MAGIC.len() + 1..]);
        Ok(StorageKey(key))
    }

    /// Writes this key to a new keyfile (mode 0600); fails if the file exists.
    pub fn write_new_keyfile(&self, path: &Path) -> Result<(), KeyError> {
        let io = |source| KeyError::Io {
            path: path.to_owned(),
            source,
        };
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(io)?;
        let mut buf = Zeroizing::new(Vec::with_capacity(KEYFILE_LEN));
        buf.extend_from_slice(KEYFILE_MAGIC);
        buf.push(KEYFILE_VERSION);
        buf.extend_from_slice(self.0.as_slice());
        file.write_all(&buf).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(())
    }

    /// The SQLCipher key literal `x'<key><salt>'`, zeroized when dropped.
    pub(crate) fn sqlcipher_literal(&self, salt: &[u8; SALT_LEN]) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(3 + 2 * (KEY_LEN + SALT_LEN)));
        s.push_str("x'");
        tern_crypto::hex::push(&mut s, self.0.as_slice());
        tern_crypto::hex::push(&mut s, salt);
        s.push('\'');
        s
    }
}

#[cfg(unix)]
fn check_owner_only(path: &Path, file: &std::fs::File) -> Result<(), KeyError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = file.metadata().map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_owner_only(_path: &Path, _file: &std::fs::File) -> Result<(), KeyError> {
    Ok(())
}

/// Argon2id cost parameters for a passphrase-derived key (tern-crypto's). The defaults are
/// not stored in the file, so a database opened with other parameters than it was created
/// with reports a wrong key.
pub use tern_crypto::passphrase::KdfParams;

/// How to unlock a store.
#[derive(Debug)]
pub enum Unlock<'a> {
    /// A raw key, for example from [`StorageKey::load_or_create_keyfile`].
    Key(&'a StorageKey),
    /// A passphrase, stretched with Argon2id over the salt in the file's first 16 bytes (a new
    /// file gets a random salt).
    Passphrase {
        /// The passphrase bytes (UTF-8 as typed).
        passphrase: &'a [u8],
        /// Argon2id costs; use `KdfParams::default()` outside tests.
        params: KdfParams,
    },
    /// No encryption at all. Only for the benchmark's baseline.
    #[cfg(feature = "insecure-plaintext")]
    InsecurePlaintext,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_key() {
        let mut raw = [7u8; KEY_LEN];
        let key = StorageKey::from_bytes(&mut raw);
        assert_eq!(raw, [0u8; KEY_LEN], "caller's copy is wiped");
        assert_eq!(format!("{key:?}"), "StorageKey(..)");
    }

    #[test]
    fn argon2id_is_deterministic_per_salt() {
        let params = KdfParams {
            memory_kib: 64,
            iterations: 1,
            lanes: 1,
        };
        let a = StorageKey::derive(b"pass", &[1; SALT_LEN], &params).unwrap();
        let b = StorageKey::derive(b"pass", &[1; SALT_LEN], &params).unwrap();
        let c = StorageKey::derive(b"pass", &[2; SALT_LEN], &params).unwrap();
        assert_eq!(a.0, b.0);
        assert_ne!(a.0, c.0);
    }

    #[test]
    fn keyfile_round_trip_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.key");
        let a = StorageKey::load_or_create_keyfile(&path).unwrap();
        let b = StorageKey::load_or_create_keyfile(&path).unwrap();
        assert_eq!(a.0, b.0, "second call reads the same key");
        assert!(a.write_new_keyfile(&path).is_err(), "never overwrites");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                StorageKey::read_keyfile(&path),
                Err(KeyError::Permissions { mode: 0o644, .. })
            ));
        }
        let bad = dir.path().join("bad.key");
        std::fs::write(&bad, b"hello").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert!(matches!(
            StorageKey::read_keyfile(&bad),
            Err(KeyError::Malformed { .. })
        ));
    }
}
