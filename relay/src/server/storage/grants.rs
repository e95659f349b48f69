//! Deposit grants: the token hashes an owner registers (replacing the last set), and their
//! expiry when the owner stops registering them.

use libp2p::PeerId;
use rusqlite::{Connection, params};

use super::{OpError, sql_err};

pub(super) fn set(
    sp: &Connection,
    owner: PeerId,
    hashes: &[[u8; 32]],
    now_ms: u64,
) -> Result<(), OpError> {
    let key = owner.to_bytes();
    sp.execute("DELETE FROM deposit_grant WHERE owner = ?1", params![key])
        .map_err(sql_err)?;
    let mut stmt = sp
        .prepare_cached("INSERT OR IGNORE INTO deposit_grant(owner, hash) VALUES (?1, ?2)")
        .map_err(sql_err)?;
    for h in hashes {
        stmt.execute(params![key, h.as_slice()]).map_err(sql_err)?;
    }
    sp.execute(
        "INSERT INTO grant_owner(owner, updated_ms) VALUES (?1, ?2)
         ON CONFLICT(owner) DO UPDATE SET updated_ms = excluded.updated_ms",
        params![key, now_ms as i64],
    )
    .map_err(sql_err)?;
    Ok(())
}

/// Deletes the grants of owners that last registered them before `before_ms`: their
/// mailboxes open again (sender shares) until they come back and register.
pub(super) fn expire(sp: &Connection, before_ms: u64) -> Result<(), OpError> {
    sp.execute(
        "DELETE FROM deposit_grant WHERE owner IN
           (SELECT owner FROM grant_owner WHERE updated_ms < ?1)",
        params![before_ms as i64],
    )
    .and_then(|_| {
        sp.execute(
            "DELETE FROM grant_owner WHERE updated_ms < ?1",
            params![before_ms as i64],
        )
    })
    .map(|_| ())
    .map_err(sql_err)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use libp2p::PeerId;
    use tokio::sync::oneshot;

    use super::super::{Op, Storage, test_settings as settings};
    use crate::server::metrics::Metrics;

    #[tokio::test]
    async fn grants_are_replaced_loaded_and_expire_when_not_refreshed() {
        let dir = tempfile::tempdir().unwrap();
        let st = settings(8);
        let (storage, loaded) =
            Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
        assert!(loaded.grants.is_empty());
        let h = storage.handle();
        let (a, b) = (PeerId::random(), PeerId::random());
        for (owner, hashes, now_ms) in [
            (a, vec![[1; 32], [2; 32]], 1_000),
            (a, vec![[3; 32]], 2_000),
            (b, vec![], 50_000),
        ] {
            let (reply, rx) = oneshot::channel();
            h.submit_wait(Op::SetGrants {
                owner,
                hashes,
                now_ms,
                reply,
            })
            .await
            .unwrap();
            rx.await.unwrap().unwrap();
        }
        storage.close().await;
        drop(h);
        let (storage, loaded) =
            Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
        let mut g = loaded.grants.clone();
        g.sort_by_key(|(_, _, t)| *t);
        assert_eq!(g, vec![(a, vec![[3; 32]], 2_000), (b, vec![], 50_000)]);
        // Idle for longer than 10 s: a's grants go, b's (refreshed at 50 s) stay.
        let h = storage.handle();
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Expire {
            now_ms: 55_000,
            reply,
        })
        .await
        .unwrap();
        rx.await.unwrap().unwrap();
        storage.close().await;
        drop(h);
        let (_storage, loaded) =
            Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
        assert_eq!(loaded.grants, vec![(b, vec![], 50_000)]);
    }
}
