//! Live streams (`/tern/live/1`): opening one per client, what the stream tasks report
//! (acknowledgements, closing), and delivering a message on the stream or, when it is
//! full or absent, as a `Deliver` request.
//!
//! Uses `admission`, `answer` and `requests` (acknowledgements are applied like `Ack`
//! requests).

use std::sync::atomic::Ordering::Relaxed;

use libp2p::PeerId;
use tokio::sync::mpsc;

use super::{EventLoop, LIVE_QUEUE, LiveEnd, LiveNote};
use crate::wire::{ErrorCode, Frame, mailbox};

impl EventLoop {
    /// A client opened a live stream: later pushes to it go there.
    pub(super) fn on_live_event(&mut self, ev: crate::live::Event) {
        let crate::live::Event::Inbound { peer, stream } = ev else {
            return;
        };
        if !self.connections.contains_key(&peer) || self.shutting_down {
            return;
        }
        self.live_generation += 1;
        let generation = self.live_generation;
        let (frames, frames_rx) = mpsc::channel(LIVE_QUEUE);
        // A stream this replaces ends when its queue is dropped here.
        self.live.insert(peer, LiveEnd { generation, frames });
        let notes = self.live_notes.clone();
        tokio::spawn(async move {
            crate::live::server_end(stream, frames_rx, notes.clone(), |ids| LiveNote::Acks {
                peer,
                ids,
            })
            .await;
            let _ = notes.send(LiveNote::Closed { peer, generation }).await;
        });
    }

    pub(super) fn on_live_note(&mut self, note: LiveNote) {
        match note {
            LiveNote::Closed { peer, generation } => {
                if self
                    .live
                    .get(&peer)
                    .is_some_and(|l| l.generation == generation)
                {
                    self.live.remove(&peer);
                }
            }
            LiveNote::Acks { peer, ids } => {
                self.metrics.live_stream_acks.fetch_add(1, Relaxed);
                // Counted like an `Ack` request; over the limit, the acknowledgement is
                // dropped and the messages stay in the mailbox until fetched again.
                if self.admit_request(peer).is_err() {
                    self.metrics.reject(ErrorCode::RateLimited);
                    return;
                }
                self.submit_ack(peer, ids, None);
            }
        }
    }

    pub(super) fn deliver(
        &mut self,
        recipient: PeerId,
        id: u64,
        sender: PeerId,
        deposited_ms: u64,
        ciphertext: &[u8],
        intro: bool,
    ) {
        let req = mailbox::Request::deliver_one(id, sender, deposited_ms, ciphertext, intro);
        match req.encode() {
            Ok(bytes) => {
                let bytes = match self.live.get(&recipient) {
                    Some(live) => match live.frames.try_send(bytes) {
                        Ok(()) => {
                            self.metrics.live_deliveries.fetch_add(1, Relaxed);
                            self.metrics.live_stream_pushes.fetch_add(1, Relaxed);
                            return;
                        }
                        // Backed up: this one goes as a request, the stream stays.
                        Err(mpsc::error::TrySendError::Full(bytes)) => bytes,
                        Err(mpsc::error::TrySendError::Closed(bytes)) => {
                            self.live.remove(&recipient);
                            bytes
                        }
                    },
                    None => bytes,
                };
                self.swarm
                    .behaviour_mut()
                    .mailbox
                    .send_request(&recipient, Frame::Data(bytes));
                self.metrics.live_deliveries.fetch_add(1, Relaxed);
            }
            Err(e) => tracing::error!(error = %e, "cannot encode delivery"),
        }
    }
}
