//! The relay's libp2p identity, created once and kept in the data directory.

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use libp2p::identity::Keypair;

/// The identity file name inside the data directory.
pub const IDENTITY_FILE: &str = "identity.key";
/// Record version of the identity file: one byte, then the key in libp2p's protobuf
/// encoding.
const IDENTITY_VERSION: u8 = 1;
/// Largest identity file read (an Ed25519 protobuf key is under 100 bytes).
const MAX_IDENTITY_BYTES: u64 = 4096;

/// Why the identity could not be loaded or created.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing the file failed.
    #[error("cannot {action} identity file {path}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file exists but does not hold a key this build can read.
    #[error("identity file {path} is not a valid key: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Loads the identity from `dir`, creating and saving a fresh Ed25519 key the first time.
pub fn load_or_create(dir: &Path) -> Result<Keypair, IdentityError> {
    let path = dir.join(IDENTITY_FILE);
    let io = |action, source| IdentityError::Io {
        action,
        path: path.clone(),
        source,
    };
    match std::fs::metadata(&path) {
        Ok(meta) => {
            if meta.len() > MAX_IDENTITY_BYTES {
                return Err(IdentityError::Invalid {
                    path,
                    reason: "file too large".into(),
                });
            }
            let bytes = std::fs::read(&path).map_err(|e| io("read", e))?;
            let invalid = |reason: String| IdentityError::Invalid {
                path: path.clone(),
                reason,
            };
            match bytes.split_first() {
                Some((&IDENTITY_VERSION, key)) => {
                    Keypair::from_protobuf_encoding(key).map_err(|e| invalid(e.to_string()))
                }
                Some((v, _)) => Err(invalid(format!("unknown record version {v}"))),
                None => Err(invalid("empty file".into())),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let encoded = key
                .to_protobuf_encoding()
                .map_err(|e| IdentityError::Invalid {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            let tmp = dir.join(format!("{IDENTITY_FILE}.tmp"));
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut f = opts.open(&tmp).map_err(|e| io("create", e))?;
            f.write_all(&[IDENTITY_VERSION])
                .map_err(|e| io("write", e))?;
            f.write_all(&encoded).map_err(|e| io("write", e))?;
            f.sync_all().map_err(|e| io("sync", e))?;
            std::fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
            Ok(key)
        }
        Err(e) => Err(io("stat", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        std::fs::write(dir.path().join(IDENTITY_FILE), [9, 1, 2]).unwrap();
        assert!(matches!(
            load_or_create(dir.path()),
            Err(IdentityError::Invalid { .. })
        ));
    }
}
