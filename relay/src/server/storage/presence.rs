//! What presence and wake-ups keep: presence allow-lists, last-seen times and push
//! endpoints.

use libp2p::PeerId;
use rusqlite::{Connection, params};

use super::{OpError, sql_err};

pub(super) fn set_allow(sp: &Connection, owner: PeerId, viewers: &[PeerId]) -> Result<(), OpError> {
    let key = owner.to_bytes();
    sp.execute("DELETE FROM presence_allow WHERE owner = ?1", params![key])
        .map_err(sql_err)?;
    let mut stmt = sp
        .prepare_cached("INSERT OR IGNORE INTO presence_allow(owner, viewer) VALUES (?1, ?2)")
        .map_err(sql_err)?;
    for v in viewers {
        stmt.execute(params![key, v.to_bytes()]).map_err(sql_err)?;
    }
    Ok(())
}

/// Sets (`Some`) or removes (`None`) the push endpoint of `owner`.
pub(super) fn set_push(sp: &Connection, owner: PeerId, url: Option<&str>) -> Result<(), OpError> {
    match url {
        Some(u) => sp.execute(
            "INSERT INTO push_endpoint(owner, url) VALUES (?1, ?2)
             ON CONFLICT(owner) DO UPDATE SET url = excluded.url",
            params![owner.to_bytes(), u],
        ),
        None => sp.execute(
            "DELETE FROM push_endpoint WHERE owner = ?1",
            params![owner.to_bytes()],
        ),
    }
    .map(|_| ())
    .map_err(sql_err)
}

/// Records that `peer` was online at `ms`; an older time never replaces a newer one.
pub(super) fn set_last_seen(sp: &Connection, peer: PeerId, ms: u64) -> rusqlite::Result<usize> {
    sp.execute(
        "INSERT INTO last_seen(peer, ms) VALUES (?1, ?2)
         ON CONFLICT(peer) DO UPDATE SET ms = MAX(ms, excluded.ms)",
        params![peer.to_bytes(), ms as i64],
    )
}
