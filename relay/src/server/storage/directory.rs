//! The directory: users' signed device lists, devices' prekey bundles (without their
//! one-time keys) and the one-time keys, each handed out once.

use rusqlite::{Connection, OptionalExtension, params};

use super::{OpError, sql_err};
use crate::wire::ErrorCode;

/// Most one-time keys the relay keeps for one device.
pub const MAX_STORED_ONE_TIME_KEYS: i64 = 500;

/// Decides, from the stored signed device list of a user (if any), whether a directory
/// write may go ahead. Runs on the writer thread, inside the transaction, so the decision
/// and the write are atomic.
pub struct ListCheck(pub Box<CheckFn>);

/// The function inside a [`ListCheck`]: given the stored signed list, allow or refuse.
pub type CheckFn = dyn FnOnce(Option<&[u8]>) -> Result<(), ErrorCode> + Send;

impl std::fmt::Debug for ListCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ListCheck(..)")
    }
}

/// A stored bundle and, if one was left, the one-time key just removed for a claimer.
pub type Claimed = (Vec<u8>, Option<Vec<u8>>);

pub(super) fn stored_list(sp: &Connection, user: &[u8]) -> Result<Option<Vec<u8>>, OpError> {
    sp.prepare_cached("SELECT body FROM device_list WHERE user = ?1")
        .and_then(|mut s| s.query_row(params![user], |r| r.get(0)).optional())
        .map_err(sql_err)
}

pub(super) fn publish_list(
    sp: &Connection,
    user: &[u8],
    body: &[u8],
    check: ListCheck,
) -> Result<(), OpError> {
    let stored = stored_list(sp, user)?;
    (check.0)(stored.as_deref()).map_err(OpError::Refused)?;
    sp.execute(
        "INSERT INTO device_list(user, body) VALUES (?1, ?2)
         ON CONFLICT(user) DO UPDATE SET body = excluded.body",
        params![user, body],
    )
    .map_err(sql_err)?;
    Ok(())
}

pub(super) fn publish_prekeys(
    sp: &Connection,
    device: &[u8],
    user: &[u8],
    bundle: &[u8],
    one_time: &[Vec<u8>],
    check: ListCheck,
) -> Result<u32, OpError> {
    let stored = stored_list(sp, user)?;
    (check.0)(stored.as_deref()).map_err(OpError::Refused)?;
    sp.execute(
        "INSERT INTO prekey_bundle(device, user, bundle) VALUES (?1, ?2, ?3)
         ON CONFLICT(device) DO UPDATE SET user = excluded.user, bundle = excluded.bundle",
        params![device, user, bundle],
    )
    .map_err(sql_err)?;
    let count = |sp: &Connection| -> Result<i64, OpError> {
        sp.query_row(
            "SELECT COUNT(*) FROM one_time_key WHERE device = ?1",
            params![device],
            |r| r.get(0),
        )
        .map_err(sql_err)
    };
    if count(sp)? + one_time.len() as i64 > MAX_STORED_ONE_TIME_KEYS {
        return Err(OpError::Refused(ErrorCode::QuotaCount));
    }
    let mut stmt = sp
        .prepare_cached("INSERT OR IGNORE INTO one_time_key(device, key) VALUES (?1, ?2)")
        .map_err(sql_err)?;
    for k in one_time {
        stmt.execute(params![device, k]).map_err(sql_err)?;
    }
    Ok(count(sp)?.max(0) as u32)
}

pub(super) fn one_time_count(sp: &Connection, device: &[u8]) -> Result<u32, OpError> {
    sp.query_row(
        "SELECT COUNT(*) FROM one_time_key WHERE device = ?1",
        params![device],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n.max(0) as u32)
    .map_err(sql_err)
}

pub(super) fn claim(
    sp: &Connection,
    device: &[u8],
    user: &[u8],
    one_time: bool,
) -> Result<Option<Claimed>, OpError> {
    let row: Option<(Vec<u8>, Vec<u8>)> = sp
        .query_row(
            "SELECT user, bundle FROM prekey_bundle WHERE device = ?1",
            params![device],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(sql_err)?;
    let Some((owner, bundle)) = row else {
        return Ok(None);
    };
    if owner != user {
        return Ok(None);
    }
    if !one_time {
        return Ok(Some((bundle, None)));
    }
    let key: Option<Vec<u8>> = sp
        .query_row(
            "DELETE FROM one_time_key WHERE id =
               (SELECT id FROM one_time_key WHERE device = ?1 ORDER BY id LIMIT 1)
             RETURNING key",
            params![device],
            |r| r.get(0),
        )
        .optional()
        .map_err(sql_err)?;
    Ok(Some((bundle, key)))
}
