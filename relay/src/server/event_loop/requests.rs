//! Mailbox requests other than deposits: fetch, acknowledge, push endpoint, grants, usage
//! and presence allow-lists, each handed to the storage writer.
//!
//! Uses `answer`, and `deposit` for `Deposit` requests.

use std::sync::atomic::Ordering::Relaxed;

use libp2p::{PeerId, request_response::ResponseChannel};
use tokio::sync::oneshot;

use super::{Completion, EventLoop, Proto, answer::busy, await_reply, now_ms};
use crate::{
    server::{deposits::Answer, push, storage},
    wire::{ErrorCode, Frame, Rejection, mailbox},
};

impl EventLoop {
    pub(super) fn on_mailbox(
        &mut self,
        peer: PeerId,
        req: mailbox::Request,
        channel: ResponseChannel<Frame>,
    ) {
        match req {
            req @ mailbox::Request::Deposit { .. } => {
                self.on_deposit(peer, req, Answer::Request(channel))
            }
            mailbox::Request::Fetch { after, limit } => {
                self.metrics.fetches.fetch_add(1, Relaxed);
                let now = now_ms();
                self.submit(
                    Proto::Mailbox,
                    channel,
                    |reply| storage::Op::Fetch {
                        owner: peer,
                        after,
                        limit: limit.clamp(1, mailbox::MAX_FETCH_MESSAGES),
                        max_bytes: mailbox::MAX_PAGE_BYTES,
                        now_ms: now,
                        reply,
                    },
                    |channel, result| Completion::Fetch { channel, result },
                );
            }
            mailbox::Request::Ack { ids } => {
                if ids.len() > mailbox::MAX_ACK_IDS {
                    return self.reject(
                        Proto::Mailbox,
                        channel,
                        Rejection::new(ErrorCode::BadRequest),
                    );
                }
                self.submit_ack(peer, ids, Some(channel));
            }
            mailbox::Request::Listen { enabled } => {
                if enabled && self.connections.contains_key(&peer) {
                    self.listening.insert(peer);
                } else {
                    self.listening.remove(&peer);
                }
                self.respond_mailbox(channel, mailbox::Response::Ok);
            }
            mailbox::Request::RegisterPush { url } => {
                if let Some(u) = &url
                    && let Err(e) = push::check_url(u, &self.cfg.push.allowed_prefixes)
                {
                    tracing::debug!(%peer, error = %e, "push endpoint refused");
                    let code = match e {
                        push::UrlError::TooLong => ErrorCode::TooLarge,
                        _ => ErrorCode::NotAllowed,
                    };
                    return self.reject(Proto::Mailbox, channel, Rejection::new(code));
                }
                let stored = url.clone();
                self.submit(
                    Proto::Mailbox,
                    channel,
                    |reply| storage::Op::SetPush {
                        owner: peer,
                        url: stored,
                        reply,
                    },
                    move |channel, result| Completion::SetPush {
                        channel,
                        peer,
                        url,
                        result,
                    },
                );
            }
            mailbox::Request::SetGrants { hashes } => {
                if let Err(code) = crate::server::grants::check_set(&hashes) {
                    return self.reject(Proto::Mailbox, channel, Rejection::new(code));
                }
                let hashes: Vec<[u8; 32]> = hashes.into_iter().map(|h| h.into_array()).collect();
                // Which deposits are introductions may change.
                self.intro_full.forget_owner(&peer);
                let now = now_ms();
                let stored = hashes.clone();
                self.submit(
                    Proto::Mailbox,
                    channel,
                    |reply| storage::Op::SetGrants {
                        owner: peer,
                        hashes: stored,
                        now_ms: now,
                        reply,
                    },
                    move |channel, result| Completion::SetGrants {
                        channel,
                        peer,
                        hashes,
                        now_ms: now,
                        result,
                    },
                );
            }
            mailbox::Request::Usage => {
                self.submit(
                    Proto::Mailbox,
                    channel,
                    |reply| storage::Op::Usage { owner: peer, reply },
                    |channel, result| Completion::Usage { channel, result },
                );
            }
            // Only the relay sends deliveries.
            mailbox::Request::Deliver { .. } => {
                self.reject(
                    Proto::Mailbox,
                    channel,
                    Rejection::new(ErrorCode::BadRequest),
                );
            }
        }
    }

    /// Deletes `peer`'s acknowledged mailbox entries; a request (`channel`) is answered when
    /// that is done, an acknowledgement from a live stream is not (if it is lost, the message
    /// stays in the mailbox and comes again).
    pub(super) fn submit_ack(
        &mut self,
        peer: PeerId,
        ids: Vec<u64>,
        channel: Option<ResponseChannel<Frame>>,
    ) {
        // Room is made in `peer`'s mailbox.
        self.intro_full.forget_owner(&peer);
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.storage.submit(storage::Op::Ack {
            owner: peer,
            ids,
            reply,
        }) {
            match channel {
                Some(channel) => self.reject(Proto::Mailbox, channel, busy(e)),
                None => tracing::debug!(error = %e, "storage busy; live acknowledgement dropped"),
            }
            return;
        }
        self.pending.push(Box::pin(async move {
            Completion::Ack {
                channel,
                result: await_reply(rx).await,
            }
        }));
    }
}
