//! Group fan-outs: one ciphertext, stored once in the outbox, deposited once per relay for
//! every member device that already has the sender key and keeps a mailbox there
//! (`deposit_many` through the engine's courier). A device's row goes to every relay of its
//! user, each relay's deposit on its own, and leaves once each of them took it
//! (`tern_store::Tx::take_delivery_at`); a retry goes only to the relays that have not.
//! Not ordered like the lanes ([`super::lanes`]): a sender key's ratchet accepts any order
//! within its window, so a fan-out row that fails is rescheduled on its own.

use std::collections::HashMap;

use libp2p::PeerId;
use tern_crypto::DeviceId;
use tern_store::{MessageId, Status};

use tern_relay::wire::ErrorCode;

use super::{Engine, Internal, device_peer, grants, lanes::Turn, send};
use crate::{consts::OUTBOX_BATCH, error::NodeError, net::NetError, types::Event};

/// Due outbox rows of one message that share a payload: message, payload, (user, device)
/// recipients, most attempts so far.
type Fan = (MessageId, Vec<u8>, Vec<(String, String)>, u32);

/// A fan-out recipient at one relay: its device id, peer id and the grant it issued.
type FanTarget = (String, PeerId, Option<tern_crypto::grant::Grant>);

impl Engine {
    /// `devices` came online (or away) and drain their mailboxes: their lanes and group
    /// fan-out rows go now, whatever their backoff, so rows a full mailbox share refused
    /// follow them back at once rather than after up to [`RETRY_MAX`] each. A lane at a
    /// relay whose last dial failed waits on (it would only fail again and wait longer);
    /// one transaction and one look at the fan-outs for them all.
    ///
    /// [`RETRY_MAX`]: crate::consts::RETRY_MAX
    pub(crate) fn deliver_now_to(&mut self, devices: &[String]) {
        if devices.is_empty() {
            return;
        }
        for device in devices {
            for relay in self.lane_relays(device, None) {
                let known_down = relay.is_some_and(|r| {
                    !self.relays.relay_up.contains(&r) && self.relays.dial_problems.contains_key(&r)
                });
                if !known_down {
                    self.start_lane(device, relay, None);
                }
            }
        }
        let now = self.clock.now_ms();
        let moved = self.store.transaction(|tx| {
            let mut moved = 0;
            for device in devices {
                moved += tx.fanout_due_now(device, now)?;
            }
            Ok::<_, tern_store::WriteError>(moved)
        });
        match moved {
            Ok(0) => {}
            Ok(_) => self.dispatch_fanouts(false),
            Err(e) => tracing::error!("moving up group rows failed: {e}"),
        }
    }

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
        let mut by_relay: HashMap<Option<PeerId>, Vec<FanTarget>> = HashMap::new();
        for (user, dev) in recipients {
            let Some(peer) = DeviceId::from_peer_id_string(&dev).and_then(|d| device_peer(&d))
            else {
                continue;
            };
            let taken = match self.store.fanout_taken(id, &dev) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("reading a fan-out row failed: {e}");
                    continue;
                }
            };
            let grant = self.grants.held(&dev);
            for relay in self.lane_relays(&dev, Some(&user)) {
                if relay.is_some_and(|r| taken.contains(&r.to_string()))
                    || !self.outbox.fan_in_flight.insert((id, dev.clone(), relay))
                {
                    continue;
                }
                by_relay
                    .entry(relay)
                    .or_default()
                    .push((dev.clone(), peer, grant.clone()));
            }
        }
        for (relay, group) in by_relay {
            // At a relay that refused this device's deposits for their rate lately, each
            // fan-out waits for its turn, one per pace; one whose turn is too far off is left
            // for a later tick.
            let wait = match relay.map(|r| self.fan_turn(r)) {
                Some(Turn::Later) => {
                    for (dev, _, _) in &group {
                        self.outbox.fan_in_flight.remove(&(id, dev.clone(), relay));
                    }
                    continue;
                }
                Some(Turn::After(wait)) => Some(wait),
                Some(Turn::Now) | None => None,
            };
            let courier = self.courier.clone();
            let tx = self.internal.clone();
            let payload = payload.clone();
            tokio::spawn(async move {
                if let Some(wait) = wait {
                    tokio::time::sleep(wait).await;
                }
                let outcome = match relay {
                    Some(r) => {
                        let to = group
                            .iter()
                            .map(|(_, p, g)| (*p, grants::token(g.as_ref(), r)))
                            .collect();
                        courier.deposit_many(r, to, payload).await
                    }
                    None => Err(NetError::Transport("the member has no relay".into())),
                };
                let results = group
                    .into_iter()
                    .map(|(dev, peer, _)| {
                        let r = match &outcome {
                            Ok(refused) => match refused.iter().find(|r| r.peer == peer) {
                                Some(r) => Err(NetError::Rejected(
                                    tern_relay::wire::Rejection::new(r.code),
                                )),
                                None => Ok(()),
                            },
                            Err(e) => Err(e.clone()),
                        };
                        (dev, r)
                    })
                    .collect();
                let _ = tx
                    .send(Internal::FannedOut {
                        id,
                        attempts,
                        relay,
                        results,
                    })
                    .await;
            });
        }
    }

    /// A fan-out's deposit at `relay` finished: record which devices it took, reschedule
    /// those it did not, in one transaction.
    pub(crate) fn on_fanned_out(
        &mut self,
        id: MessageId,
        attempts: u32,
        relay: Option<PeerId>,
        results: Vec<(String, Result<(), NetError>)>,
    ) {
        let now = self.clock.now_ms();
        let mut sent_now = false;
        let relay_key = relay.map(|r| r.to_string());
        let sets: Vec<Vec<String>> = results
            .iter()
            .map(|(dev, _)| {
                self.lane_relays(dev, None)
                    .into_iter()
                    .flatten()
                    .map(|p| p.to_string())
                    .collect()
            })
            .collect();
        let mut paced = None;
        let out = self.store.transaction(|tx| -> Result<(), NodeError> {
            for ((dev, r), set) in results.iter().zip(&sets) {
                match r {
                    Ok(()) => {
                        sent_now |= tx.take_delivery_at(id, dev, relay_key.as_deref(), set)?;
                    }
                    Err(e) => {
                        if let (Some(r), Some(ErrorCode::RateLimited), Some(every)) =
                            (relay, e.code(), e.retry_after())
                        {
                            paced = Some((r, every));
                        }
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
        if let Some((r, every)) = paced {
            self.paced_by(r, every);
        }
        for (dev, r) in &results {
            self.outbox.fan_in_flight.remove(&(id, dev.clone(), relay));
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
        if sent_now
            && let Ok(Some(m)) = self.store.message(id)
            && m.status == Status::Sent
        {
            self.emit(Event::Receipt {
                conversation: m.conversation,
                ids: vec![id.to_string()],
                status: crate::types::MessageStatus::Sent,
            });
        }
    }
}
