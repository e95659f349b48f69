//! Changing the key of an open store (`PRAGMA rekey`).
//!
//! SQLCipher rewrites every page under the new key in one write transaction: in WAL mode the
//! new pages go to the WAL and become visible at its commit, so a crash leaves the file
//! readable under exactly one of the two keys, never a mix (tested below with a store dropped
//! between the rekey and everything after it). The salt in the file's first 16 bytes stays,
//! so a passphrase key is derived over the same salt before and after.

use crate::error::{Fault, KeyError};
use crate::key::{StorageKey, Unlock};
use crate::store::Store;

/// Why a store's key could not be changed. The store is still open under its old key
/// unless the error says otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RekeyError {
    /// A batch is open: rekey between batches.
    #[error("cannot change the storage key inside a batch")]
    InBatch,
    /// The new key could not be made (Argon2id failed).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The salt could not be read from the file.
    #[error("reading the salt of {path}")]
    Io {
        /// The database file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// SQLCipher refused or failed the rekey.
    #[error("{op}: {source}")]
    Storage {
        /// The step.
        op: &'static str,
        /// What failed.
        #[source]
        source: Fault,
    },
}

impl Store {
    /// Re-encrypts the whole file under `to` (a raw key or a passphrase, stretched over the
    /// file's own salt). On success the open connection goes on under the new key and the file
    /// opens only with it; the caller keeps whatever it needs to open it again (a new keyfile,
    /// the passphrase) before it calls this, so a crash never leaves a file no key opens.
    pub fn rekey(&mut self, to: Unlock<'_>) -> Result<(), RekeyError> {
        if self.in_batch() {
            return Err(RekeyError::InBatch);
        }
        let storage = |op| {
            move |e: rusqlite::Error| RekeyError::Storage {
                op,
                source: e.into(),
            }
        };
        // The WAL is emptied first so the rekey's own frames are the only ones in it.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(storage("checkpoint before rekey"))?;
        let salt = self.salt()?;
        let literal = match to {
            Unlock::Key(key) => key.sqlcipher_literal(&salt),
            Unlock::Passphrase { passphrase, params } => {
                StorageKey::derive(passphrase, &salt, &params)?.sqlcipher_literal(&salt)
            }
            #[cfg(feature = "insecure-plaintext")]
            Unlock::InsecurePlaintext => {
                return Err(RekeyError::Storage {
                    op: "rekey",
                    source: rusqlite::Error::InvalidQuery.into(),
                });
            }
        };
        self.conn
            .pragma_update(None, "rekey", literal.as_str())
            .map_err(storage("rekey"))?;
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(storage("checkpoint after rekey"))?;
        Ok(())
    }

    fn salt(&self) -> Result<[u8; crate::consts::SALT_LEN], RekeyError> {
        let io = |source| RekeyError::Io {
            path: self.path().to_owned(),
            source,
        };
        let mut salt = [0u8; crate::consts::SALT_LEN];
        let mut file = std::fs::File::open(self.path()).map_err(io)?;
        std::io::Read::read_exact(&mut file, &mut salt).map_err(io)?;
        Ok(salt)
    }
}

#[cfg(test)]
mod tests {
    use crate::{KdfParams, OpenError, StorageKey, Store, Unlock};

    const CHEAP: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };

    fn key(b: u8) -> StorageKey {
        StorageKey::from_bytes(&mut [b; 32])
    }

    fn fill(store: &mut Store, version: u64) {
        store
            .transaction(|tx| {
                tx.save_own_device_list(version, b"a signed device list")?;
                Ok::<_, crate::WriteError>(())
            })
            .unwrap();
    }

    fn list(store: &Store) -> Option<(u64, Vec<u8>)> {
        store.own_device_list().unwrap()
    }

    #[test]
    fn rekey_from_keyfile_key_to_passphrase_and_back_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut store = Store::open(&path, Unlock::Key(&key(1))).unwrap();
        fill(&mut store, 7);
        let before = list(&store);
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&std::fs::read(&path).unwrap()[..16]);
        store
            .rekey(Unlock::Passphrase {
                passphrase: b"new passphrase",
                params: CHEAP,
            })
            .unwrap();
        // The open connection goes on.
        assert_eq!(list(&store), before);
        drop(store);
        assert_eq!(
            &std::fs::read(&path).unwrap()[..16],
            &salt,
            "the salt stays"
        );
        assert!(matches!(
            Store::open(&path, Unlock::Key(&key(1))),
            Err(OpenError::WrongKey { .. })
        ));
        let mut store = Store::open(
            &path,
            Unlock::Passphrase {
                passphrase: b"new passphrase",
                params: CHEAP,
            },
        )
        .unwrap();
        assert_eq!(list(&store), before);
        store.rekey(Unlock::Key(&key(2))).unwrap();
        drop(store);
        assert!(matches!(
            Store::open(
                &path,
                Unlock::Passphrase {
                    passphrase: b"new passphrase",
                    params: CHEAP,
                }
            ),
            Err(OpenError::WrongKey { .. })
        ));
        let store = Store::open(&path, Unlock::Key(&key(2))).unwrap();
        assert_eq!(list(&store), before);
    }

    #[test]
    fn a_store_dropped_right_after_rekey_opens_only_under_the_new_key() {
        // The process "dies" after the rekey: no checkpoint of ours runs after it, the
        // connection is dropped, and the file must open under the new key with all data.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let mut store = Store::open(&path, Unlock::Key(&key(1))).unwrap();
        fill(&mut store, 7);
        store.rekey(Unlock::Key(&key(3))).unwrap();
        fill(&mut store, 8);
        std::mem::forget(store);
        assert!(matches!(
            Store::open(&path, Unlock::Key(&key(1))),
            Err(OpenError::WrongKey { .. })
        ));
        let store = Store::open(&path, Unlock::Key(&key(3))).unwrap();
        assert_eq!(list(&store).map(|l| l.0), Some(8));
    }
}
