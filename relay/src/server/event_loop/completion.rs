//! Completions: the storage writer's replies (and held refusals, expiry
//! sweeps) turned into answers, metrics and live deliveries.
//!
//! Uses `answer`, `deposit` (answering and refusing deposits) and `live` (delivery).

use std::{sync::atomic::Ordering::Relaxed, time::Instant};

use super::{Completion, EventLoop, Proto, answer::busy, deposit::deposited};
use crate::{
    server::push,
    wire::{ErrorCode, mailbox, presence as pw},
};

impl EventLoop {
    pub(super) fn on_completion(&mut self, done: Completion) {
        match done {
            Completion::Refuse { channel, rejection } => self.refuse(channel, rejection),
            Completion::Deposit {
                channel,
                sender,
                intro_to,
                size,
                refused,
                intro_live,
                result,
            } => match result {
                Ok(d) => {
                    let (response, stored) = deposited(&self.metrics, size, refused, d);
                    self.answer(channel, response);
                    // Listening recipients had the message when it was queued, but for
                    // an introduction, which they have now. Mail from strangers wakes
                    // nobody: it waits for the next time the device is online anyway.
                    for st in stored {
                        if st.intro
                            && let Some(live) = &intro_live
                            && self.listening.contains(&st.peer)
                        {
                            let (deposited_ms, ciphertext) = &**live;
                            self.deliver(st.peer, st.id, sender, *deposited_ms, ciphertext, true);
                        }
                        if !st.intro
                            && !self.listening.contains(&st.peer)
                            && self.push_registered.contains(&st.peer)
                        {
                            self.push.send(push::Command::Mail {
                                peer: st.peer,
                                unread: st.depth,
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "deposit failed");
                    let rejection = busy(e);
                    if rejection.code == ErrorCode::IntroFull
                        && let Some(owner) = intro_to
                    {
                        self.intro_full.note(owner, sender, Instant::now());
                    }
                    self.refuse_stranger(sender, channel, rejection);
                }
            },
            Completion::Fetch { channel, result } => match result {
                Ok(page) => self.respond_mailbox(
                    channel,
                    mailbox::Response::Messages {
                        messages: page.messages,
                        more: page.more,
                    },
                ),
                Err(e) => self.reject(Proto::Mailbox, channel, busy(e)),
            },
            Completion::Ack { channel, result } => match (result, channel) {
                (Ok(removed), channel) => {
                    self.metrics.acked.fetch_add(u64::from(removed), Relaxed);
                    if let Some(channel) = channel {
                        self.respond_mailbox(channel, mailbox::Response::Acked { removed });
                    }
                }
                (Err(e), Some(channel)) => self.reject(Proto::Mailbox, channel, busy(e)),
                (Err(e), None) => tracing::debug!(error = %e, "live acknowledgement failed"),
            },
            Completion::SetPush {
                channel,
                peer,
                url,
                result,
            } => match result {
                Ok(()) => {
                    if url.is_some() {
                        self.push_registered.insert(peer);
                    } else {
                        self.push_registered.remove(&peer);
                    }
                    self.push.send(push::Command::Register { peer, url });
                    self.respond_mailbox(channel, mailbox::Response::Ok);
                }
                Err(e) => self.reject(Proto::Mailbox, channel, busy(e)),
            },
            Completion::SetAllow {
                channel,
                peer,
                viewers,
                result,
            } => match result {
                Ok(()) => {
                    self.presence.set_allow(peer, &viewers);
                    self.respond_presence(channel, pw::Response::Ok);
                }
                Err(e) => self.reject(Proto::Presence, channel, busy(e)),
            },
            Completion::Directory { channel, response } => {
                self.respond_directory(channel, response)
            }
            Completion::SetGrants {
                channel,
                peer,
                hashes,
                now_ms,
                result,
            } => match result {
                Ok(()) => {
                    self.grants.set(peer, hashes, now_ms);
                    self.respond_mailbox(channel, mailbox::Response::Ok);
                }
                Err(e) => self.reject(Proto::Mailbox, channel, busy(e)),
            },
            Completion::Usage { channel, result } => match result {
                Ok(u) => self.respond_mailbox(channel, mailbox::Response::Usage(u)),
                Err(e) => self.reject(Proto::Mailbox, channel, busy(e)),
            },
            Completion::DevicesExpired(result) => match result {
                Ok(gone) => {
                    if !gone.is_empty() {
                        tracing::info!(
                            devices = gone.len(),
                            "registrations of quiet devices expired"
                        );
                    }
                    for peer in gone {
                        self.presence.set_allow(peer, &[]);
                        if self.push_registered.remove(&peer) {
                            self.push.send(push::Command::Register { peer, url: None });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "expiring quiet devices failed"),
            },
            Completion::Expired(result) => match result {
                Ok(n) => {
                    self.metrics.expired.fetch_add(n, Relaxed);
                    if n > 0 {
                        tracing::debug!(expired = n, "expired mailbox entries");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "expiry sweep failed"),
            },
        }
    }
}
