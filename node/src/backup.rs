//! Identity backups: what `tern id backup` writes and `tern id restore` reads.
//!
//! A backup is the provisioning record a linked device gets ([`crate::device_link::Bundle`]:
//! identity secret, name, home relays, the own signed device list, contacts with their pinned
//! identity keys, device lists, names and verified flags, the groups' signed membership
//! operations) without history, with the certificate of the device that made it, sealed under a
//! passphrase by [`tern_crypto::passphrase`] (Argon2id, XChaCha20-Poly1305, versioned header as
//! associated data).
//!
//! Restoring makes a **new** device: new device keys, a certificate signed by the restored
//! identity key, and the backup's device list with this device added (version + 1, a valid
//! successor). Nothing is written to the home until the file has opened and every signature
//! has checked.

use std::path::{Path, PathBuf};

use crate::{
    consts::{MAX_LINK_RELAYS, MAX_NAME_BYTES},
    device_link::{Bundle, DeviceLinkError},
    home::{Created, Home, HomeError},
};
use tern_crypto::{
    DeviceKeys, IdentityKey, SignedDeviceList,
    passphrase::{self, KdfParams, WeakPassphrase},
};

pub use tern_crypto::passphrase::check_strength;

/// Largest passphrase file read (`--passphrase-file`): the longest passphrase and a line end.
pub const MAX_PASSPHRASE_FILE_BYTES: usize = tern_crypto::consts::MAX_PASSPHRASE_BYTES + 2;

/// Why a backup could not be made or restored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The new passphrase does not meet the rule.
    #[error(transparent)]
    Weak(#[from] WeakPassphrase),
    /// The file did not open: wrong passphrase, altered, truncated, not a backup, another
    /// version.
    #[error(transparent)]
    File(#[from] passphrase::BackupError),
    /// It opened, but what is inside does not decode or verify.
    #[error("the backup's contents are unusable: {0}")]
    Contents(String),
    /// A relay address or device name given for the restore is not usable.
    #[error("{0}")]
    BadInput(String),
    /// The file could not be read or written.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The home could not be written.
    #[error(transparent)]
    Home(#[from] HomeError),
}

impl From<DeviceLinkError> for BackupError {
    fn from(e: DeviceLinkError) -> Self {
        BackupError::Contents(e.to_string())
    }
}

fn contents(e: impl std::fmt::Display) -> BackupError {
    BackupError::Contents(e.to_string())
}

/// Seals `bundle` under `passphrase` (checked against the strength rule first) with the
/// backup's Argon2id costs. Slow on purpose (a second or so): call it off async tasks.
pub fn seal(bundle: &Bundle, passphrase: &str) -> Result<Vec<u8>, BackupError> {
    passphrase::check_strength(passphrase)?;
    seal_with(bundle, passphrase, &KdfParams::backup())
}

/// [`seal`] with given costs and no strength check (tests use cheap costs).
pub fn seal_with(
    bundle: &Bundle,
    passphrase: &str,
    params: &KdfParams,
) -> Result<Vec<u8>, BackupError> {
    let plain = bundle.encode()?;
    Ok(passphrase::seal_backup(
        passphrase.as_bytes(),
        &plain,
        params,
    )?)
}

/// Opens a backup file.
pub fn open(file: &[u8], passphrase: &str) -> Result<Bundle, BackupError> {
    let plain = passphrase::open_backup(passphrase.as_bytes(), file)?;
    Ok(Bundle::decode(&plain)?)
}

/// Reads a backup file, refusing one over the format's cap before reading it all.
pub fn read_file(path: &Path) -> Result<Vec<u8>, BackupError> {
    use std::io::Read;
    let io = |source| BackupError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    };
    let f = std::fs::File::open(path).map_err(io)?;
    let mut buf = Vec::new();
    f.take(passphrase::MAX_BACKUP_FILE as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    Ok(buf)
}

/// Writes a backup file atomically (a temporary beside it, synced, renamed), mode 0600.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let name = path
        .file_name()
        .ok_or_else(|| BackupError::BadInput(format!("{} is not a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    crate::home::write_atomic_via(path, &tmp, bytes, true).map_err(|e| match e {
        HomeError::Io { op, path, source } => BackupError::Io { op, path, source },
        other => BackupError::Home(other),
    })
}

/// Restores the identity in `file` into the empty `home` as a new device named
/// `device_name`. Home relays are `relays` when given, else the backup's.
pub fn restore(
    home: &Home,
    file: &[u8],
    passphrase: &str,
    relays: Option<Vec<String>>,
    device_name: &str,
    now_secs: u64,
) -> Result<Created, BackupError> {
    if home.is_initialised() {
        return Err(HomeError::AlreadyInitialised {
            path: home.dir().to_owned(),
        }
        .into());
    }
    if device_name.is_empty() || device_name.len() > MAX_NAME_BYTES {
        return Err(BackupError::BadInput(format!(
            "the device name must be 1 to {MAX_NAME_BYTES} bytes"
        )));
    }
    if let Some(relays) = &relays {
        check_relays(relays)?;
    }
    let bundle = open(file, passphrase)?;
    let identity = IdentityKey::from_secret_bytes(&bundle.identity).map_err(contents)?;
    let list = SignedDeviceList::from_bytes(&bundle.device_list).map_err(contents)?;
    list.check_identity(&identity.public()).map_err(contents)?;
    let device = DeviceKeys::generate().map_err(contents)?;
    let certificate = device
        .certify(&identity, device_name, now_secs)
        .map_err(contents)?;
    // The backup's list with this device added: a valid successor of what contacts hold.
    let next = list
        .list()
        .with_device(certificate.clone(), now_secs)
        .map_err(contents)?;
    let signed = next.sign(&identity).map_err(contents)?;
    // The identity secret inside `bundle` is wiped when it drops (`Bundle`'s `Drop`).
    Ok(home.init_restored(device, certificate, signed, &bundle, relays)?)
}

fn check_relays(relays: &[String]) -> Result<(), BackupError> {
    if relays.is_empty() || relays.len() > MAX_LINK_RELAYS {
        return Err(BackupError::BadInput(format!(
            "give 1 to {MAX_LINK_RELAYS} relays"
        )));
    }
    for r in relays {
        let addr: libp2p::Multiaddr = r
            .parse()
            .map_err(|e| BackupError::BadInput(format!("bad relay address {r}: {e}")))?;
        if crate::engine::relay_peer(&addr).is_none() {
            return Err(BackupError::BadInput(format!(
                "relay address {r} lacks /p2p/<peer id>"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_bytes::ByteBuf;
    use tern_crypto::DeviceList;

    const CHEAP: KdfParams = KdfParams {
        memory_kib: 64,
        iterations: 1,
        lanes: 1,
    };

    fn bundle() -> (Bundle, IdentityKey) {
        let identity = IdentityKey::generate().unwrap();
        let device = DeviceKeys::generate().unwrap();
        let cert = device.certify(&identity, "laptop", 1_000).unwrap();
        let list = DeviceList::first(&identity, cert.clone(), 1_000)
            .sign(&identity)
            .unwrap();
        let b = Bundle {
            v: crate::device_link::LINK_VERSION,
            identity: ByteBuf::from(identity.to_secret_bytes().unwrap().to_vec()),
            name: "Alice".into(),
            relays: vec![
                "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWLU1A7KakL9eRpfFpnSE4bZJ1LscLoTXP3tP3FazR4xtd"
                    .into(),
            ],
            certificate: ByteBuf::from(cert.to_bytes().unwrap()),
            device_list: ByteBuf::from(list.as_bytes().to_vec()),
            contacts: Vec::new(),
            group_ops: Vec::new(),
            history: Vec::new(),
        };
        (b, identity)
    }

    #[test]
    fn a_weak_passphrase_is_refused_before_anything_is_sealed() {
        let (b, _) = bundle();
        assert!(matches!(
            seal(&b, "short"),
            Err(BackupError::Weak(WeakPassphrase::TooShort(5)))
        ));
    }

    #[test]
    fn restore_makes_a_new_device_on_top_of_the_backed_up_list() {
        let (b, identity) = bundle();
        let file = seal_with(&b, "correct horse battery", &CHEAP).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("home"));
        // Wrong passphrase, a flipped byte, a cut file: nothing written.
        for (bad, pass) in [
            (file.clone(), "correct horse batterY"),
            (
                {
                    let mut f = file.clone();
                    let i = f.len() / 2;
                    f[i] ^= 1;
                    f
                },
                "correct horse battery",
            ),
            (file[..file.len() - 1].to_vec(), "correct horse battery"),
        ] {
            assert!(matches!(
                restore(&home, &bad, pass, None, "phone", 2_000),
                Err(BackupError::File(_))
            ));
            assert!(!home.dir().exists(), "nothing written");
        }
        let created = restore(&home, &file, "correct horse battery", None, "phone", 2_000).unwrap();
        assert_eq!(created.user_id, identity.user_id().to_string());
        let (_, keys) = home.open().unwrap();
        let list = keys.device_list.list();
        assert_eq!(list.version, 2);
        assert_eq!(list.active().count(), 2);
        assert!(list.active_certificate(&keys.device.device_id()).is_some());
        assert_eq!(home.config().unwrap().relays, b.relays);
        // A second restore into the same home is refused.
        assert!(matches!(
            restore(&home, &file, "correct horse battery", None, "phone", 2_000),
            Err(BackupError::Home(HomeError::AlreadyInitialised { .. }))
        ));
    }
}
