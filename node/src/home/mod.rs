//! The node's home directory: what lives where, creating an identity, and opening it.
//!
//! ```text
//! HOME/
//!   tern.db       SQLCipher store (keys sealed inside, sessions, contacts, history, outbox)
//!   store.key     0600 random key of tern.db (tern-store keyfile)
//!   seal.key      0600 key that seals identity and device secrets inside tern.db
//!   config.json   user name, relays, listen addresses, embedded relay settings
//!   api.token     0600 bearer token of the local API (rewritten by every `tern up`)
//!   node.json     written by a running node: API address and pid (removed on clean stop)
//!   node.lock     locked (advisory, exclusive) by the process that has the home: one node
//!                 per home; the system lets go of it when the process ends, however
//!   relay/        data of the embedded relay, when `tern up` runs one
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;
use tern_crypto::{
    DeviceKeys, DeviceList, IdentityKey, SignedDeviceCertificate, SignedDeviceList,
    sealed::{self, Secret32},
    time::UnixSecs,
};
use tern_store::{OwnDevice, OwnIdentity, StorageKey, Store, Unlock};
use zeroize::Zeroizing;

use crate::consts::MAX_NAME_BYTES;

mod error;
mod files;

pub use error::HomeError;
use files::write_new_private;
pub use files::{create_private_dir, read_private, sync_dir, write_atomic, write_atomic_via};

const SEAL_MAGIC: &[u8; 8] = b"TERNSEAL";
const SEAL_VERSION: u8 = 1;
const SEAL_FILE_LEN: usize = SEAL_MAGIC.len() + 1 + 32;
/// Associated data binding each sealed secret to its purpose.
const SEAL_IDENTITY: &[u8] = b"tern/node/identity-secret/v1";
const SEAL_DEVICE: &[u8] = b"tern/node/device-secret/v1";

fn crypto_err(e: impl std::fmt::Display) -> HomeError {
    HomeError::Crypto(e.to_string())
}

/// The node's settings kept in `config.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Config {
    /// The user's display name (offered in contact links).
    pub name: String,
    /// Home relays (multiaddrs ending in `/p2p/<peer id>`). Empty: `tern up` runs an
    /// embedded relay.
    pub relays: Vec<String>,
    /// The embedded relay's TCP port once chosen, so its address stays the same across runs
    /// (contacts keep it from the contact link).
    pub embedded_relay_port: Option<u16>,
    /// The local API's port of the last run, taken again when free and no port is asked
    /// for, so a web UI page left open reconnects after a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_port: Option<u16>,
    /// The push endpoint registered at every home relay (`tern push set`), if any. It is a
    /// capability for the push service: never logged, and the file is written 0600.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub push_url: Option<String>,
    /// `tern push clear` ran and some home relay has not yet confirmed dropping the endpoint.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub push_clear_due: bool,
    /// Home relays removed (`tern relay remove`) whose mailboxes are still drained for a
    /// while: mail a contact left there before learning the new set is not lost.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub draining_relays: Vec<DrainingRelay>,
}

/// A removed home relay whose mailbox is still drained.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DrainingRelay {
    /// Its address (ending in `/p2p/<peer id>`).
    pub addr: String,
    /// Until when, ms since the epoch.
    pub until_ms: i64,
}

/// A node home directory.
#[derive(Debug, Clone)]
pub struct Home {
    dir: PathBuf,
    /// The store's passphrase, when it has one (see [`crate::unlock`]).
    passphrase: Option<Passphrase>,
}

/// A passphrase kept for opening the store; wiped on drop, never printed.
#[derive(Clone)]
struct Passphrase(std::sync::Arc<Zeroizing<String>>);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(..)")
    }
}

/// Everything secret or signed that the node loads from its home.
pub struct Keys {
    /// The user's identity key.
    pub identity: IdentityKey,
    /// This device's keys (network key and Olm account).
    pub device: DeviceKeys,
    /// This device's certificate.
    pub certificate: SignedDeviceCertificate,
    /// The user's signed device list.
    pub device_list: SignedDeviceList,
    /// The key that seals secrets inside the store.
    pub seal: Secret32,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("identity", &self.identity)
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// The own-device record for the store, with the current (sealed) device secrets. Saved
    /// again whenever the Olm account changes (one-time keys used or generated).
    pub fn own_device_record(&self, created_at_ms: i64) -> Result<OwnDevice, HomeError> {
        let secret = self.device.to_secret_bytes().map_err(crypto_err)?;
        let sealed = sealed::seal(&self.seal, SEAL_DEVICE, &secret).map_err(crypto_err)?;
        Ok(OwnDevice {
            device_id: self.device.device_id().to_peer_id_string(),
            sealed_device_key: sealed,
            // The account is inside the sealed device secret (tern-crypto keeps network key
            // and account in one record); this column holds a marker, not a second copy.
            account_pickle: b"in-sealed-device-key".to_vec(),
            certificate: self.certificate.to_bytes().map_err(crypto_err)?,
            created_at_ms,
        })
    }
}

/// What `init` created.
#[derive(Debug, Clone)]
pub struct Created {
    /// The user id (hex).
    pub user_id: String,
    /// The device id (PeerId string).
    pub device_id: String,
}

fn now_secs() -> UnixSecs {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A home taken by this process ([`Home::lock`]); dropping it lets the home go.
#[derive(Debug)]
pub struct HomeLock {
    /// The home's directory.
    dir: PathBuf,
    /// The locked file (the lock lives as long as it is open).
    _file: std::fs::File,
}

impl HomeLock {
    /// Whether this is the lock of `home`.
    pub fn holds(&self, home: &Home) -> bool {
        self.dir == home.dir
    }
}

impl Home {
    /// A home at `dir` (nothing is touched yet), made absolute against the current
    /// directory: paths the node builds under it are compared with absolute ones (a file
    /// the web UI uploaded is deleted once staged only if it lies under `uploads/`), and a
    /// relative home would never match.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        let dir = dir.into();
        Home {
            dir: std::path::absolute(&dir).unwrap_or(dir),
            passphrase: None,
        }
    }

    /// This home, opening its store with `passphrase` when a keyfile does not open it.
    pub fn with_passphrase(mut self, passphrase: &str) -> Self {
        self.passphrase = Some(Passphrase(std::sync::Arc::new(Zeroizing::new(
            passphrase.to_owned(),
        ))));
        self
    }

    /// Opens the store alone (no keys), finishing an interrupted key change.
    pub fn open_store(&self) -> Result<Store, HomeError> {
        crate::unlock::open_store(self, self.passphrase.as_ref().map(|p| p.0.as_str()))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The store file.
    pub fn db_path(&self) -> PathBuf {
        self.dir.join("tern.db")
    }
    /// The store key file.
    pub fn store_key_path(&self) -> PathBuf {
        self.dir.join("store.key")
    }
    /// The seal key file.
    pub fn seal_key_path(&self) -> PathBuf {
        self.dir.join("seal.key")
    }
    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.json")
    }
    /// The API token file.
    pub fn token_path(&self) -> PathBuf {
        self.dir.join("api.token")
    }
    /// The running node's address file.
    pub fn node_file_path(&self) -> PathBuf {
        self.dir.join("node.json")
    }
    /// Where files the web UI uploads for sending wait until staged (`POST /upload`), one
    /// directory per upload.
    pub fn uploads_dir(&self) -> PathBuf {
        self.dir.join("uploads")
    }

    /// The upload directory (`uploads/<id>/`) `source` is the file of, if it is one: a file
    /// the web UI uploaded for sending. Both sides are resolved on disk (no `..`, no link),
    /// so a path that only names `uploads` on its way elsewhere is not one; `None` when
    /// either is missing.
    pub fn upload_dir(&self, source: &Path) -> Option<PathBuf> {
        let uploads = std::fs::canonicalize(self.uploads_dir()).ok()?;
        let source = std::fs::canonicalize(source).ok()?;
        let dir = source.parent()?;
        (dir.parent()? == uploads && source.is_file()).then(|| dir.to_owned())
    }

    /// The embedded relay's data directory.
    pub fn relay_dir(&self) -> PathBuf {
        self.dir.join("relay")
    }

    /// Takes the home for this process alone, as a running node must (two nodes on one home
    /// would each keep their own message counters over the same store and device keys):
    /// an exclusive lock on `node.lock`, held until the returned guard is dropped, and let
    /// go of by the system when the process ends, however it ends. Refuses with
    /// [`HomeError::InUse`] while another process holds it.
    pub fn lock(&self) -> Result<HomeLock, HomeError> {
        let path = self.dir.join("node.lock");
        let io = |source| HomeError::Io {
            op: "locking",
            path: path.clone(),
            source,
        };
        let mut open = std::fs::OpenOptions::new();
        open.create(true).truncate(false).write(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut open, 0o600);
        let file = open.open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => Ok(HomeLock {
                dir: self.dir.clone(),
                _file: file,
            }),
            Err(std::fs::TryLockError::WouldBlock) => Err(HomeError::InUse {
                path: self.dir.clone(),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// Whether an identity exists here.
    pub fn is_initialised(&self) -> bool {
        self.db_path().exists() || self.store_key_path().exists()
    }

    /// Creates a new identity and first device. Refuses to overwrite an existing one.
    pub fn init(&self, name: &str, device_name: &str) -> Result<Created, HomeError> {
        if name.is_empty() || name.len() > MAX_NAME_BYTES || device_name.len() > MAX_NAME_BYTES {
            return Err(HomeError::BadName);
        }
        if self.is_initialised() {
            return Err(HomeError::AlreadyInitialised {
                path: self.dir.clone(),
            });
        }
        let identity = IdentityKey::generate().map_err(crypto_err)?;
        let device = DeviceKeys::generate().map_err(crypto_err)?;
        let now = now_secs();
        let certificate = device
            .certify(&identity, device_name, now)
            .map_err(crypto_err)?;
        let list = DeviceList::first(&identity, certificate.clone(), now);
        let device_list = list.sign(&identity).map_err(crypto_err)?;
        self.create(
            identity,
            device,
            certificate,
            device_list,
            &Config {
                name: name.to_owned(),
                ..Config::default()
            },
            |_| Ok(()),
        )
    }

    /// Writes a new home: the seal and store key files, the store with the identity, this
    /// device and the device list (plus what `more` adds in the same transaction), and the
    /// configuration.
    /// A failure part way removes what was written, so the home is empty again.
    fn create(
        &self,
        identity: IdentityKey,
        device: DeviceKeys,
        certificate: SignedDeviceCertificate,
        device_list: SignedDeviceList,
        config: &Config,
        more: impl FnOnce(&mut tern_store::Tx<'_>) -> Result<(), HomeError>,
    ) -> Result<Created, HomeError> {
        create_private_dir(&self.dir)?;
        // What is cleaned up on failure must be only what this call wrote.
        if self.seal_key_path().exists() || self.is_initialised() {
            return Err(HomeError::AlreadyInitialised {
                path: self.dir.clone(),
            });
        }
        let mut made = Vec::new();
        let result = self.create_files(
            identity,
            device,
            certificate,
            device_list,
            config,
            more,
            &mut made,
        );
        if result.is_err() {
            for path in made.iter().rev() {
                let _ = std::fs::remove_file(path);
            }
        }
        result
    }

    #[allow(clippy::too_many_arguments)]
    fn create_files(
        &self,
        identity: IdentityKey,
        device: DeviceKeys,
        certificate: SignedDeviceCertificate,
        device_list: SignedDeviceList,
        config: &Config,
        more: impl FnOnce(&mut tern_store::Tx<'_>) -> Result<(), HomeError>,
        made: &mut Vec<PathBuf>,
    ) -> Result<Created, HomeError> {
        let seal = Secret32::random().map_err(crypto_err)?;
        made.push(self.seal_key_path());
        write_new_private(
            &self.seal_key_path(),
            &Zeroizing::new([SEAL_MAGIC.as_slice(), &[SEAL_VERSION], seal.expose()].concat()),
        )?;
        let store_key = StorageKey::generate()?;
        made.push(self.store_key_path());
        store_key.write_new_keyfile(&self.store_key_path())?;
        let version = device_list.list().version;
        let keys = Keys {
            identity,
            device,
            certificate,
            device_list,
            seal,
        };
        for suffix in ["", "-wal", "-shm"] {
            made.push(PathBuf::from(format!(
                "{}{suffix}",
                self.db_path().display()
            )));
        }
        let mut store = Store::open(&self.db_path(), Unlock::Key(&store_key))?;
        let id_secret = keys.identity.to_secret_bytes().map_err(crypto_err)?;
        let sealed_id = sealed::seal(&keys.seal, SEAL_IDENTITY, &id_secret).map_err(crypto_err)?;
        let created_ms = now_ms();
        let user_id = keys.identity.user_id().to_string();
        store.transaction(|tx| -> Result<(), HomeError> {
            tx.save_own_identity(&OwnIdentity {
                user_id: user_id.clone(),
                sealed_identity_key: sealed_id,
                created_at_ms: created_ms,
            })?;
            tx.save_own_device(&keys.own_device_record(created_ms)?)?;
            tx.save_own_device_list(version, keys.device_list.as_bytes())?;
            more(tx)
        })?;
        drop(store);
        if !self.config_path().exists() {
            made.push(self.config_path());
        }
        self.save_config(config)?;
        Ok(Created {
            user_id,
            device_id: keys.device.device_id().to_peer_id_string(),
        })
    }

    /// Creates this home as a newly linked device of an existing user, from the
    /// provisioning bundle another device of the user sent (see [`crate::device_link`]) and
    /// the device keys made here. Refuses to overwrite an existing identity.
    pub fn init_linked(
        &self,
        device: DeviceKeys,
        bundle: &crate::device_link::Bundle,
    ) -> Result<Created, HomeError> {
        if self.is_initialised() {
            return Err(HomeError::AlreadyInitialised {
                path: self.dir.clone(),
            });
        }
        let (identity, certificate, device_list) = Self::check_linked(&device, bundle)?;
        self.create_from_bundle(identity, device, certificate, device_list, bundle, None)
    }

    /// Checks that a provisioning bundle is for `device` (see [`Home::init_linked`]) without
    /// writing anything: the certificate and device list verify under the identity key it
    /// carries and hold this device.
    pub fn check_linked(
        device: &DeviceKeys,
        bundle: &crate::device_link::Bundle,
    ) -> Result<(IdentityKey, SignedDeviceCertificate, SignedDeviceList), HomeError> {
        let identity = IdentityKey::from_secret_bytes(&bundle.identity).map_err(crypto_err)?;
        let certificate =
            SignedDeviceCertificate::from_bytes(&bundle.certificate).map_err(crypto_err)?;
        certificate
            .check_identity(&identity.public())
            .map_err(crypto_err)?;
        if certificate.certificate().device_id != device.device_id()
            || certificate.certificate().curve25519 != device.curve25519()
        {
            return Err(HomeError::Crypto(
                "the certificate is for another device".into(),
            ));
        }
        let device_list = SignedDeviceList::from_bytes(&bundle.device_list).map_err(crypto_err)?;
        device_list
            .check_identity(&identity.public())
            .map_err(crypto_err)?;
        if device_list
            .list()
            .active_certificate(&device.device_id())
            .is_none()
        {
            return Err(HomeError::Crypto(
                "the device list does not hold this device".into(),
            ));
        }
        Ok((identity, certificate, device_list))
    }

    /// Creates this home as a new device of the user whose identity backup `bundle` is (see
    /// [`crate::backup`]): `device` is new, `certificate` and `device_list` were made for it
    /// here under the restored identity key. Home relays are `relays` when given, else the
    /// backup's. Refuses to overwrite an existing identity.
    pub fn init_restored(
        &self,
        device: DeviceKeys,
        certificate: SignedDeviceCertificate,
        device_list: SignedDeviceList,
        bundle: &crate::device_link::Bundle,
        relays: Option<Vec<String>>,
    ) -> Result<Created, HomeError> {
        if self.is_initialised() {
            return Err(HomeError::AlreadyInitialised {
                path: self.dir.clone(),
            });
        }
        let identity = IdentityKey::from_secret_bytes(&bundle.identity).map_err(crypto_err)?;
        certificate
            .check_identity(&identity.public())
            .map_err(crypto_err)?;
        device_list
            .check_identity(&identity.public())
            .map_err(crypto_err)?;
        if certificate.certificate().device_id != device.device_id()
            || device_list
                .list()
                .active_certificate(&device.device_id())
                .is_none()
        {
            return Err(HomeError::Crypto(
                "the certificate or device list is not for this device".into(),
            ));
        }
        self.create_from_bundle(identity, device, certificate, device_list, bundle, relays)
    }

    /// Writes a home from a provisioning bundle: its contacts, groups and history.
    fn create_from_bundle(
        &self,
        identity: IdentityKey,
        device: DeviceKeys,
        certificate: SignedDeviceCertificate,
        device_list: SignedDeviceList,
        bundle: &crate::device_link::Bundle,
        relays: Option<Vec<String>>,
    ) -> Result<Created, HomeError> {
        let created_ms = now_ms();
        self.create(
            identity,
            device,
            certificate,
            device_list,
            &Config {
                name: bundle.name.clone(),
                relays: relays.unwrap_or_else(|| bundle.relays.clone()),
                ..Config::default()
            },
            |tx| {
                for c in &bundle.contacts {
                    let list = c
                        .device_list
                        .as_ref()
                        .and_then(|b| SignedDeviceList::from_bytes(b).ok());
                    tx.save_contact(
                        &tern_store::Contact {
                            user_id: c.user_id.clone(),
                            display_name: c.name.clone(),
                            verified: c.verified,
                            identity_key: c.identity_key.to_vec(),
                            device_list_version: list.as_ref().map_or(0, |l| l.list().version),
                            device_list: c.device_list.as_ref().map(|b| b.to_vec()),
                            relays: c.relays.clone(),
                        },
                        created_ms,
                    )?;
                }
                for (group, op) in &bundle.group_ops {
                    let hash: [u8; 32] = sha2::Sha256::digest(op).into();
                    tx.save_group_op(group, &hash, op, created_ms)?;
                }
                for m in &bundle.history {
                    let message = crate::device_link::moved_message(m, created_ms, tx)?;
                    tx.record_incoming(&message, &[])?;
                }
                Ok(())
            },
        )
    }

    /// Opens the store and loads the keys.
    pub fn open(&self) -> Result<(Store, Keys), HomeError> {
        if !self.db_path().exists() {
            return Err(HomeError::NotInitialised {
                path: self.dir.clone(),
            });
        }
        let seal = self.read_seal_key()?;
        let store = self.open_store()?;
        let own = store
            .own_identity()?
            .ok_or(HomeError::Missing("identity"))?;
        let dev = store.own_device()?.ok_or(HomeError::Missing("device"))?;
        let (_, list) = store
            .own_device_list()?
            .ok_or(HomeError::Missing("device list"))?;
        let id_secret =
            sealed::open(&seal, SEAL_IDENTITY, &own.sealed_identity_key).map_err(crypto_err)?;
        let identity = IdentityKey::from_secret_bytes(&id_secret).map_err(crypto_err)?;
        let dev_secret =
            sealed::open(&seal, SEAL_DEVICE, &dev.sealed_device_key).map_err(crypto_err)?;
        let device = DeviceKeys::from_secret_bytes(&dev_secret).map_err(crypto_err)?;
        let certificate =
            SignedDeviceCertificate::from_bytes(&dev.certificate).map_err(crypto_err)?;
        let device_list = SignedDeviceList::from_bytes(&list).map_err(crypto_err)?;
        device_list
            .check_identity(&identity.public())
            .map_err(crypto_err)?;
        Ok((
            store,
            Keys {
                identity,
                device,
                certificate,
                device_list,
                seal,
            },
        ))
    }

    fn read_seal_key(&self) -> Result<Secret32, HomeError> {
        let path = self.seal_key_path();
        let bytes = read_private(&path, SEAL_FILE_LEN)?;
        if bytes.len() != SEAL_FILE_LEN
            || &bytes[..SEAL_MAGIC.len()] != SEAL_MAGIC
            || bytes[SEAL_MAGIC.len()] != SEAL_VERSION
        {
            return Err(HomeError::KeyFile {
                path,
                reason: "not a Tern seal key",
            });
        }
        let mut key = [0u8; 32];
        key.copy_from_slice(&bytes[SEAL_MAGIC.len() + 1..]);
        let secret = Secret32::new(key);
        zeroize::Zeroize::zeroize(&mut key);
        Ok(secret)
    }

    /// Reads `config.json` (defaults when absent).
    pub fn config(&self) -> Result<Config, HomeError> {
        let path = self.config_path();
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| HomeError::Config {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(HomeError::Io {
                op: "read",
                path,
                source,
            }),
        }
    }

    /// Writes `config.json` atomically, mode 0600 (it may hold a push endpoint).
    pub fn save_config(&self, config: &Config) -> Result<(), HomeError> {
        let text = serde_json::to_vec_pretty(config).map_err(|e| HomeError::Config {
            path: self.config_path(),
            reason: e.to_string(),
        })?;
        write_atomic(&self.config_path(), &text, true)
    }
}

#[cfg(test)]
mod tests {
    use super::Home;

    #[test]
    fn a_home_is_taken_by_one_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let held = home.lock().unwrap();
        assert!(matches!(
            Home::new(dir.path()).lock(),
            Err(super::HomeError::InUse { .. })
        ));
        drop(held);
        assert!(home.lock().is_ok(), "free again once let go");
    }

    #[test]
    fn only_a_file_in_an_upload_directory_is_an_upload() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let up = home.uploads_dir().join("0123abcd");
        std::fs::create_dir_all(&up).unwrap();
        std::fs::write(up.join("photo.jpg"), b"x").unwrap();
        std::fs::write(dir.path().join("store.db"), b"x").unwrap();
        let canonical = std::fs::canonicalize(&up).unwrap();
        assert_eq!(home.upload_dir(&up.join("photo.jpg")), Some(canonical));
        for not in [
            home.uploads_dir().join("..").join("store.db"),
            up.join("..").join("..").join("store.db"),
            dir.path().join("store.db"),
            up.clone(),
            up.join("missing"),
        ] {
            assert_eq!(home.upload_dir(&not), None, "{}", not.display());
        }
    }

    #[test]
    fn a_relative_home_is_made_absolute() {
        let home = Home::new("some/home");
        assert!(home.dir().is_absolute(), "{}", home.dir().display());
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(home.dir(), cwd.join("some/home"));
        assert_eq!(
            Home::new("/abs/home").dir(),
            std::path::Path::new("/abs/home")
        );
    }
}
