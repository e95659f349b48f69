//! What handles are answered from the store and the engine's state without changing
//! anything (but read marks): messages as shown, history pages, conversations, search,
//! this device's id and status.

use std::collections::HashSet;

use libp2p::{Multiaddr, PeerId};
use tern_store::{ConversationId, MessageId, Page, Status};

use super::{Engine, hold, parse_message_id, receive, relay_peer};
use crate::{
    consts::{HISTORY_DEFAULT, HISTORY_MAX},
    envelope::ReceiptKind,
    error::NodeError,
    net::{self, DialProblem},
    types::*,
};

pub(crate) fn message_info(m: &tern_store::Message) -> MessageInfo {
    MessageInfo {
        id: m.id.to_string(),
        conversation: m.conversation.clone(),
        sender: m.sender_user.clone(),
        sender_device: m.sender_device.clone(),
        own: m.own,
        text: match &m.body {
            tern_store::Body::Media { data, .. } => crate::media::StoredMedia::decode(data)
                .map(|s| s.caption)
                .unwrap_or_default(),
            other => other.text().unwrap_or_default().to_owned(),
        },
        sent_at: m.sent_at_ms,
        received_at: m.received_at_ms,
        status: m.status.into(),
        lamport: m.lamport,
        seq: m.seq,
        gap_before: false,
        sender_name: None,
        sender_device_name: None,
        media: match &m.body {
            tern_store::Body::Media { data, .. } => crate::media::StoredMedia::decode(data)
                .ok()
                .map(|s| Box::new(crate::media::media_info(&s.media))),
            _ => None,
        },
        kind: match &m.body {
            tern_store::Body::Structured { data, .. }
                if data.starts_with(receive::UNSUPPORTED_MARK) =>
            {
                MessageKind::Unsupported
            }
            tern_store::Body::Structured { .. } => MessageKind::Membership,
            tern_store::Body::Text(_) => MessageKind::Text,
            tern_store::Body::Media { .. } => MessageKind::File,
        },
        membership: match &m.body {
            tern_store::Body::Structured { data, text } => {
                super::group::membership_info(data, text.as_deref())
            }
            _ => None,
        },
    }
}

/// What the conversation list shows of a message: its text, or for a file its name (and
/// caption).
pub(crate) fn preview(m: &MessageInfo) -> String {
    match &m.media {
        Some(f) if m.text.is_empty() => format!("\u{1f4ce} {}", f.name),
        Some(f) => format!("\u{1f4ce} {}: {}", f.name, m.text),
        None => m.text.clone(),
    }
}

/// What a relay is to this device, for what a user can do when it cannot be reached.
#[derive(Debug, Clone, Copy)]
pub(super) enum RelayRole {
    /// One of its home relays.
    Home,
    /// A relay of a contact's (or of another of the user's devices).
    Contact,
    /// A home relay removed, whose mailbox is still drained.
    Removed,
}

impl Engine {
    pub(super) fn id_info(&self) -> IdInfo {
        let key = self.me.keys.identity.public();
        let hex = tern_crypto::hex::encode(key.as_bytes());
        let fingerprint = hex
            .as_bytes()
            .chunks(8)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        IdInfo {
            user_id: self.me.user,
            device_id: self.me.device,
            name: self.me.config.name.clone(),
            fingerprint,
        }
    }

    /// This device's home relays and where each stands.
    pub(super) fn home_relay_infos(&self) -> Vec<RelayInfo> {
        self.relays
            .home_relays
            .iter()
            .map(|a| RelayInfo {
                addr: a.to_string(),
                connected: relay_peer(a).is_some_and(|p| self.relays.relay_up.contains(&p)),
                home: true,
                mailbox: relay_peer(a).and_then(|p| self.mailbox_info(p)),
                waiting: relay_peer(a).map_or(0, |p| self.waiting_at(p)),
                draining_until_ms: None,
                problem: self.dial_problem(a, RelayRole::Home),
                held: relay_peer(a).map_or_else(Vec::new, |p| self.held_at(p)),
            })
            .collect()
    }

    /// Why the relay at `addr`, which is `role` to this device, is not connected, if its
    /// last dial failed; with what the user can do about it.
    pub(super) fn dial_problem(&self, addr: &Multiaddr, role: RelayRole) -> Option<String> {
        let peer = relay_peer(addr)?;
        if self.relays.relay_up.contains(&peer) {
            return None;
        }
        Some(match self.relays.dial_problems.get(&peer)? {
            DialProblem::OtherIdentity(other) => {
                let base: Multiaddr = addr
                    .iter()
                    .filter(|p| !matches!(p, libp2p::multiaddr::Protocol::P2p(_)))
                    .collect();
                let what = match role {
                    RelayRole::Home => format!(
                        "if it is still your relay, add it again (`tern relay add {base}/p2p/{other}`) \
                         and remove this address"
                    ),
                    RelayRole::Contact => {
                        "its users have to add it again under its new identity".to_owned()
                    }
                    RelayRole::Removed => "if so, nothing is left there to drain".to_owned(),
                };
                format!(
                    "it answers as {other}, not as the relay this address names (a relay that \
                     lost its data directory starts with a new identity): {what}"
                )
            }
            DialProblem::Unreachable(cause) => format!("cannot connect: {cause}"),
        })
    }

    /// Why lanes at `relay` wait: the codes it stopped them with, each once, sorted.
    pub(super) fn held_at(&self, relay: PeerId) -> Vec<String> {
        let codes: std::collections::BTreeSet<&str> = self
            .outbox
            .held
            .iter()
            .filter(|((device, r), _)| {
                // Rows of the lane still wait there (a device revoked or a relay left
                // since has none).
                *r == Some(relay)
                    && self
                        .store
                        .lane_at(device, &relay.to_string(), 1)
                        .is_ok_and(|rows| !rows.is_empty())
            })
            .map(|(_, code)| *code)
            .collect();
        codes.into_iter().map(str::to_owned).collect()
    }

    /// Outbox rows `relay` has not taken, for the users who keep a mailbox there.
    pub(super) fn waiting_at(&self, relay: PeerId) -> u64 {
        let untaken = match self.store.untaken_at(&relay.to_string()) {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!("reading the outbox failed: {e}");
                return 0;
            }
        };
        untaken
            .into_iter()
            .filter(|(user, _)| {
                tern_crypto::UserId::from_hex(user)
                    .and_then(|u| self.known(&u))
                    .is_some_and(|c| c.relay_peers().contains(&relay))
            })
            .map(|(_, n)| n)
            .sum()
    }

    pub(super) fn status_info(
        &self,
        peers: Vec<net::PeerConnections>,
    ) -> Result<StatusInfo, NodeError> {
        let outbox = self.store.outbox_depth()?;
        // Home relays, then drained ones (never home relays too: adding one ends its drain),
        // then contacts' relays not listed yet.
        let mut seen: HashSet<PeerId> = self.mailbox_relay_peers().into_iter().collect();
        let mut relays = self.home_relay_infos();
        relays.extend(self.draining_infos());
        for c in self.people.contacts.values() {
            for a in &c.relays {
                if let Some(p) = relay_peer(a)
                    && seen.insert(p)
                {
                    relays.push(RelayInfo {
                        addr: a.to_string(),
                        connected: self.relays.relay_up.contains(&p),
                        home: false,
                        mailbox: None,
                        waiting: self.waiting_at(p),
                        draining_until_ms: None,
                        problem: self.dial_problem(a, RelayRole::Contact),
                        held: self.held_at(p),
                    });
                }
            }
        }
        Ok(StatusInfo {
            user_id: self.me.user,
            device_id: self.me.device,
            status: if self.relays.away { "away" } else { "online" }.into(),
            relays,
            listen: self.relays.listen.iter().map(ToString::to_string).collect(),
            outbox,
            recovery: {
                let (strangers_waiting, stranger_devices) = self.store.quarantine_summary()?;
                RecoveryInfo {
                    group_waiting: self.store.group_stash_len()?,
                    strangers_waiting,
                    stranger_devices,
                    ..self.inbox.recovery
                }
            },
            history: self.history_info()?,
            unread: self.store.unread_total()?,
            push: self.push_info(),
            peers: peers
                .into_iter()
                .map(|p| PeerInfo {
                    user_id: self
                        .people
                        .device_owner
                        .get(&p.peer)
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    device_id: p.peer.to_string(),
                    direct: p.direct,
                    relayed: p.relayed,
                })
                .collect(),
        })
    }

    /// The newest `limit` hits (20 unless said; 1 to [`HISTORY_MAX`]).
    pub(super) fn search(
        &self,
        query: &str,
        limit: Option<u32>,
    ) -> Result<Vec<SearchHitInfo>, NodeError> {
        let limit = limit.map(|l| l.clamp(1, HISTORY_MAX));
        let results = self.store.search(query, None, limit)?;
        Ok(results
            .hits
            .into_iter()
            .map(|h| SearchHitInfo {
                conversation: h.conversation,
                id: h.message_id.to_string(),
                snippet: h
                    .snippet
                    .iter()
                    .map(|p| {
                        if p.highlighted {
                            format!("[{}]", p.text)
                        } else {
                            p.text.clone()
                        }
                    })
                    .collect(),
            })
            .collect())
    }

    pub(super) fn conversations(&self) -> Result<Vec<ConversationInfo>, NodeError> {
        let page = self.store.conversations(None, crate::consts::HISTORY_MAX)?;
        let now = self.clock.now_ms();
        let hold_ms = i64::try_from(crate::consts::HOLD_BACK.as_millis()).unwrap_or(0);
        page.conversations
            .into_iter()
            .map(|c| {
                // The preview never shows a message held back for a missing predecessor:
                // for a conversation active within the hold, it is the newest shown one.
                let last_text = if now.saturating_sub(c.last_activity_ms) < hold_ms {
                    let recent = self
                        .store
                        .history(&c.id, tern_store::Page::Latest, Some(20))?;
                    hold::visible(&self.store, &self.hold, &recent, now)?
                        .pop()
                        .map(|m| preview(&m))
                } else {
                    match &c.last_message {
                        Some(p) => self
                            .store
                            .message(p.id)?
                            .map(|m| preview(&message_info(&m))),
                        None => None,
                    }
                };
                Ok(ConversationInfo {
                    name: self.conversation_name(&c.id.0, c.title.as_deref()),
                    id: c.id,
                    title: c.title,
                    last_text,
                    last_activity: c.last_activity_ms,
                    unread: c.unread_count,
                })
            })
            .collect()
    }
}

impl Engine {
    pub(crate) fn history(
        &mut self,
        contact: &str,
        limit: Option<u32>,
        before: Option<&str>,
        mark_read: &MarkRead,
    ) -> Result<Vec<MessageInfo>, NodeError> {
        let user = self.resolve(contact)?;
        let conv = ConversationId::from(user);
        let page = self.page(&conv, limit, before)?;
        let read = self.mark_read_in(&conv, mark_read, true)?;
        if !read.is_empty() {
            self.send_receipt(&user, ReceiptKind::Read, read);
        }
        Ok(self.named(page))
    }

    /// A page of a conversation as shown (held messages left out, gaps marked): the newest
    /// `limit` (default 50, at most 500), or those before the message `before`.
    pub(crate) fn page(
        &self,
        conv: &ConversationId,
        limit: Option<u32>,
        before: Option<&str>,
    ) -> Result<Vec<MessageInfo>, NodeError> {
        let page = match before {
            Some(b) => Page::Before(
                parse_message_id(b).ok_or_else(|| NodeError::UnknownMessage(b.to_owned()))?,
            ),
            None => Page::Latest,
        };
        let limit = limit.unwrap_or(HISTORY_DEFAULT).clamp(1, HISTORY_MAX);
        let messages = self.store.history(conv, page, Some(limit))?;
        Ok(super::hold::visible(
            &self.store,
            &self.hold,
            &messages,
            self.clock.now_ms(),
        )?)
    }

    /// Marks read what `how` says of a conversation: all of it, or the messages named (those
    /// the reader saw; one not in the conversation is refused). For a direct conversation,
    /// read receipts are owed (in the same transaction) for the messages it marked (for
    /// "all", those among the newest [`HISTORY_MAX`]); they are returned, to send. A `read`
    /// event tells every client the unread count left.
    pub(crate) fn mark_read_in(
        &mut self,
        conv: &ConversationId,
        how: &MarkRead,
        direct: bool,
    ) -> Result<Vec<MessageId>, NodeError> {
        let received = |m: &tern_store::Message| !m.own && m.status == Status::Received;
        let (all, unread): (bool, Vec<MessageId>) = match how {
            MarkRead::Nothing => return Ok(Vec::new()),
            MarkRead::All => {
                let page = self.store.history(conv, Page::Latest, Some(HISTORY_MAX))?;
                (
                    true,
                    page.iter().filter(|m| received(m)).map(|m| m.id).collect(),
                )
            }
            MarkRead::Ids(ids) => {
                let mut unread = Vec::new();
                for id in ids {
                    let m = parse_message_id(id)
                        .map(|id| self.store.message(id))
                        .transpose()?
                        .flatten()
                        .filter(|m| &m.conversation == conv)
                        .ok_or_else(|| NodeError::UnknownMessage(id.clone()))?;
                    if received(&m) && !unread.contains(&m.id) {
                        unread.push(m.id);
                    }
                }
                (false, unread)
            }
        };
        // Nothing to mark: no write.
        if unread.is_empty() && (!all || self.store.unread_count(conv)? == 0) {
            return Ok(Vec::new());
        }
        let now = self.clock.now_ms();
        let marked = self
            .store
            .transaction(|tx| -> Result<u64, tern_store::WriteError> {
                let marked = if all {
                    tx.mark_read(conv)
                } else {
                    tx.mark_messages_read(conv, &unread)
                };
                let marked = match marked {
                    Ok(n) => n,
                    Err(tern_store::WriteError::UnknownConversation { .. }) => 0,
                    Err(e) => return Err(e),
                };
                // Owed until delivered, so a crash before that does not lose them.
                if direct && !unread.is_empty() {
                    tx.owe_receipts(conv.as_str(), tern_store::ReceiptKind::Read, &unread, now)?;
                }
                Ok(marked)
            })?;
        if marked > 0 {
            self.emit(Event::Read {
                conversation: conv.clone(),
                unread: self.store.unread_count(conv)?,
            });
        }
        Ok(if direct { unread } else { Vec::new() })
    }
}
