//! Deposits on the relays' deposit streams (`/tern/deposit/1`, see
//! [`tern_relay::pipeline`]): one stream per relay, opened the first time the node deposits
//! there, shared by every task that deposits at that relay (lanes of different devices,
//! group fan-outs), with up to [`WINDOW`] deposits in flight together instead of a
//! request/response substream each.
//!
//! A deposit goes on the stream only while it is open; until then (while it opens, or after
//! it broke or its relay refused it: a relay without it refuses the first deposits written,
//! which then go as requests) it goes as a `Deposit` request. What the node guarantees does
//! not change: a deposit is done only when the relay answered it after its commit, and a
//! deposit whose stream broke before its answer has failed (the outbox keeps its row and
//! sends it again). Order per device is kept by the lanes: on the stream a lane keeps a
//! window of a device's rows in flight, each naming the one before so the relay stores
//! none after one it refused; as requests, it sends them one after another.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak},
    time::{Duration, Instant},
};

use libp2p::PeerId;
use tern_relay::{pipeline::Pipeline, wire::deposit::PROTOCOL};

use crate::consts::{IDLE_CONNECTION_TIMEOUT, RELAY_REQUEST_TIMEOUT};

/// Deposits in flight on one relay's stream, shared by every lane at that relay (each keeps
/// at most `LANE_WINDOW`) and group fan-outs.
pub const WINDOW: usize = crate::consts::MAX_LANES_IN_FLIGHT;

/// How long after a stream failed to open (or broke) the next attempt waits; deposits go as
/// requests meanwhile.
const REOPEN_AFTER: Duration = Duration::from_secs(30);

/// A stream unused for this long is closed (an open stream keeps its connection open, and
/// the connection to a contact's relay should close when idle, as it did without one).
const IDLE_AFTER: Duration = IDLE_CONNECTION_TIMEOUT;

/// One relay's stream, as far as the node knows.
#[derive(Debug)]
enum Slot {
    /// Being opened.
    Opening,
    /// Open (until its task ends), and when a deposit last took it.
    Open(Pipeline, Instant),
    /// Failed to open, or broke; not tried again before then.
    Failed(Instant),
}

/// The node's deposit streams, by relay.
#[derive(Debug, Default)]
pub(super) struct Pipes {
    slots: Mutex<HashMap<PeerId, Slot>>,
}

impl Pipes {
    /// The open stream to `relay`, if there is one; else starts opening one (unless it is
    /// opening, or failed recently) and answers `None`: this deposit goes as a request.
    pub(super) fn get(
        self: &Arc<Self>,
        relay: PeerId,
        streams: &libp2p_stream::Control,
    ) -> Option<Pipeline> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        if slots.is_empty() {
            // The first stream starts the sweep of idle ones.
            tokio::spawn(sweep(Arc::downgrade(self)));
        }
        match slots.get_mut(&relay) {
            Some(Slot::Open(p, used)) if p.is_open() => {
                *used = Instant::now();
                return Some(p.clone());
            }
            Some(Slot::Opening) => return None,
            Some(Slot::Failed(at)) if at.elapsed() < REOPEN_AFTER => return None,
            // Broke: it counts as a failure, so a relay that drops streams is not reopened
            // at once, again and again.
            Some(Slot::Open(..)) => {
                slots.insert(relay, Slot::Failed(Instant::now()));
                return None;
            }
            Some(Slot::Failed(_)) | None => {}
        }
        slots.insert(relay, Slot::Opening);
        let (pipes, mut streams) = (self.clone(), streams.clone());
        tokio::spawn(async move {
            let opened =
                tokio::time::timeout(RELAY_REQUEST_TIMEOUT, streams.open_stream(relay, PROTOCOL))
                    .await;
            let slot = match opened {
                Ok(Ok(stream)) => Slot::Open(
                    Pipeline::spawn(stream, WINDOW, RELAY_REQUEST_TIMEOUT),
                    Instant::now(),
                ),
                Ok(Err(e)) => {
                    tracing::debug!(%relay, "no deposit stream ({e}); deposits go as requests");
                    Slot::Failed(Instant::now())
                }
                Err(_) => Slot::Failed(Instant::now()),
            };
            pipes
                .slots
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(relay, slot);
        });
        None
    }

    /// Forgets `relay`'s stream if it broke or failed to open: its connection is new, so
    /// the next deposit there opens one at once rather than after [`REOPEN_AFTER`].
    pub(super) fn reset(&self, relay: PeerId) {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let stale = match slots.get(&relay) {
            Some(Slot::Failed(_)) => true,
            Some(Slot::Open(p, _)) => !p.is_open(),
            Some(Slot::Opening) | None => false,
        };
        if stale {
            slots.remove(&relay);
        }
    }
}

/// Every so often, forgets the streams no deposit took for [`IDLE_AFTER`] and that have
/// nothing in flight (dropping the last handle closes a stream once its queue is empty, after
/// its last answers), and failures old enough to be tried again; ends with the node (when
/// `pipes` is gone) or when no stream is left (the next one starts it again).
async fn sweep(pipes: Weak<Pipes>) {
    loop {
        tokio::time::sleep(IDLE_AFTER / 4).await;
        let Some(pipes) = pipes.upgrade() else {
            return;
        };
        let mut slots = pipes.slots.lock().unwrap_or_else(PoisonError::into_inner);
        slots.retain(|_, slot| match slot {
            Slot::Opening => true,
            Slot::Open(p, used) => used.elapsed() < IDLE_AFTER || p.in_flight() > 0,
            Slot::Failed(at) => at.elapsed() < REOPEN_AFTER,
        });
        if slots.is_empty() {
            return;
        }
    }
}
