//! Ordered delivery: one lane per recipient device.
//!
//! Everything encrypted for one remote device over its pairwise session — texts, sync copies,
//! receipts, membership operations, sender keys, resend requests — sits in that device's lane
//! (`tern_store::Store::lane`) in the order it was encrypted, which is its ratchet order.
//! A lane is sent by at most one task at a time, row after row, each only once the one before
//! it was acknowledged (by the relay after its commit, or by the peer after storing it). When
//! a row fails (network, rate limit, quota), the task stops there: that row is rescheduled
//! and nothing behind it moves until it goes. So a later ciphertext never overtakes an
//! earlier one for the same device, whatever the path, relay or retry: by construction, not
//! by timing. Lanes of different devices run in parallel (up to [`MAX_LANES_IN_FLIGHT`]).

use libp2p::PeerId;
use tern_crypto::DeviceId;
use tern_relay::wire::ErrorCode;

use super::{Engine, Internal, courier::Route, device_peer};
use crate::{
    consts::{LANE_BATCH, MAX_LANES_IN_FLIGHT, OUTBOX_BATCH, RETRY_MAX},
    net::{NetError, rpc},
    types::Event,
};

/// What a lane task reports.
#[derive(Debug)]
pub(crate) struct LaneDone {
    /// The recipient device.
    device: String,
    /// The rows it delivered, in order.
    acked: Vec<i64>,
    /// The row it stopped at, with its failed attempts before this one, and why.
    failed: Option<(i64, u32, NetError)>,
}

impl Engine {
    /// Starts the lanes whose first row is due (`all`: every lane, backoff or not).
    pub(crate) fn dispatch_lanes(&mut self, all: bool) {
        if self.outbox.lanes_busy.len() >= MAX_LANES_IN_FLIGHT {
            return;
        }
        let now = if all { i64::MAX } else { self.clock.now_ms() };
        let due = match self.store.due_lanes(now, OUTBOX_BATCH) {
            Ok(d) => d,
            Err(e) => {
                tracing::error!("reading the outbox failed: {e}");
                return;
            }
        };
        for device in due {
            if self.outbox.lanes_busy.len() >= MAX_LANES_IN_FLIGHT {
                break;
            }
            self.start_lane(&device, None);
        }
    }

    /// Starts the lanes of the devices rows were just queued for, if they are idle. A lane
    /// whose first row waits for its backoff stays waiting (the new rows are behind it).
    pub(crate) fn kick_lanes_for(&mut self, deliveries: &[tern_store::Delivery]) {
        let now = self.clock.now_ms();
        for d in deliveries {
            self.start_lane(&d.recipient_device, Some(now));
        }
    }

    /// Starts a task sending the first rows of `device`'s lane, unless one runs, a store
    /// batch is open, or (with `due_at`) the first row is not due by then.
    pub(crate) fn start_lane(&mut self, device: &str, due_at: Option<i64>) {
        // Inside a store batch the rows are not durable yet: nothing goes on the wire until
        // it commits (the batch's owner dispatches then).
        if self.outbox.lanes_busy.contains(device)
            || self.outbox.lanes_busy.len() >= MAX_LANES_IN_FLIGHT
            || self.store.in_batch()
        {
            return;
        }
        let rows = match self.store.lane(device, LANE_BATCH) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("reading a lane failed: {e}");
                return;
            }
        };
        let Some(head) = rows.first() else {
            return;
        };
        if due_at.is_some_and(|t| head.next_attempt_ms > t) {
            return;
        }
        let Some(peer) = DeviceId::from_peer_id_string(device).and_then(|d| device_peer(&d)) else {
            // Nothing can ever deliver it, and it would hold its lane's place for good.
            tracing::error!(
                device,
                "dropping outbox rows for something that is not a device id"
            );
            let ids: Vec<i64> = rows.iter().map(|r| r.row).collect();
            if let Err(e) = self.store.transaction(|tx| tx.ack_rows(&ids)) {
                tracing::error!("dropping them failed: {e}");
            }
            return;
        };
        let relays = self
            .known(&head.delivery.recipient_user)
            .map(|c| c.relay_peers())
            .unwrap_or_default();
        let route = Route {
            peer,
            relays,
            direct: self.relays.direct,
            grant: self.grants.held(device),
        };
        self.outbox.lanes_busy.insert(device.to_owned());
        let courier = self.courier.clone();
        let tx = self.internal.clone();
        let device = device.to_owned();
        tokio::spawn(async move {
            let mut acked = Vec::with_capacity(rows.len());
            let mut failed = None;
            for row in rows {
                match courier.deliver(route.clone(), row.delivery.payload).await {
                    Ok(()) => acked.push(row.row),
                    Err(e) => {
                        failed = Some((row.row, row.attempts, e));
                        break;
                    }
                }
            }
            let _ = tx
                .send(Internal::LaneDone(LaneDone {
                    device,
                    acked,
                    failed,
                }))
                .await;
        });
    }

    /// Lane tasks finished (those whose results were ready together): their delivered rows
    /// go (messages whose last row went become `sent`) and each row a lane stopped at waits
    /// for its backoff or the relay's `retry_after`, all in one transaction; then the lanes
    /// that were not stopped go on at once.
    pub(crate) fn on_lanes_done(&mut self, results: Vec<LaneDone>) {
        let now = self.clock.now_ms();
        let mut acked = Vec::new();
        let mut retries = Vec::new();
        let mut go_on = Vec::new();
        for LaneDone {
            device,
            acked: rows,
            failed,
        } in results
        {
            self.outbox.lanes_busy.remove(&device);
            acked.extend(rows);
            match failed {
                Some((row, attempts, e)) => {
                    if e.code() == Some(ErrorCode::NoGrant) {
                        // Revoked or stale: the row goes again at once, as an introduction.
                        self.drop_grant(&device);
                        retries.push((row, now));
                        continue;
                    }
                    if e.code().is_none() {
                        // No relay of the contact answered: they may have moved.
                        self.delivery_unanswered(&device);
                    }
                    let wait = &e
                        .retry_after()
                        .unwrap_or_else(|| super::send::backoff(attempts))
                        .min(RETRY_MAX);
                    tracing::debug!(%device, "delivery failed ({e}); the lane waits {wait:?}");
                    let next = now.saturating_add(i64::try_from(wait.as_millis()).unwrap_or(0));
                    retries.push((row, next));
                }
                None => go_on.push(device),
            }
        }
        let out = self
            .store
            .transaction(|tx| -> Result<_, tern_store::WriteError> {
                let done = tx.ack_rows(&acked)?;
                for (row, next) in &retries {
                    tx.reschedule_row(*row, *next)?;
                }
                Ok(done)
            });
        match out {
            Ok(done) => {
                for id in done {
                    if let Ok(Some(m)) = self.store.message(id)
                        && m.status == tern_store::Status::Sent
                    {
                        self.emit(Event::Receipt {
                            conversation: m.conversation.0,
                            ids: vec![id.to_string()],
                            status: "sent".into(),
                        });
                    }
                }
            }
            // The rows stay and go again: the receiver drops what it already has.
            Err(e) => tracing::error!("recording deliveries failed (they go again): {e}"),
        }
        for device in go_on {
            self.start_lane(&device, None);
        }
        // Keep the pipe full.
        self.dispatch_lanes(false);
    }
}

/// Delivers one ciphertext: directly when a connection to the device is open, else into
/// its mailbox at the first of the contact's relays that takes it, showing the token of
/// the grant the device issued (if one is held).
pub(crate) async fn deliver(
    net: &crate::net::Client,
    peer: PeerId,
    relays: &[PeerId],
    payload: Vec<u8>,
    direct: bool,
    grant: Option<&tern_crypto::grant::Grant>,
) -> Result<(), NetError> {
    if direct && net.is_connected(peer).await {
        match net.direct(peer, payload.clone()).await {
            Ok(()) => return Ok(()),
            Err(e) => tracing::debug!(%peer, "direct delivery failed, using the mailbox: {e}"),
        }
    }
    let mut last = NetError::Transport("the contact has no relay".into());
    for relay in relays {
        let token = super::grants::token(grant, *relay);
        match rpc::deposit(net, *relay, peer, token, payload.clone()).await {
            Ok(()) => return Ok(()),
            // The relay is up and said "not now" (rate limit) or "not here" (quota, a full
            // share, a refused grant): the lane waits for it rather than spreading one
            // device's rows over several relays.
            Err(e)
                if matches!(
                    e.code(),
                    Some(
                        ErrorCode::RateLimited
                            | ErrorCode::QuotaCount
                            | ErrorCode::QuotaBytes
                            | ErrorCode::ShareFull
                            | ErrorCode::IntroFull
                            | ErrorCode::NoGrant
                    )
                ) =>
            {
                return Err(e);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}
