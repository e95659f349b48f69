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
pub(super) mod tests;
