//! Mailbox entries: a deposit stores the ciphertext once and an entry per recipient (each
//! counted in its share), a fetch reads a page, an ack or the expiry sweep removes entries
//! (and the message with its last one); and who fills a mailbox.

use std::collections::HashMap;

use libp2p::PeerId;
use rusqlite::{Connection, OptionalExtension, params};

use super::{Deposited, OpError, Page, Quota, Share, Stored, peer, sql_err, writer::Delta};
use crate::server::quota::{self, Key, Tag, Usage};
use crate::wire::{
    ErrorCode,
    mailbox::{self, Envelope, Fill, Refusal},
};

/// Most expired entries deleted in one sweep operation, so a sweep never stalls deposits.
const MAX_EXPIRE_PER_SWEEP: i64 = 50_000;

/// Stores a deposit for the recipients its quotas and shares admit. Fails with
/// [`OpError::Quota`] before writing anything when they admit none; any other error may
/// come after a part of it is written (the caller must then drop its transaction).
#[allow(clippy::too_many_arguments)]
pub(super) fn deposit(
    sp: &Connection,
    sender: PeerId,
    recipients: &[(PeerId, Share)],
    ciphertext: &[u8],
    now_ms: u64,
    (expires_ms, intro_expires_ms): (u64, u64),
    usage: &HashMap<Key, Usage>,
    batch: &Delta,
    local: &mut Delta,
    quota: Quota,
    issued: &mut u64,
) -> Result<Deposited, OpError> {
    let size = ciphertext.len() as u64;
    let mut accepted = Vec::with_capacity(recipients.len());
    let mut refused = Vec::new();
    for (r, share) in recipients {
        let key = r.to_bytes();
        let col = quota::share_column(share, &sender);
        let intro = *share == Share::Intro;
        match quota.check(&key, &col, intro, size, |k| quota::current(usage, batch, k)) {
            Some(code) => refused.push(Refusal { peer: *r, code }),
            None => accepted.push((*r, key, col, intro)),
        }
    }
    if accepted.is_empty() {
        let code = refused.last().map_or(ErrorCode::BadRequest, |r| r.code);
        return Err(OpError::Quota(code));
    }
    sp.prepare_cached(
        "INSERT INTO message(sender, created_ms, expires_ms, refs, body) VALUES (?1, ?2, ?3, ?4, ?5)",
    )
    .and_then(|mut st| {
        st.execute(params![
            sender.to_bytes(),
            now_ms as i64,
            expires_ms as i64,
            accepted.len() as i64,
            ciphertext
        ])
    })
    .map_err(sql_err)?;
    let message = sp.last_insert_rowid();
    let mut stmt = sp
        .prepare_cached(
            "INSERT INTO mailbox(seq, owner, message, size, expires_ms, share, intro)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )
        .map_err(sql_err)?;
    let mut stored = Vec::with_capacity(accepted.len());
    for (peer, key, col, intro) in accepted {
        let expires = if intro { intro_expires_ms } else { expires_ms };
        // Ids only grow, and one is never issued twice, even if the entry that had it
        // is gone (see `schema::migrate_v5`).
        let seq = *issued + 1;
        *issued = seq;
        stmt.execute(params![
            seq as i64,
            key,
            message,
            size as i64,
            expires as i64,
            col,
            intro
        ])
        .map_err(sql_err)?;
        // Recipients are distinct, so this deposit adds one to each mailbox.
        let depth = quota::current(usage, batch, &(key.clone(), Tag::Total)).0 + 1;
        count(local, &key, Some(&col), intro, 1, size as i64);
        stored.push(Stored {
            peer,
            id: seq,
            depth,
            intro,
        });
    }
    Ok(Deposited {
        message: message as u64,
        stored,
        refused,
    })
}

/// Adds one entry's change to every counter it counts in.
fn count(local: &mut Delta, owner: &[u8], share: Option<&[u8]>, intro: bool, m: i64, b: i64) {
    for k in quota::keys(owner, share, intro) {
        let e = local.entry(k).or_default();
        e.0 += m;
        e.1 += b;
    }
}

pub(super) fn fetch(
    sp: &Connection,
    owner: PeerId,
    after: u64,
    limit: u32,
    max_bytes: usize,
    now_ms: u64,
) -> Result<Page, OpError> {
    let mut stmt = sp
        .prepare_cached(
            "SELECT m.seq, g.sender, g.created_ms, g.body, m.intro FROM mailbox m JOIN message g ON g.id = m.message
             WHERE m.owner = ?1 AND m.seq > ?2 AND m.expires_ms > ?3 ORDER BY m.seq LIMIT ?4",
        )
        .map_err(sql_err)?;
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let mut rows = stmt
        .query(params![
            owner.to_bytes(),
            after,
            now_ms as i64,
            i64::from(limit) + 1
        ])
        .map_err(sql_err)?;
    let mut messages = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    while let Some(row) = rows.next().map_err(sql_err)? {
        let body: Vec<u8> = row.get(3).map_err(sql_err)?;
        if messages.len() as u32 >= limit
            || (!messages.is_empty() && bytes + body.len() > max_bytes)
        {
            more = true;
            break;
        }
        let sender: Vec<u8> = row.get(1).map_err(sql_err)?;
        let Some(sender) = peer(&sender) else {
            return Err(OpError::Internal("stored sender is not a peer id".into()));
        };
        bytes += body.len();
        messages.push(Envelope {
            id: row.get::<_, i64>(0).map_err(sql_err)? as u64,
            sender,
            deposited_ms: row.get::<_, i64>(2).map_err(sql_err)?.max(0) as u64,
            ciphertext: serde_bytes::ByteBuf::from(body),
            intro: row.get::<_, i64>(4).map_err(sql_err)? != 0,
        });
    }
    Ok(Page { messages, more })
}

fn remove_entry(sp: &Connection, message: i64) -> Result<(), OpError> {
    sp.prepare_cached("UPDATE message SET refs = refs - 1 WHERE id = ?1")
        .and_then(|mut s| s.execute(params![message]))
        .map_err(sql_err)?;
    sp.prepare_cached("DELETE FROM message WHERE id = ?1 AND refs <= 0")
        .and_then(|mut s| s.execute(params![message]))
        .map_err(sql_err)?;
    Ok(())
}

pub(super) fn ack(
    sp: &Connection,
    owner: PeerId,
    ids: &[u64],
    local: &mut Delta,
) -> Result<u32, OpError> {
    let key = owner.to_bytes();
    let mut removed = 0u32;
    for &id in ids {
        let Ok(id) = i64::try_from(id) else { continue };
        let row: Option<(i64, i64, Option<Vec<u8>>, bool)> = sp
            .prepare_cached(
                "DELETE FROM mailbox WHERE seq = ?1 AND owner = ?2
                 RETURNING message, size, share, intro",
            )
            .and_then(|mut s| {
                s.query_row(params![id, key], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, i64>(3)? != 0))
                })
                .optional()
            })
            .map_err(sql_err)?;
        if let Some((message, size, share, intro)) = row {
            remove_entry(sp, message)?;
            count(local, &key, share.as_deref(), intro, -1, -size);
            removed += 1;
        }
    }
    Ok(removed)
}

pub(super) fn expire(sp: &Connection, now_ms: u64, local: &mut Delta) -> Result<u64, OpError> {
    let mut stmt = sp
        .prepare_cached(
            "DELETE FROM mailbox WHERE seq IN
               (SELECT seq FROM mailbox WHERE expires_ms <= ?1 LIMIT ?2)
             RETURNING owner, message, size, share, intro",
        )
        .map_err(sql_err)?;
    type Row = (Vec<u8>, i64, i64, Option<Vec<u8>>, bool);
    let rows: Vec<Row> = stmt
        .query_map(params![now_ms as i64, MAX_EXPIRE_PER_SWEEP], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get::<_, i64>(4)? != 0,
            ))
        })
        .and_then(|rows| rows.collect())
        .map_err(sql_err)?;
    for (owner, message, size, share, intro) in &rows {
        remove_entry(sp, *message)?;
        count(local, owner, share.as_deref(), *intro, -1, -size);
    }
    Ok(rows.len() as u64)
}

/// Who fills `owner`'s mailbox: totals and the largest shares.
pub(super) fn usage(sp: &Connection, owner: PeerId, q: &Quota) -> Result<mailbox::Usage, OpError> {
    let key = owner.to_bytes();
    let mut stmt = sp
        .prepare_cached(
            "SELECT share, intro, COUNT(*), SUM(size) FROM mailbox WHERE owner = ?1
             GROUP BY share, intro",
        )
        .map_err(sql_err)?;
    let rows: Vec<(Option<Vec<u8>>, bool, i64, i64)> = stmt
        .query_map(params![key], |r| {
            Ok((r.get(0)?, r.get::<_, i64>(1)? != 0, r.get(2)?, r.get(3)?))
        })
        .and_then(|rows| rows.collect())
        .map_err(sql_err)?;
    let mut u = mailbox::Usage {
        quota: Fill {
            messages: q.max_messages,
            bytes: q.max_bytes,
        },
        share_quota: Fill {
            messages: q.share_messages,
            bytes: q.share_bytes,
        },
        intro_quota: Fill {
            messages: q.intro_messages,
            bytes: q.intro_bytes,
        },
        ..mailbox::Usage::default()
    };
    let mut senders: HashMap<PeerId, Fill> = HashMap::new();
    for (share, intro, m, b) in rows {
        let f = Fill {
            messages: m.max(0) as u64,
            bytes: b.max(0) as u64,
        };
        u.total.messages += f.messages;
        u.total.bytes += f.bytes;
        if intro {
            u.intro.messages += f.messages;
            u.intro.bytes += f.bytes;
        }
        match share.as_deref() {
            Some([b'g', h @ ..]) => {
                if let Ok(h) = <[u8; 32]>::try_from(h) {
                    u.grants.push((serde_bytes::ByteArray::new(h), f));
                }
            }
            Some([b's', p @ ..]) => {
                if let Some(p) = peer(p) {
                    let e = senders.entry(p).or_default();
                    e.messages += f.messages;
                    e.bytes += f.bytes;
                }
            }
            _ => {}
        }
    }
    u.grants.sort_by_key(|g| std::cmp::Reverse(g.1.bytes));
    u.grants.truncate(mailbox::MAX_USAGE_SHARES);
    u.senders = senders.into_iter().collect();
    u.senders.sort_by_key(|s| std::cmp::Reverse(s.1.bytes));
    u.senders.truncate(mailbox::MAX_USAGE_SHARES);
    u.registered = sp
        .prepare_cached("SELECT COUNT(*) FROM deposit_grant WHERE owner = ?1")
        .and_then(|mut s| s.query_row(params![key], |r| r.get::<_, i64>(0)))
        .map_err(sql_err)?
        .max(0) as u32;
    Ok(u)
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;

    use tokio::sync::oneshot;

    use super::super::{DB_FILE, Op, Storage, StorageHandle, test_settings as settings};
    use super::*;
    use crate::server::metrics::Metrics;

    async fn deposit(
        h: &StorageHandle,
        sender: PeerId,
        to: Vec<PeerId>,
        body: &[u8],
    ) -> Result<Deposited, OpError> {
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Deposit {
            sender,
            recipients: to.into_iter().map(|p| (p, Share::Sender)).collect(),
            ciphertext: body.to_vec(),
            now_ms: 1000,
            expires_ms: 5000,
            intro_expires_ms: 5000,
            early: None,
            reply,
        })
        .await
        .unwrap();
        rx.await.unwrap()
    }

    async fn fetch(h: &StorageHandle, owner: PeerId, now_ms: u64) -> Page {
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Fetch {
            owner,
            after: 0,
            limit: 100,
            max_bytes: 1 << 20,
            now_ms,
            reply,
        })
        .await
        .unwrap();
        rx.await.unwrap().unwrap()
    }

    #[tokio::test]
    async fn fan_out_is_stored_once_and_refcounted() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::default());
        let (storage, _) = Storage::open(dir.path(), settings(10), metrics).unwrap();
        let h = storage.handle();
        let (s, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
        let d = deposit(&h, s, vec![a, b], b"hello").await.unwrap();
        assert_eq!(d.stored.len(), 2);
        let pa = fetch(&h, a, 1000).await;
        let pb = fetch(&h, b, 1000).await;
        assert_eq!(pa.messages.len(), 1);
        assert_eq!(pb.messages[0].ciphertext.as_ref(), b"hello");
        // Only the owner's ack removes the owner's entry.
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Ack {
            owner: b,
            ids: vec![pa.messages[0].id],
            reply,
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 0);
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Ack {
            owner: a,
            ids: vec![pa.messages[0].id],
            reply,
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 1);
        assert!(fetch(&h, a, 1000).await.messages.is_empty());
        assert_eq!(fetch(&h, b, 1000).await.messages.len(), 1);
        // Expired entries are hidden, then swept, and the message row goes with them.
        assert!(fetch(&h, b, 6000).await.messages.is_empty());
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Expire {
            now_ms: 6000,
            reply,
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 1);
        storage.close().await;
        drop(h);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM message", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 0);
    }

    #[tokio::test]
    async fn quota_counts_within_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let (storage, _) =
            Storage::open(dir.path(), settings(3), Arc::new(Metrics::default())).unwrap();
        let h = storage.handle();
        let (s, a) = (PeerId::random(), PeerId::random());
        let mut rxs = Vec::new();
        for _ in 0..5 {
            let (reply, rx) = oneshot::channel();
            h.submit_wait(Op::Deposit {
                sender: s,
                recipients: vec![(a, Share::Sender)],
                ciphertext: vec![1; 10],
                now_ms: 0,
                expires_ms: u64::MAX / 2,
                intro_expires_ms: u64::MAX / 2,
                early: None,
                reply,
            })
            .await
            .unwrap();
            rxs.push(rx);
        }
        let mut ok = 0;
        for rx in rxs {
            match rx.await.unwrap() {
                Ok(_) => ok += 1,
                Err(e) => assert_eq!(e.code(), ErrorCode::QuotaCount),
            }
        }
        assert_eq!(ok, 3);
    }

    /// A deposit that fails for a full database, in a batch with others, leaves nothing of
    /// itself: every stored message has all its entries, and every deposit answered as
    /// stored is (and only those).
    #[tokio::test]
    async fn a_full_database_keeps_no_part_of_a_deposit() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = settings(1_000);
        st.max_database_bytes = 256 * 1024;
        let (storage, _) = Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
        let h = storage.handle();
        let (s, a, b) = (PeerId::random(), PeerId::random(), PeerId::random());
        let mut rxs = Vec::new();
        for i in 0..100u8 {
            let (reply, rx) = oneshot::channel();
            h.submit_wait(Op::Deposit {
                sender: s,
                recipients: vec![(a, Share::Sender), (b, Share::Sender)],
                ciphertext: vec![i; 8 * 1024],
                now_ms: 0,
                expires_ms: 1_000_000,
                intro_expires_ms: 1_000_000,
                early: None,
                reply,
            })
            .await
            .unwrap();
            rxs.push(rx);
        }
        let (mut ok, mut full) = (0u64, 0);
        for rx in rxs {
            match rx.await.unwrap() {
                Ok(d) => {
                    assert_eq!(d.stored.len(), 2);
                    ok += 1;
                }
                Err(OpError::Full) => full += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(ok > 0 && full > 0, "{ok} stored, {full} refused");
        assert_eq!(usage(&h, a).await.total.messages, ok);
        assert_eq!(fetch(&h, b, 0).await.messages.len() as u64, ok);
        storage.close().await;
        drop(h);
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        let count =
            |sql: &str| -> u64 { conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64 };
        assert_eq!(count("SELECT COUNT(*) FROM message"), ok);
        assert_eq!(count("SELECT COUNT(*) FROM mailbox"), 2 * ok);
        assert_eq!(
            count(
                "SELECT COUNT(*) FROM message WHERE refs != (SELECT COUNT(*) FROM mailbox WHERE message = message.id)"
            ),
            0
        );
        assert_eq!(
            super::super::schema::load_usage(&conn).unwrap()[&(a.to_bytes(), Tag::Total)].messages,
            ok
        );
    }

    pub(in crate::server::storage) async fn deposit_as(
        h: &StorageHandle,
        sender: PeerId,
        to: PeerId,
        share: Share,
        now_ms: u64,
    ) -> Result<Deposited, OpError> {
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Deposit {
            sender,
            recipients: vec![(to, share)],
            ciphertext: vec![1; 10],
            now_ms,
            expires_ms: now_ms + 100_000,
            intro_expires_ms: now_ms + 1_000,
            early: None,
            reply,
        })
        .await
        .unwrap();
        rx.await.unwrap()
    }

    async fn usage(h: &StorageHandle, owner: PeerId) -> mailbox::Usage {
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Usage { owner, reply }).await.unwrap();
        rx.await.unwrap().unwrap()
    }

    /// Shares survive a restart (they are counted again from the stored entries), an ack
    /// frees the share it counted in, introductions expire sooner, and the owner's usage
    /// view names each share.
    #[tokio::test]
    async fn shares_are_counted_freed_and_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = settings(8);
        st.quota = Quota::new(8, 1 << 20, 50, 3, 1 << 20, 2);
        let (storage, _) = Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
        let h = storage.handle();
        let (owner, friend, stranger) = (PeerId::random(), PeerId::random(), PeerId::random());
        let g = Share::Grant([9; 32]);
        for _ in 0..4 {
            deposit_as(&h, friend, owner, g.clone(), 0).await.unwrap();
        }
        let e = deposit_as(&h, friend, owner, g.clone(), 0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ShareFull, "half of 8 is the share");
        for _ in 0..2 {
            deposit_as(&h, stranger, owner, Share::Intro, 0)
                .await
                .unwrap();
        }
        let e = deposit_as(&h, stranger, owner, Share::Intro, 0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::IntroFull, "2 per stranger");
        let u = usage(&h, owner).await;
        assert_eq!(u.total.messages, 6);
        assert_eq!(u.intro.messages, 2);
        assert_eq!(
            u.grants,
            vec![(
                serde_bytes::ByteArray::new([9; 32]),
                Fill {
                    messages: 4,
                    bytes: 40
                }
            )]
        );
        assert_eq!(
            u.senders,
            vec![(
                stranger,
                Fill {
                    messages: 2,
                    bytes: 20
                }
            )]
        );
        storage.close().await;
        drop(h);

        // Reopened: the counts come back from the entries.
        let (storage, _) = Storage::open(dir.path(), st, Arc::new(Metrics::default())).unwrap();
        let h = storage.handle();
        let e = deposit_as(&h, friend, owner, g.clone(), 0)
            .await
            .unwrap_err();
        assert_eq!(e.code(), ErrorCode::ShareFull);
        let page = fetch(&h, owner, 0).await;
        assert_eq!(page.messages.iter().filter(|m| m.intro).count(), 2);
        let first_granted = page.messages.iter().find(|m| !m.intro).unwrap().id;
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Ack {
            owner,
            ids: vec![first_granted],
            reply,
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 1);
        deposit_as(&h, friend, owner, g.clone(), 0).await.unwrap();
        // The introductions expire at 1 s, the rest later; the stranger has room again.
        let (reply, rx) = oneshot::channel();
        h.submit_wait(Op::Expire {
            now_ms: 2_000,
            reply,
        })
        .await
        .unwrap();
        assert_eq!(rx.await.unwrap().unwrap(), 2);
        deposit_as(&h, stranger, owner, Share::Intro, 2_000)
            .await
            .unwrap();
        assert_eq!(usage(&h, owner).await.total.messages, 5);
        storage.close().await;
    }
}
