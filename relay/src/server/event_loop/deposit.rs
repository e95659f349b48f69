//! Deposits, from `Deposit` requests and from deposit streams: checks (size, grants,
//! introductions, quota, rate), the hand-off to the storage writer, refusals and the
//! penalties of peers that keep depositing where they may not.
//!
//! Uses `admission` and `answer`; its completions are handled in `completion`.

use std::{
    collections::HashSet,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use libp2p::PeerId;
use tokio::sync::oneshot;

use super::{Completion, EventLoop, Proto, answer::busy, await_reply, now_ms};
use crate::{
    server::{
        deposits::{self, Answer},
        metrics::Metrics,
        quota::Share,
        storage,
    },
    wire::{ErrorCode, Rejection, mailbox},
};

impl EventLoop {
    /// Refuses a deposit of `peer`. A refusal that counts against it (`IntroFull`,
    /// `NoGrant`: see `penalty.rs`) is answered only after about a second
    /// (`penalty::hold`): each request costs the relay work even when refused, and so a peer
    /// that keeps depositing where it may not can have each of its streams refused about
    /// once a second (until it is banned), rather than as fast as the relay can answer. An honest node backs off for
    /// longer than that after such a refusal anyway, and its other requests are not held.
    pub(super) fn refuse_stranger(&mut self, peer: PeerId, channel: Answer, rejection: Rejection) {
        // Refused now, whenever the answer goes: what follows it on its stream is fenced.
        if let Answer::Stream(reply) = &channel {
            reply.refused();
        }
        let delay = self.penalize(peer, rejection.code);
        if delay.is_zero() {
            return self.refuse(channel, rejection);
        }
        self.pending.push(Box::pin(async move {
            tokio::time::sleep(delay).await;
            Completion::Refuse { channel, rejection }
        }));
    }

    /// Counts a refusal against `peer` (see `penalty.rs`); past its allowance the peer is
    /// disconnected and banned. Returns how long to hold back its answer.
    fn penalize(&mut self, peer: PeerId, code: ErrorCode) -> Duration {
        let now = Instant::now();
        if crate::server::penalty::Penalties::counts(code) && self.penalties.refused(peer, now) {
            self.metrics.peers_banned.fetch_add(1, Relaxed);
            // Its new connections are refused at the end of their handshake from now on.
            let until = now + Duration::from_secs(self.cfg.rate.ban_secs);
            self.swarm
                .behaviour_mut()
                .limits
                .gate()
                .ban(peer, until, now);
            tracing::info!(%peer, "banned for repeated deposits without a grant");
            let _ = self.swarm.disconnect_peer_id(peer);
            return Duration::ZERO;
        }
        if !crate::server::penalty::Penalties::counts(code) {
            return Duration::ZERO;
        }
        self.holds += 1;
        crate::server::penalty::hold(self.holds)
    }

    /// A deposit from a deposit stream: admitted and served like a `Deposit` request.
    pub(super) fn on_stream_deposit(&mut self, note: deposits::Note) {
        self.metrics.stream_deposits.fetch_add(1, Relaxed);
        let deposits::Note { peer, frame, reply } = note;
        let answer = Answer::Stream(reply);
        match self.admit(peer) {
            Ok(()) => {}
            Err(Some(rejection)) => return self.refuse(answer, rejection),
            // Dropped unanswered (the peer is cut off): not stored, so fenced like a refusal.
            Err(None) => {
                if let Answer::Stream(reply) = &answer {
                    reply.refused();
                }
                return;
            }
        }
        match mailbox::Request::decode(&frame) {
            Ok(req) => self.on_deposit(peer, req, answer),
            Err(e) => {
                tracing::debug!(%peer, error = %e, "bad deposit frame");
                self.refuse(answer, Rejection::new(ErrorCode::for_decode_error(&e)));
            }
        }
    }

    /// Answers a deposit, on whatever it came.
    pub(super) fn answer(&mut self, answer: Answer, resp: mailbox::Response) {
        match answer {
            Answer::Request(channel) => self.respond_mailbox(channel, resp),
            Answer::Stream(reply) => reply.send(resp),
        }
    }

    /// Refuses a deposit (counted in the metrics), on whatever it came.
    pub(super) fn refuse(&mut self, answer: Answer, rejection: Rejection) {
        match answer {
            Answer::Request(channel) => self.reject(Proto::Mailbox, channel, rejection),
            Answer::Stream(reply) => {
                reply.refused();
                self.metrics.reject(rejection.code);
                reply.send(mailbox::Response::Error(rejection));
            }
        }
    }

    /// Serves a deposit (a `Deposit` request or a deposit from a stream; anything else is
    /// refused as `BadRequest`).
    pub(super) fn on_deposit(&mut self, peer: PeerId, req: mailbox::Request, channel: Answer) {
        let m = &self.cfg.mailbox;
        match req {
            mailbox::Request::Deposit {
                recipients,
                ttl_secs,
                ciphertext,
                tokens,
                follows,
            } => {
                // Behind its stream's fence: refused before it costs anything if the
                // deposit it follows was refused.
                let fenced = match &channel {
                    Answer::Stream(reply) => Some(reply.fenced(follows)),
                    Answer::Request(_) => None,
                };
                if let Some(f) = &fenced {
                    if f.malformed() {
                        return self.refuse(channel, Rejection::new(ErrorCode::BadRequest));
                    }
                    if f.blocked() {
                        return self.refuse(channel, Rejection::new(ErrorCode::OutOfOrder));
                    }
                }
                if ciphertext.len() > m.max_ciphertext_bytes {
                    return self.refuse(channel, Rejection::new(ErrorCode::TooLarge));
                }
                if recipients.is_empty()
                    || recipients.len() > m.max_recipients
                    || (!tokens.is_empty() && tokens.len() != recipients.len())
                {
                    return self.refuse(channel, Rejection::new(ErrorCode::BadRequest));
                }
                let mut seen = HashSet::with_capacity(recipients.len());
                let (recipients, tokens): (Vec<PeerId>, Vec<_>) = recipients
                    .into_iter()
                    .zip(tokens.into_iter().map(Some).chain(std::iter::repeat(None)))
                    .filter(|(r, _)| seen.insert(*r))
                    .map(|(r, t)| (r, t.flatten()))
                    .unzip();
                if let Err(wait) =
                    self.deposits
                        .take(&peer, deposit_cost(recipients.len()), Instant::now())
                {
                    return self.refuse(
                        channel,
                        Rejection {
                            code: ErrorCode::RateLimited,
                            retry_after_ms: Some(wait.as_millis() as u64 + 1),
                        },
                    );
                }
                let presence = &self.presence;
                let admitted = match self
                    .grants
                    .admit(recipients, &tokens, |owner| presence.allows(owner, &peer))
                {
                    Ok(a) => a,
                    Err(code) => {
                        return self.refuse(channel, Rejection::new(code));
                    }
                };
                for r in &admitted.refused {
                    self.metrics.reject(r.code);
                }
                if admitted.to.is_empty() {
                    return self.refuse_stranger(peer, channel, Rejection::new(ErrorCode::NoGrant));
                }
                let refused_early = admitted.refused;
                if let Some(f) = fenced.as_ref().filter(|_| !refused_early.is_empty()) {
                    f.refused();
                }
                let recipients = admitted.to;
                let intro_to = match recipients.as_slice() {
                    [(r, Share::Intro)] if refused_early.is_empty() => Some(*r),
                    _ => None,
                };
                if let Some(r) = intro_to {
                    let now = Instant::now();
                    // Refused from memory, or because strangers are introducing themselves
                    // to this mailbox faster than it takes introductions: either costs no
                    // trip to storage. Remembered, so the sender's next tries are cheap too.
                    let full = self.intro_full.full(&r, &peer, now);
                    if full || self.intro_rate.take(&r, 1.0, now).is_err() {
                        if !full {
                            self.intro_full.note(r, peer, now);
                        }
                        return self.refuse_stranger(
                            peer,
                            channel,
                            Rejection::new(ErrorCode::IntroFull),
                        );
                    }
                }
                let ttl = ttl_secs
                    .map_or(m.ttl_secs, |t| u64::from(t).min(m.ttl_secs))
                    .max(1);
                let intro_ttl = ttl.min(m.intro_ttl_secs).max(1);
                // A place in the writer's queue first: the ids go only with one.
                let storage = self.storage.clone();
                let slot = match storage.try_deposit_slot() {
                    Ok(slot) => slot,
                    Err(e) => return self.refuse(channel, busy(e)),
                };
                let now = now_ms();
                let ciphertext = ciphertext.into_vec();
                let size = ciphertext.len();
                let first_id = slot.reserve_ids(recipients.len());
                // Listening recipients get the message now, with the id its entry will have
                // (its place in the writer's queue is taken, so it will be stored unless
                // storage refuses it; the sender is still acknowledged only after the
                // commit). An introduction waits for storage, which may refuse it: its
                // share is the one strangers fill.
                let mut intro_live = None;
                let mut pushed = false;
                for (id, (r, share)) in (first_id..).zip(&recipients) {
                    if !self.listening.contains(r) {
                        continue;
                    }
                    if *share == Share::Intro {
                        intro_live = Some(Box::new((now, ciphertext.clone())));
                    } else {
                        self.deliver(*r, id, peer, now, &ciphertext, false);
                        pushed = true;
                    }
                }
                // A deposit from a stream whose answer needs nothing more of this loop
                // (no introduction, whose refusal is remembered and penalized here and
                // which a listening recipient gets after the commit; no recipient to wake
                // through its push endpoint) is answered as soon as it is on disk, from the
                // flusher's thread: no trip back through this loop.
                let direct = recipients
                    .iter()
                    .all(|(r, s)| *s != Share::Intro && !self.push_registered.contains(r));
                let (reply, waiting) = match channel {
                    Answer::Stream(reply) if direct => (
                        storage::DepositReply::Direct(Box::new(StreamAnswer {
                            reply,
                            refused: refused_early,
                            size,
                            metrics: self.metrics.clone(),
                        })),
                        None,
                    ),
                    channel => {
                        let (tx, rx) = oneshot::channel();
                        (tx.into(), Some((channel, refused_early, rx)))
                    }
                };
                let op = storage::Op::Deposit {
                    sender: peer,
                    recipients,
                    ciphertext,
                    now_ms: now,
                    expires_ms: now.saturating_add(ttl.saturating_mul(1000)),
                    intro_expires_ms: now.saturating_add(intro_ttl.saturating_mul(1000)),
                    first_id,
                    fenced,
                    reply,
                };
                // Waking the writer now would delay the pushes on a small machine: the
                // deposit is queued right after them (`storage::handoff`).
                if pushed {
                    slot.send_after_ready_tasks(op);
                } else {
                    slot.send(op);
                }
                if let Some((channel, refused, rx)) = waiting {
                    self.pending.push(Box::pin(async move {
                        Completion::Deposit {
                            channel,
                            sender: peer,
                            intro_to,
                            size,
                            refused,
                            intro_live,
                            result: await_reply(rx).await,
                        }
                    }));
                }
            }
            _ => self.refuse(channel, Rejection::new(ErrorCode::BadRequest)),
        }
    }
}

/// A stream deposit answered where its result is known (`storage::Answerer`): as its
/// completion in the loop would answer it, which for such a deposit needs none of the loop's
/// state (a failure of a deposit with no introduction in it is never penalized).
struct StreamAnswer {
    reply: deposits::StreamReply,
    /// Recipients refused before storage.
    refused: Vec<mailbox::Refusal>,
    size: usize,
    metrics: Arc<Metrics>,
}

impl storage::Answerer for StreamAnswer {
    fn stored(self: Box<Self>, d: storage::Deposited) {
        let (response, _) = deposited(&self.metrics, self.size, self.refused, d);
        self.reply.send(response);
    }

    fn failed(self: Box<Self>, e: storage::OpError) {
        let rejection = busy(e);
        self.metrics.reject(rejection.code);
        self.reply.send(mailbox::Response::Error(rejection));
    }
}

/// Counts a stored deposit of `size` bytes in the metrics; its answer (with `refused`, the
/// recipients refused before storage) and the mailboxes it sits in.
pub(super) fn deposited(
    metrics: &Metrics,
    size: usize,
    refused: Vec<mailbox::Refusal>,
    d: storage::Deposited,
) -> (mailbox::Response, Vec<storage::Stored>) {
    metrics.deposits.fetch_add(1, Relaxed);
    metrics
        .deposit_recipients
        .fetch_add(d.stored.len() as u64, Relaxed);
    metrics.deposit_bytes.fetch_add(size as u64, Relaxed);
    let response = mailbox::Response::Deposited {
        message: d.message,
        recipients: d.stored.len() as u32,
        refused: refused.into_iter().chain(d.refused).collect(),
    };
    (response, d.stored)
}

/// Deposit tokens a deposit for `recipients` mailboxes costs: one for the stored message and
/// a fiftieth for each further mailbox that refers to it. A group message to 500 members
/// costs about 11, not 500: the relay stores it once, and every mailbox it lands in still has
/// its own quota.
pub(crate) fn deposit_cost(recipients: usize) -> f64 {
    1.0 + recipients.saturating_sub(1) as f64 / FANOUT_REFERENCES_PER_TOKEN
}

/// Further mailboxes of one deposit that cost one deposit token.
const FANOUT_REFERENCES_PER_TOKEN: f64 = 50.0;
