//! Group fan-outs: one ciphertext, stored once in the outbox, deposited once per relay for
//! every member device that already has the sender key (`deposit_many`); a device whose first
//! relay fails tries its others one by one. Not ordered like the lanes ([`super::lanes`]): a
//! sender key's ratchet accepts any order within its window, so a fan-out row that fails is
//! rescheduled on its own.

use std::collections::HashMap;

use libp2p::PeerId;
use tern_crypto::DeviceId;
use tern_store::{MessageId, Status};

use super::{Engine, Internal, device_peer, grants, lanes, send};
use crate::{
    consts::OUTBOX_BATCH,
    error::NodeError,
    net::{NetError, rpc},
    types::Event,
};

/// Due outbox rows of one message that share a payload: message, payload, (user, device)
/// recipients, most attempts so far.
type Fan = (MessageId, Vec<u8>, Vec<(String, String)>, u32);

/// A fan-out recipient: its device id, peer id, relays and the grant it issued.
type FanTarget = (
    String,
    PeerId,
    Vec<PeerId>,
    Option<tern_crypto::grant::Grant>,
);

impl Engine {
    /// Starts the group fan-outs that are due (`all`: every one, backoff or not): the due
    /// fan-out rows of each message go together, with its shared payload.
    pub(crate) fn dispatch_fanouts(&mut self, all: bool) {
        let now = if all { i64::MAX } else { self.clock.now_ms() };
        let due = match self.store.due_fanout(now, OUTBOX_BATCH) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("reading the outbox failed: {e}");
                return;
            }
        };
        let mut fan: Vec<Fan> = Vec::new();
        for entry in due {
            match fan.iter_mut().find(|(id, _, _, _)| *id == entry.message_id) {
                Some((_, _, to, attempts)) => {
                    to.push((
                        entry.delivery.recipient_user,
                        entry.delivery.recipient_device,
                    ));
                    *attempts = (*attempts).max(entry.attempts);
                }
                None => fan.push((
                    entry.message_id,
                    entry.delivery.payload,
                    vec![(
                        entry.delivery.recipient_user,
                        entry.delivery.recipient_device,
                    )],
                    entry.attempts,
                )),
            }
        }
        for (id, payload, to, attempts) in fan {
            self.start_fanout(id, payload, to, attempts);
        }
    }

    /// Deposits one ciphertext for many devices: one request per relay.
    pub(crate) fn start_fanout(
        &mut self,
        id: MessageId,
        payload: Vec<u8>,
        recipients: Vec<(String, String)>,
        attempts: u32,
    ) {
        // Inside a store batch the rows are not durable yet: the batch's owner dispatches
        // once it commits.
        if self.store.in_batch() {
            return;
        }
        let recipients: Vec<(String, String)> = recipients
            .into_iter()
            .filter(|(_, d)| self.outbox.fan_in_flight.insert((id, d.clone())))
            .collect();
        if recipients.is_empty() {
            return;
        }
        let mut by_relay: HashMap<Option<PeerId>, Vec<FanTarget>> = HashMap::new();
        for (user, dev) in recipients {
            let Some(peer) = DeviceId::from_peer_id_string(&dev).and_then(|d| device_peer(&d))
            else {
                continue;
            };
            let relays = self
                .known(&user)
                .map(|c| c.relay_peers())
                .unwrap_or_default();
            let grant = self.grants.held(&dev);
            by_relay
                .entry(relays.first().copied())
                .or_default()
                .push((dev, peer, relays, grant));
        }
        for (relay, group) in by_relay {
            let net = self.net.clone();
            let tx = self.internal.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                let mut results = Vec::with_capacity(group.len());
                let outcome = match relay {
                    Some(r) => {
                        let to = group
                            .iter()
                            .map(|(_, p, _, g)| (*p, grants::token(g.as_ref(), r)))
                            .collect();
                        rpc::deposit_many(&net, r, to, payload.clone()).await
                    }
                    None => Err(NetError::Transport("the member has no relay".into())),
                };
                match outcome {
                    Ok(refused) => {
                        for (dev, peer, _, _) in group {
                            let r = match refused.iter().find(|r| r.peer == peer) {
                                Some(r) => Err(NetError::Rejected(
                                    tern_relay::wire::Rejection::new(r.code),
                                )),
                                None => Ok(()),
                            };
                            results.push((dev, r));
                        }
                    }
                    Err(e) => {
                        // The first relay failed: each device tries its other relays.
                        for (dev, peer, relays, grant) in group {
                            let r = lanes::deliver(
                                &net,
                                peer,
                                &relays[1.min(relays.len())..],
                                payload.clone(),
                                false,
                                grant.as_ref(),
                            )
                            .await
                            .map_err(|_| e.clone());
                            results.push((dev, r));
                        }
                    }
                }
                let _ = tx
                    .send(Internal::FannedOut {
                        id,
                        attempts,
                        results,
                    })
                    .await;
            });
        }
    }

    /// A fan-out finished: acknowledge what went, reschedule what did not, in one
    /// transaction.
    pub(crate) fn on_fanned_out(
        &mut self,
        id: MessageId,
        attempts: u32,
        results: Vec<(String, Result<(), NetError>)>,
    ) {
        let now = self.clock.now_ms();
        let mut remaining = None;
        let went: Vec<String> = results
            .iter()
            .filter(|(_, r)| r.is_ok())
            .map(|(d, _)| d.clone())
            .collect();
        let out = self.store.transaction(|tx| -> Result<(), NodeError> {
            if !went.is_empty() {
                remaining = Some(tx.ack_deliveries(id, &went)?);
            }
            for (dev, r) in &results {
                match r {
                    Ok(()) => {}
                    Err(e) => {
                        let wait = e
                            .retry_after()
                            .unwrap_or_else(|| send::backoff(attempts))
                            .min(crate::consts::RETRY_MAX);
                        let next = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(0));
                        tx.reschedule_delivery(id, dev, next)?;
                    }
                }
            }
            Ok(())
        });
        for (dev, r) in &results {
            self.outbox.fan_in_flight.remove(&(id, dev.clone()));
            if let Err(e) = r
                && e.code() == Some(tern_relay::wire::ErrorCode::NoGrant)
            {
                // Revoked or stale: the next attempt goes as an introduction.
                self.drop_grant(dev);
            }
        }
        if let Err(e) = out {
            tracing::error!("recording a group delivery failed: {e}");
            return;
        }
        if remaining == Some(0)
            && let Ok(Some(m)) = self.store.message(id)
            && m.status == Status::Sent
        {
            self.emit(Event::Receipt {
                conversation: m.conversation.0,
                ids: vec![id.to_string()],
                status: crate::types::MessageStatus::Sent,
            });
        }
    }
}
