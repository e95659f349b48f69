//! This device's own keys and device list, and contacts.
//!
//! Key material arrives sealed (encrypted or pickled) by tern-crypto; the store keeps it as
//! opaque blobs inside the encrypted file and never interprets it.

use rusqlite::{OptionalExtension, params};

use crate::consts::MAX_BLOB_BYTES;
use crate::error::{Context, ReadError, WriteError};
use crate::messages::{check_len, to_i64};
use crate::store::{Store, Tx};

/// The user's identity, as this device keeps it.
#[derive(Clone, PartialEq, Eq)]
pub struct OwnIdentity {
    /// The user id.
    pub user_id: String,
    /// The identity key, sealed by tern-crypto.
    pub sealed_identity_key: Vec<u8>,
    /// When it was created.
    pub created_at_ms: i64,
}

impl std::fmt::Debug for OwnIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnIdentity")
            .field("user_id", &self.user_id)
            .field("sealed_identity_key", &"..")
            .finish()
    }
}

/// This device's keys.
#[derive(Clone, PartialEq, Eq)]
pub struct OwnDevice {
    /// The device id (its libp2p PeerId).
    pub device_id: String,
    /// The libp2p key, sealed.
    pub sealed_device_key: Vec<u8>,
    /// The vodozemac account pickle.
    pub account_pickle: Vec<u8>,
    /// The device certificate signed by the identity key.
    pub certificate: Vec<u8>,
    /// When it was created.
    pub created_at_ms: i64,
}

impl std::fmt::Debug for OwnDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnDevice")
            .field("device_id", &self.device_id)
            .field("sealed_device_key", &"..")
            .field("account_pickle", &"..")
            .finish()
    }
}

/// A contact.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Contact {
    /// Their user id.
    pub user_id: String,
    /// The name shown.
    pub display_name: String,
    /// Whether the safety number was verified.
    pub verified: bool,
    /// Their identity public key.
    pub identity_key: Vec<u8>,
    /// Their signed device list, if one was fetched.
    pub device_list: Option<Vec<u8>>,
    /// Its version (0 when none).
    pub device_list_version: u64,
    /// Relays that hold their mailboxes.
    pub relays: Vec<String>,
}

/// What saving a contact did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ContactSaved {
    /// A new contact.
    Added,
    /// Updated, same identity key.
    Updated,
    /// The identity key differs from the stored one: the verified flag was cleared. The UI
    /// must warn loudly.
    IdentityChanged,
}

impl Tx<'_> {
    /// Saves the user identity (replacing any).
    pub fn save_own_identity(&mut self, id: &OwnIdentity) -> Result<(), WriteError> {
        const OP: &str = "save own identity";
        check_len(
            OP,
            "identity key",
            id.sealed_identity_key.len(),
            MAX_BLOB_BYTES,
        )?;
        self.tx
            .execute(
                "INSERT OR REPLACE INTO own_identity (singleton, user_id, identity_key, created_at_ms) VALUES (1, ?1, ?2, ?3)",
                params![id.user_id, id.sealed_identity_key, id.created_at_ms],
            )
            .write_ctx(OP)?;
        Ok(())
    }

    /// Saves this device's keys (replacing any); the account pickle changes as one-time keys
    /// are used, so this is called again after each such change.
    pub fn save_own_device(&mut self, d: &OwnDevice) -> Result<(), WriteError> {
        const OP: &str = "save own device";
        check_len(OP, "device key", d.sealed_device_key.len(), MAX_BLOB_BYTES)?;
        check_len(OP, "account pickle", d.account_pickle.len(), MAX_BLOB_BYTES)?;
        check_len(OP, "certificate", d.certificate.len(), MAX_BLOB_BYTES)?;
        self.tx
            .execute(
                "INSERT OR REPLACE INTO own_device (singleton, device_id, device_key, account, certificate, created_at_ms) \
                 VALUES (1, ?1, ?2, ?3, ?4, ?5)",
                params![d.device_id, d.sealed_device_key, d.account_pickle, d.certificate, d.created_at_ms],
            )
            .write_ctx(OP)?;
        Ok(())
    }

    /// Saves the user's signed device list; its version must grow.
    pub fn save_own_device_list(&mut self, version: u64, signed: &[u8]) -> Result<(), WriteError> {
        const OP: &str = "save own device list";
        check_len(OP, "device list", signed.len(), MAX_BLOB_BYTES)?;
        let v = to_i64(OP, "version", version)?;
        let stored: Option<i64> = self
            .tx
            .query_row(
                "SELECT version FROM own_device_list WHERE singleton = 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .write_ctx(OP)?;
        if let Some(stored) = stored
            && stored >= v
        {
            return Err(WriteError::StaleDeviceList {
                op: OP,
                offered: version,
                stored: u64::try_from(stored).unwrap_or(0),
            });
        }
        self.tx
            .execute(
                "INSERT OR REPLACE INTO own_device_list (singleton, version, signed) VALUES (1, ?1, ?2)",
                params![v, signed],
            )
            .write_ctx(OP)?;
        Ok(())
    }

    /// Adds or updates a contact (and replaces its relay list). A changed identity key clears
    /// the verified flag and is reported. A device list older than the stored one is refused.
    pub fn save_contact(&mut self, c: &Contact, now_ms: i64) -> Result<ContactSaved, WriteError> {
        const OP: &str = "save contact";
        check_len(OP, "identity key", c.identity_key.len(), MAX_BLOB_BYTES)?;
        check_len(
            OP,
            "device list",
            c.device_list.as_ref().map_or(0, Vec::len),
            MAX_BLOB_BYTES,
        )?;
        let version = to_i64(OP, "device list version", c.device_list_version)?;
        let stored: Option<(Vec<u8>, i64)> = self
            .tx
            .query_row(
                "SELECT identity_key, device_list_version FROM contacts WHERE user_id = ?1",
                [&c.user_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .write_ctx(OP)?;
        let outcome = match &stored {
            None => ContactSaved::Added,
            Some((key, _)) if key != &c.identity_key => ContactSaved::IdentityChanged,
            Some(_) => ContactSaved::Updated,
        };
        if let Some((_, stored_version)) = stored
            && version < stored_version
        {
            return Err(WriteError::StaleDeviceList {
                op: OP,
                offered: c.device_list_version,
                stored: u64::try_from(stored_version).unwrap_or(0),
            });
        }
        let verified = c.verified && outcome != ContactSaved::IdentityChanged;
        self.tx
            .execute(
                "INSERT INTO contacts (user_id, display_name, verified, identity_key, device_list, device_list_version, \
                 added_at_ms, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7) \
                 ON CONFLICT (user_id) DO UPDATE SET display_name = excluded.display_name, verified = excluded.verified, \
                 identity_key = excluded.identity_key, device_list = excluded.device_list, \
                 device_list_version = excluded.device_list_version, updated_at_ms = excluded.updated_at_ms",
                params![c.user_id, c.display_name, verified, c.identity_key, c.device_list, version, now_ms],
            )
            .write_ctx(OP)?;
        self.tx
            .execute(
                "DELETE FROM contact_relays WHERE user_id = ?1",
                [&c.user_id],
            )
            .write_ctx(OP)?;
        for relay in &c.relays {
            self.tx
                .execute(
                    "INSERT OR IGNORE INTO contact_relays (user_id, address) VALUES (?1, ?2)",
                    params![c.user_id, relay],
                )
                .write_ctx(OP)?;
        }
        Ok(outcome)
    }
}

impl Store {
    /// The user identity, if set.
    pub fn own_identity(&self) -> Result<Option<OwnIdentity>, ReadError> {
        self.conn
            .query_row(
                "SELECT user_id, identity_key, created_at_ms FROM own_identity",
                [],
                |r| {
                    Ok(OwnIdentity {
                        user_id: r.get(0)?,
                        sealed_identity_key: r.get(1)?,
                        created_at_ms: r.get(2)?,
                    })
                },
            )
            .optional()
            .read_ctx("read own identity")
    }

    /// This device's keys, if set.
    pub fn own_device(&self) -> Result<Option<OwnDevice>, ReadError> {
        self.conn
            .query_row(
                "SELECT device_id, device_key, account, certificate, created_at_ms FROM own_device",
                [],
                |r| {
                    Ok(OwnDevice {
                        device_id: r.get(0)?,
                        sealed_device_key: r.get(1)?,
                        account_pickle: r.get(2)?,
                        certificate: r.get(3)?,
                        created_at_ms: r.get(4)?,
                    })
                },
            )
            .optional()
            .read_ctx("read own device")
    }

    /// The user's signed device list and its version, if set.
    pub fn own_device_list(&self) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        self.conn
            .query_row("SELECT version, signed FROM own_device_list", [], |r| {
                Ok((u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0), r.get(1)?))
            })
            .optional()
            .read_ctx("read own device list")
    }

    /// A contact by user id.
    pub fn contact(&self, user_id: &str) -> Result<Option<Contact>, ReadError> {
        const OP: &str = "read contact";
        let c = self
            .conn
            .query_row(
                "SELECT user_id, display_name, verified, identity_key, device_list, device_list_version \
                 FROM contacts WHERE user_id = ?1",
                [user_id],
                |r| {
                    Ok(Contact {
                        user_id: r.get(0)?,
                        display_name: r.get(1)?,
                        verified: r.get(2)?,
                        identity_key: r.get(3)?,
                        device_list: r.get(4)?,
                        device_list_version: u64::try_from(r.get::<_, i64>(5)?).unwrap_or(0),
                        relays: Vec::new(),
                    })
                },
            )
            .optional()
            .read_ctx(OP)?;
        let Some(mut c) = c else { return Ok(None) };
        c.relays = self
            .conn
            .prepare_cached(
                "SELECT address FROM contact_relays WHERE user_id = ?1 ORDER BY address",
            )
            .and_then(|mut s| s.query_map([user_id], |r| r.get(0))?.collect())
            .read_ctx(OP)?;
        Ok(Some(c))
    }

    /// All contacts' user ids, sorted.
    pub fn contact_ids(&self) -> Result<Vec<String>, ReadError> {
        self.conn
            .prepare_cached("SELECT user_id FROM contacts ORDER BY user_id")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .read_ctx("list contacts")
    }
}
