//! Mailbox entries: a deposit stores the ciphertext once and an entry per recipient (each
//! counted in its share), a fetch reads a page, an ack or the expiry sweep removes entries
//! (and the message with its last one); and who fills a mailbox. Which entries a mailbox
//! holds is kept in memory (`index`).

mod index;

use std::collections::HashMap;

use libp2p::PeerId;
use rusqlite::{Connection, OptionalExtension, params};

pub(super) use index::{Index, Moves};

use super::{Deposited, OpError, Page, Quota, Share, Stored, peer, sql_err};
use crate::server::quota::{self, Counter, Counters, Delta, Usage};
use crate::wire::{
    ErrorCode,
    mailbox::{self, Envelope, Fill, Refusal},
};

/// Most expired entries deleted in one sweep operation, so a sweep never stalls deposits.
const MAX_EXPIRE_PER_SWEEP: i64 = 50_000;

/// Stores a deposit for the recipients its quotas and shares admit, the `i`th recipient's
/// entry with the id `first_id + i` (reserved for it, see `Op::Deposit`, and checked by the
/// writer to be above every id issued before), counting it straight
/// into the batch's changes (`batch`): it runs without a savepoint (see `writer`), so when
/// it fails after writing, the whole transaction and those changes are dropped. Fails with
/// [`OpError::Quota`] before writing or counting anything when they admit none; any other
/// error may come after a part of it is written (the caller must then drop its
/// transaction).
#[allow(clippy::too_many_arguments)]
pub(super) fn deposit(
    sp: &Connection,
    sender: PeerId,
    recipients: &[(PeerId, Share)],
    ciphertext: &[u8],
    now_ms: u64,
    (expires_ms, intro_expires_ms): (u64, u64),
    usage: &Counters<Usage>,
    (batch, moves): (&mut Delta, &mut Moves),
    quota: Quota,
    first_id: u64,
) -> Result<Deposited, OpError> {
    let size = ciphertext.len() as u64;
    let mut accepted = Vec::with_capacity(recipients.len());
    let mut refused = Vec::new();
    for (seq, (r, share)) in (first_id..).zip(recipients) {
        let key = r.to_bytes();
        let col = quota::share_column(share, &sender);
        let intro = *share == Share::Intro;
        match quota.check(&col, intro, size, |c| quota::current(usage, batch, &key, c)) {
            Some(code) => refused.push(Refusal { peer: *r, code }),
            None => accepted.push((*r, seq, key, col, intro)),
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
    for (peer, seq, key, col, intro) in accepted {
        let expires = if intro { intro_expires_ms } else { expires_ms };
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
        let depth = quota::current(usage, batch, &key, Counter::Total).0 + 1;
        batch.count(&key, Some(&col), intro, 1, size as i64);
        moves.add(&key, seq);
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

/// A page of `owner`'s entries above `after` that have not expired by `now_ms`: at most
/// `limit`, and at most `max_bytes` of ciphertext unless the first alone is larger.
pub(super) fn fetch(
    sp: &Connection,
    index: &Index,
    owner: PeerId,
    after: u64,
    (limit, max_bytes): (u32, usize),
    now_ms: u64,
) -> Result<Page, OpError> {
    let mut stmt = sp
        .prepare_cached(
            "SELECT g.sender, g.created_ms, g.body, m.intro, m.expires_ms
             FROM mailbox m JOIN message g ON g.id = m.message WHERE m.seq = ?1",
        )
        .map_err(sql_err)?;
    let mut messages = Vec::new();
    let mut bytes = 0usize;
    let mut more = false;
    for seq in index.after(&owner.to_bytes(), after) {
        let Ok(id) = i64::try_from(seq) else { break };
        let row = stmt
            .query_row(params![id], |r| {
                Ok((
                    r.get::<_, Vec<u8>>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                    r.get::<_, i64>(3)? != 0,
                    r.get::<_, i64>(4)?,
                ))
            })
            .optional()
            .map_err(sql_err)?;
        let Some((sender, deposited_ms, body, intro, expires_ms)) = row else {
            return Err(OpError::Internal(
                "mailbox index names a missing entry".into(),
            ));
        };
        // Expired but not swept yet: as good as gone.
        if expires_ms <= now_ms as i64 {
            continue;
        }
        if messages.len() as u32 >= limit
            || (!messages.is_empty() && bytes + body.len() > max_bytes)
        {
            more = true;
            break;
        }
        let Some(sender) = peer(&sender) else {
            return Err(OpError::Internal("stored sender is not a peer id".into()));
        };
        bytes += body.len();
        messages.push(Envelope {
            id: seq,
            sender,
            deposited_ms: deposited_ms.max(0) as u64,
            ciphertext: serde_bytes::ByteBuf::from(body),
            intro,
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
    (local, moves): (&mut Delta, &mut Moves),
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
            local.count(&key, share.as_deref(), intro, -1, -size);
            moves.remove(&key, id as u64);
            removed += 1;
        }
    }
    Ok(removed)
}

pub(super) fn expire(
    sp: &Connection,
    now_ms: u64,
    (local, moves): (&mut Delta, &mut Moves),
) -> Result<u64, OpError> {
    let mut stmt = sp
        .prepare_cached(
            "DELETE FROM mailbox WHERE seq IN
               (SELECT seq FROM mailbox WHERE expires_ms <= ?1 LIMIT ?2)
             RETURNING owner, message, size, share, intro, seq",
        )
        .map_err(sql_err)?;
    type Row = (Vec<u8>, i64, i64, Option<Vec<u8>>, bool, i64);
    let rows: Vec<Row> = stmt
        .query_map(params![now_ms as i64, MAX_EXPIRE_PER_SWEEP], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get::<_, i64>(4)? != 0,
                r.get(5)?,
            ))
        })
        .and_then(|rows| rows.collect())
        .map_err(sql_err)?;
    for (owner, message, size, share, intro, seq) in &rows {
        remove_entry(sp, *message)?;
        local.count(owner, share.as_deref(), *intro, -1, -size);
        moves.remove(owner, (*seq).max(0) as u64);
    }
    Ok(rows.len() as u64)
}

/// Who fills `owner`'s mailbox: totals and the largest shares.
pub(super) fn usage(
    sp: &Connection,
    index: &Index,
    owner: PeerId,
    q: &Quota,
) -> Result<mailbox::Usage, OpError> {
    let key = owner.to_bytes();
    let mut stmt = sp
        .prepare_cached("SELECT share, intro, size FROM mailbox WHERE seq = ?1")
        .map_err(sql_err)?;
    /// A share column and whether introductions, with its entries and bytes.
    type Groups = HashMap<(Option<Vec<u8>>, bool), (i64, i64)>;
    let mut groups = Groups::new();
    for seq in index.after(&key, 0) {
        let Ok(id) = i64::try_from(seq) else { break };
        let row = stmt
            .query_row(params![id], |r| {
                Ok((
                    r.get::<_, Option<Vec<u8>>>(0)?,
                    r.get::<_, i64>(1)? != 0,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()
            .map_err(sql_err)?;
        if let Some((share, intro, size)) = row {
            let g = groups.entry((share, intro)).or_default();
            g.0 += 1;
            g.1 += size;
        }
    }
    let rows = groups
        .into_iter()
        .map(|((share, intro), (m, b))| (share, intro, m, b));
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
