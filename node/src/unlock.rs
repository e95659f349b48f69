//! How the home's store is unlocked — a random keyfile or a passphrase — and changing it
//! (`tern id passphrase`) so that a crash at any point leaves a store that opens.
//!
//! ```text
//! HOME/store.key       the store's random key (tern-store keyfile): keyfile mode
//! HOME/store.kdf       "TERNKDF" | version 1 | Argon2id memory KiB, passes, lanes (u32 BE):
//!                      passphrase mode (the key is Argon2id(passphrase, the file's salt))
//! HOME/store.key.new   a change to a new keyfile in progress
//! HOME/store.kdf.new   a change to a (new) passphrase in progress
//! ```
//!
//! A change runs in three steps: [`prepare`] writes the new key material to its `.new` file
//! (synced, directory synced); `Store::rekey` re-encrypts every page in one transaction;
//! [`commit`] renames the `.new` file over its final name and removes the other mode's file.
//! Opening ([`open_store`]) tries every file present, keyfiles first (no passphrase needed),
//! and the first that opens the store **proves** the store's key: the switch to it is finished
//! and every other file removed. So:
//!
//! | crash | files | opens with | then |
//! | --- | --- | --- | --- |
//! | before or during `prepare`, or during the rekey | old + partial/whole `.new` | old | `.new` removed |
//! | after the rekey, before `commit` | old + `.new` | `.new` (a passphrase `.new` asks for the new passphrase) | renamed, old removed |
//! | in `commit`, between rename and removal | both modes' files | the new one | the old one removed |
//!
//! SQLCipher's rekey is one write transaction (the WAL holds the new pages until it commits),
//! so the store itself is always entirely under one of the two keys.

use std::path::{Path, PathBuf};

use tern_crypto::passphrase::{self, KdfParams};
use tern_store::{OpenError, StorageKey, Store, Unlock};
use zeroize::Zeroizing;

use crate::home::{Home, HomeError, sync_dir};

/// What a KDF parameter file starts with.
const KDF_MAGIC: &[u8; 7] = b"TERNKDF";
/// Its version.
const KDF_VERSION: u8 = 1;
/// Its length.
const KDF_FILE_LEN: usize = KDF_MAGIC.len() + 1 + 12;

/// The passphrase mode's parameter file.
pub fn kdf_path(home: &Home) -> PathBuf {
    home.dir().join("store.kdf")
}

fn pending(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".new");
    PathBuf::from(s)
}

/// Whether the store is (or may be, mid-change) unlocked by a passphrase.
pub fn uses_passphrase(home: &Home) -> bool {
    kdf_path(home).exists() || pending(&kdf_path(home)).exists()
}

/// What the store is to be unlocked by after a change.
#[derive(Debug)]
pub enum Target<'a> {
    /// A new random key in `store.key`.
    Keyfile,
    /// A passphrase (checked against the strength rule).
    Passphrase(&'a str),
}

/// The new key material a change has written, to hand to `Store::rekey` and [`commit`].
#[derive(Debug)]
pub enum Prepared {
    /// A new keyfile at `store.key.new`.
    Keyfile(StorageKey),
    /// Passphrase mode with these costs at `store.kdf.new`.
    Passphrase(Zeroizing<String>, KdfParams),
}

impl Prepared {
    /// The unlock for `Store::rekey`.
    pub fn unlock(&self) -> Unlock<'_> {
        match self {
            Prepared::Keyfile(key) => Unlock::Key(key),
            Prepared::Passphrase(p, params) => Unlock::Passphrase {
                passphrase: p.as_bytes(),
                params: *params,
            },
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HomeError {
    let path = path.to_owned();
    move |source| HomeError::Io { op, path, source }
}

fn remove_if_present(path: &Path) -> Result<(), HomeError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("remove", path)(e)),
        _ => Ok(()),
    }
}

fn write_kdf_file(path: &Path, params: &KdfParams) -> Result<(), HomeError> {
    let mut bytes = Vec::with_capacity(KDF_FILE_LEN);
    bytes.extend_from_slice(KDF_MAGIC);
    bytes.push(KDF_VERSION);
    bytes.extend_from_slice(&params.memory_kib.to_be_bytes());
    bytes.extend_from_slice(&params.iterations.to_be_bytes());
    bytes.extend_from_slice(&params.lanes.to_be_bytes());
    remove_if_present(path)?;
    crate::home::write_atomic_via(path, &pending(&pending(path)), &bytes, true)
}

fn read_kdf_file(path: &Path) -> Result<KdfParams, HomeError> {
    let bytes = crate::home::read_private(path, KDF_FILE_LEN)?;
    if bytes.len() != KDF_FILE_LEN
        || &bytes[..KDF_MAGIC.len()] != KDF_MAGIC
        || bytes[KDF_MAGIC.len()] != KDF_VERSION
    {
        return Err(HomeError::KeyFile {
            path: path.to_owned(),
            reason: "not a Tern store KDF file",
        });
    }
    let u = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let at = KDF_MAGIC.len() + 1;
    Ok(KdfParams {
        memory_kib: u(at),
        iterations: u(at + 4),
        lanes: u(at + 8),
    })
}

/// Opens the home's store with whatever unlocks it (see the module documentation), asking
/// `passphrase` only when a keyfile does not open it, and finishes a change a crash
/// interrupted.
pub fn open_store(home: &Home, passphrase: Option<&str>) -> Result<Store, HomeError> {
    let key = home.store_key_path();
    let kdf = kdf_path(home);
    let db = home.db_path();
    let mut wrong = false;
    for path in [key.clone(), pending(&key)] {
        if !path.exists() {
            continue;
        }
        // A partly written pending keyfile does not parse: it is not the key.
        let Ok(k) = StorageKey::read_keyfile(&path) else {
            continue;
        };
        match Store::open(&db, Unlock::Key(&k)) {
            Ok(store) => {
                finish(home, &path)?;
                return Ok(store);
            }
            Err(OpenError::WrongKey { .. }) => wrong = true,
            Err(e) => return Err(e.into()),
        }
    }
    let kdf_files: Vec<PathBuf> = [kdf.clone(), pending(&kdf)]
        .into_iter()
        .filter(|p| p.exists())
        .collect();
    if kdf_files.is_empty() {
        return Err(if wrong {
            HomeError::Open(OpenError::WrongKey { path: db })
        } else {
            HomeError::KeyFile {
                path: key,
                reason: "missing (and no passphrase is set)",
            }
        });
    }
    let Some(passphrase) = passphrase else {
        return Err(HomeError::PassphraseNeeded);
    };
    for path in kdf_files {
        let Ok(params) = read_kdf_file(&path) else {
            continue;
        };
        match Store::open(
            &db,
            Unlock::Passphrase {
                passphrase: passphrase.as_bytes(),
                params,
            },
        ) {
            Ok(store) => {
                finish(home, &path)?;
                return Ok(store);
            }
            Err(OpenError::WrongKey { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Err(HomeError::WrongPassphrase {
        interrupted: pending(&kdf).exists(),
    })
}

/// `winner` opened the store: it becomes the one file of its kind, every other is removed.
fn finish(home: &Home, winner: &Path) -> Result<(), HomeError> {
    let key = home.store_key_path();
    let kdf = kdf_path(home);
    let all = [key.clone(), pending(&key), kdf.clone(), pending(&kdf)];
    let final_name = if winner == pending(&key) {
        key
    } else if winner == pending(&kdf) {
        kdf
    } else {
        winner.to_owned()
    };
    if !all.iter().any(|p| p != winner && p.exists()) {
        return Ok(());
    }
    if winner != final_name {
        std::fs::rename(winner, &final_name).map_err(io("rename", winner))?;
    }
    for p in all.iter().filter(|p| **p != final_name) {
        remove_if_present(p)?;
    }
    sync_dir(&final_name)
}

/// Step 1 of a change: writes the new key material to its `.new` file. The store must be
/// open (so any leftover `.new` file is stale and may go).
pub fn prepare(home: &Home, to: Target<'_>) -> Result<Prepared, HomeError> {
    match to {
        Target::Keyfile => {
            let path = pending(&home.store_key_path());
            remove_if_present(&path)?;
            let key = StorageKey::generate()?;
            key.write_new_keyfile(&path)?;
            sync_dir(&path)?;
            Ok(Prepared::Keyfile(key))
        }
        Target::Passphrase(p) => {
            passphrase::check_strength(p).map_err(|e| HomeError::WeakPassphrase(e.to_string()))?;
            let params = KdfParams::default();
            write_kdf_file(&pending(&kdf_path(home)), &params)?;
            Ok(Prepared::Passphrase(Zeroizing::new(p.to_owned()), params))
        }
    }
}

/// Step 3 of a change, after `Store::rekey(prepared.unlock())`: the new file takes its final
/// name and the old mode's file goes.
pub fn commit(home: &Home, prepared: &Prepared) -> Result<(), HomeError> {
    let winner = match prepared {
        Prepared::Keyfile(_) => pending(&home.store_key_path()),
        Prepared::Passphrase(..) => pending(&kdf_path(home)),
    };
    finish(home, &winner)
}

/// Changes what unlocks the open `store` of `home` (all three steps).
pub fn change(home: &Home, store: &mut Store, to: Target<'_>) -> Result<(), HomeError> {
    let prepared = prepare(home, to)?;
    if let Err(e) = store.rekey(prepared.unlock()) {
        // The store is still under its old key: the new material is of no use.
        let _ = remove_if_present(&pending(&home.store_key_path()));
        let _ = remove_if_present(&pending(&kdf_path(home)));
        return Err(HomeError::Rekey(e.to_string()));
    }
    commit(home, &prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "a new long passphrase";

    fn home() -> (tempfile::TempDir, Home) {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("h"));
        home.init("Alice", "laptop").unwrap();
        (dir, home)
    }

    fn files(home: &Home) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(home.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("store."))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn keyfile_to_passphrase_to_another_and_back() {
        let (_d, home) = home();
        let (_, keys) = home.open().unwrap();
        let user = keys.identity.user_id();
        let mut store = open_store(&home, None).unwrap();
        change(&home, &mut store, Target::Passphrase(NEW)).unwrap();
        drop(store);
        assert_eq!(files(&home), ["store.kdf"]);
        assert!(matches!(
            open_store(&home, None),
            Err(HomeError::PassphraseNeeded)
        ));
        assert!(matches!(
            open_store(&home, Some("not the passphrase")),
            Err(HomeError::WrongPassphrase { interrupted: false })
        ));
        let (_, keys) = home.clone().with_passphrase(NEW).open().unwrap();
        assert_eq!(keys.identity.user_id(), user);
        let mut store = open_store(&home, Some(NEW)).unwrap();
        assert!(matches!(
            change(&home, &mut store, Target::Passphrase("short")),
            Err(HomeError::WeakPassphrase(_))
        ));
        change(
            &home,
            &mut store,
            Target::Passphrase("another good passphrase"),
        )
        .unwrap();
        change(&home, &mut store, Target::Keyfile).unwrap();
        drop(store);
        assert_eq!(files(&home), ["store.key"]);
        let (_, keys) = home.open().unwrap();
        assert_eq!(keys.identity.user_id(), user);
    }

    #[test]
    fn a_crash_after_the_rekey_before_the_rename_is_finished_on_open() {
        let (_d, home) = home();
        let mut store = open_store(&home, None).unwrap();
        let prepared = prepare(&home, Target::Passphrase(NEW)).unwrap();
        store.rekey(prepared.unlock()).unwrap();
        // The process dies here: no commit.
        drop(store);
        assert_eq!(files(&home), ["store.kdf.new", "store.key"]);
        assert!(matches!(
            open_store(&home, None),
            Err(HomeError::PassphraseNeeded)
        ));
        assert!(matches!(
            open_store(&home, Some("the old nothing")),
            Err(HomeError::WrongPassphrase { interrupted: true })
        ));
        let store = open_store(&home, Some(NEW)).unwrap();
        drop(store);
        assert_eq!(files(&home), ["store.kdf"]);

        // Back to a keyfile, dying after the rekey: the new keyfile opens it, no passphrase.
        let mut store = open_store(&home, Some(NEW)).unwrap();
        let prepared = prepare(&home, Target::Keyfile).unwrap();
        store.rekey(prepared.unlock()).unwrap();
        drop(store);
        assert_eq!(files(&home), ["store.kdf", "store.key.new"]);
        home.open().unwrap();
        assert_eq!(files(&home), ["store.key"]);
    }

    #[test]
    fn a_crash_before_the_rekey_leaves_the_old_key() {
        let (_d, home) = home();
        let store = open_store(&home, None).unwrap();
        let _prepared = prepare(&home, Target::Passphrase(NEW)).unwrap();
        drop(store);
        // Opens with the keyfile, no passphrase asked, and the stale change is dropped.
        home.open().unwrap();
        assert_eq!(files(&home), ["store.key"]);
        let store = open_store(&home, None).unwrap();
        let _prepared = prepare(&home, Target::Keyfile).unwrap();
        drop(store);
        home.open().unwrap();
        assert_eq!(files(&home), ["store.key"]);
    }

    #[test]
    fn a_crash_between_rename_and_removal_keeps_the_new_mode() {
        let (_d, home) = home();
        let mut store = open_store(&home, None).unwrap();
        let prepared = prepare(&home, Target::Passphrase(NEW)).unwrap();
        store.rekey(prepared.unlock()).unwrap();
        drop(store);
        std::fs::rename(pending(&kdf_path(&home)), kdf_path(&home)).unwrap();
        assert_eq!(files(&home), ["store.kdf", "store.key"]);
        home.clone().with_passphrase(NEW).open().unwrap();
        assert_eq!(files(&home), ["store.kdf"]);
    }
}
