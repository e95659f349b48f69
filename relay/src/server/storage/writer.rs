//! The writer thread: it takes operations in batches, runs each in a savepoint of one
//! transaction, commits, and hands the answers to the flusher (`sync`), which sends them
//! once the commit is on disk; it keeps every mailbox's fill level in memory, and refuses
//! what stores more while free disk space is below the reserve.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Instant,
};

use libp2p::PeerId;
use rusqlite::Connection;
use tokio::sync::mpsc;

use super::{
    Claimed, DepositReply, Deposited, Op, OpError, Page, Settings,
    checkpoint::{self, Restart},
    dht, directory, grants, mailbox,
    op::Reply,
    presence, schema, sql_err,
    sync::{Committed, Flusher},
};
use crate::server::{
    fence::Fenced,
    metrics::Metrics,
    now_ms,
    quota::{Counters, Delta, Usage},
};
use crate::wire::mailbox as wire_mailbox;

/// The writer thread's state.
pub(super) struct Writer {
    conn: Connection,
    /// The data directory (its file system's free space is checked against the reserve).
    dir: PathBuf,
    /// Whether free space was below the reserve, and when that was last looked at.
    low: (bool, Option<Instant>),
    /// Committed fill level of every non-empty mailbox and share in one.
    usage: Counters<Usage>,
    /// Which entries each mailbox holds.
    index: mailbox::Index,
    /// The highest mailbox id issued (perhaps in a transaction that was rolled back: ids
    /// may skip, never repeat).
    issued: u64,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// Where committed answers wait for the disk.
    flusher: Flusher,
    /// The checkpointer's requests to start the log over.
    restart: Restart,
}

/// An applied operation waiting for its commit to reach the disk to send its reply.
pub(super) enum Done {
    /// With the deposit's place behind its stream's fence, marked refused as soon as the
    /// deposit is (`Committed` answers after the commit, and what follows it on its stream
    /// may be in the next transaction).
    Deposit(DepositReply, Result<Deposited, OpError>, Option<Fenced>),
    Fetch(Reply<Page>, Result<Page, OpError>),
    Count(Reply<u32>, Result<u32, OpError>),
    Expired(Reply<u64>, Result<u64, OpError>),
    Unit(Reply<()>, Result<(), OpError>),
    Bytes(Reply<Option<Vec<u8>>>, Result<Option<Vec<u8>>, OpError>),
    Claim(Reply<Option<Claimed>>, Result<Option<Claimed>, OpError>),
    Usage(
        Reply<wire_mailbox::Usage>,
        Result<wire_mailbox::Usage, OpError>,
    ),
    Peers(Reply<Vec<PeerId>>, Result<Vec<PeerId>, OpError>),
    None,
}

impl Done {
    /// The error this operation ended with, if any.
    fn error(&self) -> Option<OpError> {
        match self {
            Done::Deposit(_, Err(e), _) | Done::Fetch(_, Err(e)) => Some(e.clone()),
            Done::Count(_, Err(e)) | Done::Expired(_, Err(e)) | Done::Unit(_, Err(e)) => {
                Some(e.clone())
            }
            _ => None,
        }
    }

    /// Sends the reply: the operation's result, or `commit_error` if its commit failed.
    pub(super) fn send(self, commit_error: Option<&OpError>) {
        fn go<T>(reply: Reply<T>, result: Result<T, OpError>, commit_error: Option<&OpError>) {
            let r = match commit_error {
                Some(e) => Err(e.clone()),
                None => result,
            };
            // The requester may have given up (connection closed); nothing to do then.
            let _ = reply.send(r);
        }
        match self {
            Done::Deposit(r, v, _) => r.send(match commit_error {
                Some(e) => Err(e.clone()),
                None => v,
            }),
            Done::Fetch(r, v) => go(r, v, commit_error),
            Done::Count(r, v) => go(r, v, commit_error),
            Done::Expired(r, v) => go(r, v, commit_error),
            Done::Unit(r, v) => go(r, v, commit_error),
            Done::Bytes(r, v) => go(r, v, commit_error),
            Done::Claim(r, v) => go(r, v, commit_error),
            Done::Usage(r, v) => go(r, v, commit_error),
            Done::Peers(r, v) => go(r, v, commit_error),
            Done::None => {}
        }
    }
}

impl Writer {
    /// The writer of `conn`, whose mailboxes hold `usage` and the entries of `index`, and
    /// which issued mailbox ids up to `issued`.
    pub(super) fn new(
        conn: Connection,
        dir: PathBuf,
        (usage, index, issued): (Counters<Usage>, mailbox::Index, u64),
        settings: Settings,
        metrics: Arc<Metrics>,
        (flusher, restart): (Flusher, Restart),
    ) -> Self {
        Writer {
            conn,
            dir,
            low: (false, None),
            usage,
            index,
            issued,
            settings,
            metrics,
            flusher,
            restart,
        }
    }

    /// Takes operations until [`Op::Shutdown`] or until every sender is gone.
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut batch = Vec::with_capacity(self.settings.max_batch);
        let mut stop = false;
        while let Some(op) = rx.blocking_recv() {
            batch.push(op);
            while batch.len() < self.settings.max_batch {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            if let Some(i) = batch.iter().position(|op| matches!(op, Op::Shutdown)) {
                for later in batch.drain(i..) {
                    fail(later, &OpError::Closed);
                }
                stop = true;
            }
            if !batch.is_empty() {
                self.process(&mut batch);
            }
            if stop {
                break;
            }
        }
        rx.close();
        while let Ok(op) = rx.try_recv() {
            fail(op, &OpError::Closed);
        }
        // Everything committed is flushed and answered before the writer is done.
        self.flusher.finish();
        tracing::debug!("storage writer finished its queue");
    }

    /// Commits `batch` in as few transactions as possible. SQLite rolls a whole
    /// transaction back by itself on some errors (a full disk among them); then the
    /// operations applied so far are answered with the error and the rest go on in a
    /// fresh transaction, so acks that free space still work on a full disk.
    fn process(&mut self, batch: &mut Vec<Op>) {
        if self.restart.wanted() {
            self.copy_tail();
        }
        let mut queue: std::collections::VecDeque<Op> = batch.drain(..).collect();
        while !queue.is_empty() {
            self.process_some(&mut queue);
        }
    }

    /// Copies back what the checkpointer left in the log, between two transactions, so that
    /// the next one starts the log over (see [`Restart`]). Asks again if something kept it
    /// from copying everything (the checkpointer's own pass, a reader).
    fn copy_tail(&mut self) {
        match checkpoint::pass(&self.conn) {
            Ok((log, copied)) => {
                if copied < log {
                    self.restart.ask();
                } else {
                    self.metrics.log_restarts.fetch_add(1, Relaxed);
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "checkpoint failed");
                self.restart.ask();
            }
        }
    }

    /// Whether free disk space is below the reserve (looked at most once a second).
    fn disk_low(&mut self) -> bool {
        if self.settings.reserve_bytes == 0 {
            return false;
        }
        let now = Instant::now();
        if self
            .low
            .1
            .is_none_or(|t| now.duration_since(t) >= DISK_CHECK_INTERVAL)
        {
            let free = crate::server::blobs::disk::free_bytes(&self.dir).unwrap_or(u64::MAX);
            self.low = (free < self.settings.reserve_bytes, Some(now));
        }
        self.low.0
    }

    fn process_some(&mut self, queue: &mut std::collections::VecDeque<Op>) {
        let started = Instant::now();
        let low = self.disk_low();
        let mut done = Vec::with_capacity(queue.len());
        let mut delta = Delta::default();
        let issued_before = self.issued;
        let changes_before = self.conn.total_changes();
        let tx = match self.conn.transaction() {
            Ok(tx) => tx,
            Err(e) => {
                let err = sql_err(e);
                for op in queue.drain(..) {
                    fail(op, &err);
                }
                return;
            }
        };
        let mut aborted = None;
        while let Some(op) = queue.pop_front() {
            // Below the disk reserve nothing that stores more is taken; what frees space
            // (acks, expiry) and reads go on, so mailboxes drain.
            if low && op.grows() {
                done.push(refuse(op, &OpError::Full));
                continue;
            }
            let d = apply_in_savepoint(
                &tx,
                op,
                (&self.usage, &mut delta, &mut self.index),
                &mut self.issued,
                &self.settings,
            );
            if tx.is_autocommit() {
                // SQLite rolled the transaction back: nothing in it will be committed.
                aborted = Some(
                    d.error()
                        .unwrap_or(OpError::Internal("transaction rolled back".into())),
                );
                done.push(d);
                break;
            }
            done.push(d);
        }
        let n = done.len();
        // The highest id issued is stored with the entries that have it, so a restart
        // never issues one again.
        if aborted.is_none()
            && self.issued != issued_before
            && let Err(e) = schema::set_issued_seq(&tx, self.issued)
        {
            aborted = Some(sql_err(e));
        }
        let commit = match aborted {
            Some(e) => {
                drop(tx);
                Err(e)
            }
            None => tx.commit().map_err(sql_err),
        };
        match &commit {
            Ok(()) => {
                let (dm, db) = self.usage.apply(delta);
                self.metrics.add_mailbox_totals(dm, db);
            }
            Err(e) => {
                tracing::error!(error = %e, ops = n, "storage transaction failed; rolled back");
                // Every deposit in it fails: what follows them on their streams, perhaps
                // next in the queue, must not be stored before them.
                for d in &done {
                    if let Done::Deposit(_, _, Some(f)) = d {
                        f.refused();
                    }
                }
                if let Ok(u) = schema::load_usage(&self.conn) {
                    self.usage = u;
                }
                // The index took the moves of the operations that succeeded in it.
                match mailbox::Index::load(&self.conn) {
                    Ok(i) => self.index = i,
                    Err(e) => tracing::error!(error = %e, "cannot read the mailbox index again"),
                }
            }
        }
        let error = commit.err();
        self.flusher.send(Committed {
            done,
            wrote: error.is_none() && self.conn.total_changes() != changes_before,
            error,
            started,
        });
    }
}

/// How often free disk space is looked at.
const DISK_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// Most devices whose registrations one sweep deletes.
const MAX_DEVICES_PER_SWEEP: usize = 10_000;

fn fail(op: Op, err: &OpError) {
    refuse(op, err).send(None);
}

/// The answer to an operation refused with `err`, to send with the batch.
fn refuse(op: Op, err: &OpError) -> Done {
    match op {
        Op::Deposit { reply, fenced, .. } => {
            if let Some(f) = &fenced {
                f.refused();
            }
            Done::Deposit(reply, Err(err.clone()), fenced)
        }
        Op::Fetch { reply, .. } => Done::Fetch(reply, Err(err.clone())),
        Op::Ack { reply, .. } | Op::PublishPrekeys { reply, .. } => {
            Done::Count(reply, Err(err.clone()))
        }
        Op::PublishList { reply, .. } => Done::Unit(reply, Err(err.clone())),
        Op::FetchList { reply, .. } => Done::Bytes(reply, Err(err.clone())),
        Op::Claim { reply, .. } => Done::Claim(reply, Err(err.clone())),
        Op::PrekeyCount { reply, .. } => Done::Count(reply, Err(err.clone())),
        Op::Expire { reply, .. } => Done::Expired(reply, Err(err.clone())),
        Op::SetPush { reply, .. }
        | Op::SetAllowList { reply, .. }
        | Op::SetGrants { reply, .. }
        | Op::Ping { reply } => Done::Unit(reply, Err(err.clone())),
        Op::Usage { reply, .. } => Done::Usage(reply, Err(err.clone())),
        Op::ExpireDevices { reply, .. } => Done::Peers(reply, Err(err.clone())),
        Op::SetLastSeen { .. } | Op::PutDhtRecord(_) | Op::Shutdown => Done::None,
    }
}

/// Runs a cached statement that takes no parameters and returns no rows.
fn run_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// Runs one operation in a savepoint; on failure the savepoint (and the operation's usage
/// delta and index moves) is discarded and the error becomes the reply. The savepoint statements are
/// prepared once and cached, like the operations' own.
///
/// A deposit runs without one: copying every page it touches into the savepoint's journal
/// cost more than a sixth of the writer's time, and it buys nothing for a deposit. Its
/// quotas and shares refuse it before its first write; after that, what can stop it is a
/// full disk, the size limit or an I/O error, on which SQLite rolls the whole transaction
/// back by itself whether or not a savepoint is open. Should it fail after writing with
/// the transaction still open, the transaction is rolled back here, as SQLite would have:
/// nothing of it is committed, the operations applied before it in the batch are answered
/// with the error, and the rest go on in a fresh transaction (see `process_some`).
fn apply_in_savepoint(
    sp: &Connection,
    op: Op,
    (usage, delta, index): (&Counters<Usage>, &mut Delta, &mut mailbox::Index),
    issued: &mut u64,
    settings: &Settings,
) -> Done {
    let mut local = Delta::default();
    let mut moves = mailbox::Moves::default();
    let bare = matches!(op, Op::Deposit { .. });
    if !bare && let Err(e) = run_cached(sp, "SAVEPOINT op") {
        fail(op, &sql_err(e));
        return Done::None;
    }
    let (done, ok) = match op {
        Op::Deposit {
            sender,
            recipients,
            ciphertext,
            now_ms,
            expires_ms,
            intro_expires_ms,
            first_id,
            fenced,
            reply,
        } => {
            // Ids only grow, and one is never issued twice, even if the entry that had it
            // is gone (see `schema::migrate_v5`): ids not above every id issued before
            // were reserved out of order, and the deposit is refused before it writes.
            let last = first_id
                .saturating_add(recipients.len() as u64)
                .saturating_sub(1);
            if first_id <= *issued || last > i64::MAX as u64 {
                let e = OpError::Internal(format!(
                    "mailbox ids from {first_id} are not above {issued}"
                ));
                if let Some(f) = &fenced {
                    f.refused();
                }
                return Done::Deposit(reply, Err(e), fenced);
            }
            *issued = last;
            // Its stream's deposit before it was refused (here or by the event loop): it
            // would overtake that one.
            if fenced.as_ref().is_some_and(Fenced::blocked) {
                let e = OpError::Refused(crate::wire::ErrorCode::OutOfOrder);
                return Done::Deposit(reply, Err(e), fenced);
            }
            let r = mailbox::deposit(
                sp,
                sender,
                &recipients,
                &ciphertext,
                now_ms,
                (expires_ms, intro_expires_ms.min(expires_ms)),
                usage,
                (&mut *delta, &mut moves),
                settings.quota,
                first_id,
            );
            if let Err(e) = &r
                && !matches!(e, OpError::Quota(_))
            {
                // Perhaps written in part: nothing of this transaction may commit.
                abort(sp);
            }
            if let Some(f) = &fenced
                && r.as_ref().map_or(true, |d| !d.refused.is_empty())
            {
                f.refused();
            }
            let ok = r.is_ok();
            (Done::Deposit(reply, r, fenced), ok)
        }
        Op::Fetch {
            owner,
            after,
            limit,
            max_bytes,
            now_ms,
            reply,
        } => {
            let r = mailbox::fetch(sp, index, owner, after, (limit, max_bytes), now_ms);
            let ok = r.is_ok();
            (Done::Fetch(reply, r), ok)
        }
        Op::Ack { owner, ids, reply } => {
            let r = mailbox::ack(sp, owner, &ids, (&mut local, &mut moves));
            let ok = r.is_ok();
            (Done::Count(reply, r), ok)
        }
        Op::Expire { now_ms, reply } => {
            let r = mailbox::expire(sp, now_ms, (&mut local, &mut moves)).and_then(|n| {
                grants::expire(sp, now_ms.saturating_sub(settings.grant_idle_ms))?;
                dht::expire(sp, now_ms)?;
                Ok(n)
            });
            let ok = r.is_ok();
            (Done::Expired(reply, r), ok)
        }
        Op::SetPush { owner, url, reply } => {
            let r = crate::server::registrations::touch(sp, &owner.to_bytes(), now_ms())
                .map_err(sql_err)
                .and_then(|()| presence::set_push(sp, owner, url.as_deref()));
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        Op::PutDhtRecord(row) => {
            let r = dht::put(sp, &row);
            if let Err(e) = &r {
                tracing::warn!(error = %e, "cannot keep a DHT record");
            }
            (Done::None, r.is_ok())
        }
        Op::SetLastSeen { peer, ms } => {
            let r = presence::set_last_seen(sp, peer, ms);
            if let Err(e) = &r {
                tracing::warn!(error = %e, "cannot record last-seen time");
            }
            (Done::None, r.is_ok())
        }
        Op::SetAllowList {
            owner,
            viewers,
            reply,
        } => {
            let r = crate::server::registrations::touch(sp, &owner.to_bytes(), now_ms())
                .map_err(sql_err)
                .and_then(|()| presence::set_allow(sp, owner, &viewers));
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        Op::SetGrants {
            owner,
            hashes,
            now_ms,
            reply,
        } => {
            let r = crate::server::registrations::touch(sp, &owner.to_bytes(), now_ms)
                .map_err(sql_err)
                .and_then(|()| grants::set(sp, owner, &hashes, now_ms));
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        Op::ExpireDevices { before_ms, reply } => {
            let r = crate::server::registrations::expire(sp, before_ms, MAX_DEVICES_PER_SWEEP)
                .map_err(sql_err);
            let ok = r.is_ok();
            (Done::Peers(reply, r), ok)
        }
        Op::Usage { owner, reply } => {
            let r = mailbox::usage(sp, index, owner, &settings.quota);
            let ok = r.is_ok();
            (Done::Usage(reply, r), ok)
        }
        Op::Ping { reply } => (Done::Unit(reply, Ok(())), true),
        Op::PublishList {
            user,
            body,
            check,
            reply,
        } => {
            let r = directory::publish_list(sp, &user, &body, check).and_then(|()| {
                crate::server::registrations::touch_list(sp, &user, now_ms()).map_err(sql_err)
            });
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        Op::FetchList { user, reply } => {
            let r = directory::stored_list(sp, &user);
            let ok = r.is_ok();
            (Done::Bytes(reply, r), ok)
        }
        Op::PublishPrekeys {
            device,
            user,
            bundle,
            one_time,
            check,
            reply,
        } => {
            let r = directory::publish_prekeys(sp, &device, &user, &bundle, &one_time, check)
                .and_then(|n| {
                    crate::server::registrations::touch(sp, &device, now_ms()).map_err(sql_err)?;
                    Ok(n)
                });
            let ok = r.is_ok();
            (Done::Count(reply, r), ok)
        }
        Op::Claim {
            device,
            user,
            one_time,
            reply,
        } => {
            let r = directory::claim(sp, &device, &user, one_time);
            let ok = r.is_ok();
            (Done::Claim(reply, r), ok)
        }
        Op::PrekeyCount { device, reply } => {
            let r = directory::one_time_count(sp, &device);
            let ok = r.is_ok();
            (Done::Count(reply, r), ok)
        }
        Op::Shutdown => (Done::None, true),
    };
    if bare {
        if ok {
            delta.add(local);
            index.apply(moves);
        }
        return done;
    }
    if ok {
        match run_cached(sp, "RELEASE op") {
            Ok(()) => {
                delta.add(local);
                index.apply(moves);
                done
            }
            Err(e) => {
                let err = sql_err(e);
                undo(sp);
                match done {
                    Done::Deposit(r, _, f) => {
                        if let Some(f) = &f {
                            f.refused();
                        }
                        Done::Deposit(r, Err(err), f)
                    }
                    Done::Fetch(r, _) => Done::Fetch(r, Err(err)),
                    Done::Count(r, _) => Done::Count(r, Err(err)),
                    Done::Expired(r, _) => Done::Expired(r, Err(err)),
                    Done::Unit(r, _) => Done::Unit(r, Err(err)),
                    Done::Bytes(r, _) => Done::Bytes(r, Err(err)),
                    Done::Claim(r, _) => Done::Claim(r, Err(err)),
                    Done::Usage(r, _) => Done::Usage(r, Err(err)),
                    Done::Peers(r, _) => Done::Peers(r, Err(err)),
                    Done::None => Done::None,
                }
            }
        }
    } else {
        undo(sp);
        done
    }
}

/// Rolls the whole open transaction back (the caller sees it gone: `is_autocommit`).
fn abort(sp: &Connection) {
    if !sp.is_autocommit()
        && let Err(e) = sp.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "cannot roll back a failed batch");
    }
}

/// Undoes what the operation in the open savepoint wrote. If SQLite already rolled the
/// whole transaction back there is no savepoint left; if undoing fails, the whole
/// transaction is rolled back. Either way the caller sees the transaction gone
/// (`is_autocommit`) and commits nothing of it.
fn undo(sp: &Connection) {
    if sp.is_autocommit() {
        return;
    }
    if let Err(e) = run_cached(sp, "ROLLBACK TO op").and_then(|()| run_cached(sp, "RELEASE op")) {
        tracing::error!(error = %e, "cannot roll back a failed operation; dropping its batch");
        abort(sp);
    }
}
