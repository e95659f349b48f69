//! The relay's end of `/tern/deposit/1` ([`crate::wire::deposit`]): each stream has a task
//! that reads deposit frames in order and hands them to the event loop as [`Note`]s, which
//! serves them exactly like `Deposit` requests (same checks, same storage queue, same
//! answers) and answers each through its [`Answer`]; the task writes the answers back.
//!
//! Bounds: a stream's task reads at most `deposit_window` deposits ahead of their answers
//! and holds at most `deposit_stream_bytes` of unanswered frames, which also take their
//! share of the relay's read budget until answered; a peer has at most as many deposit
//! streams as it may have connections. Beyond any of these the task stops reading and the
//! stream's flow control holds the client back. The event loop takes notes from one bounded
//! queue in the order each stream's task sent them, so a stream's deposits reach the
//! storage writer, which applies them in its queue's order, in the stream's order.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering::Relaxed},
};

use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream, request_response::ResponseChannel};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::{
    fence::{Fence, Fenced},
    metrics::Metrics,
};
use crate::wire::{
    Frame,
    deposit::{self, MAX_DEPOSIT_FRAME_BYTES},
    mailbox,
    stream::{BATCH_BYTES, append_frame, read_body, read_prefix, write_batch},
};

/// Deposits from every stream waiting for the event loop.
pub(super) const NOTE_QUEUE: usize = 4096;

/// Where the answer to a deposit goes: the request's channel, or its stream.
pub(super) enum Answer {
    /// A `Deposit` request on `/tern/mailbox/1`.
    Request(ResponseChannel<Frame>),
    /// A deposit on a deposit stream.
    Stream(StreamReply),
}

/// The answer slot of one deposit read from a stream: it holds the deposit's place in the
/// stream's window and its bytes of the budgets until answered (or dropped unanswered, when
/// the relay drops a peer's request).
pub(super) struct StreamReply {
    seq: u64,
    out: mpsc::Sender<Answered>,
    places: Places,
    fence: Arc<Fence>,
}

/// A deposit's window place, its bytes of the stream's budget and of the relay's.
struct Places {
    _window: OwnedSemaphorePermit,
    _stream: OwnedSemaphorePermit,
    _relay: OwnedSemaphorePermit,
}

/// An answer on its way to the stream.
struct Answered {
    seq: u64,
    response: mailbox::Response,
    _places: Places,
}

impl StreamReply {
    /// The deposit's place behind its stream's fence, following `follows`.
    pub(super) fn fenced(&self, follows: Option<u64>) -> Fenced {
        Fenced::new(self.fence.clone(), self.seq, follows)
    }

    /// Marks the deposit refused behind its stream's fence (what follows it is refused).
    pub(super) fn refused(&self) {
        self.fenced(None).refused();
    }

    /// Hands the answer to the stream's task. Never waits: its queue has room for the whole
    /// window. Nothing happens if the stream is gone.
    pub(super) fn send(self, response: mailbox::Response) {
        let _ = self.out.try_send(Answered {
            seq: self.seq,
            response,
            _places: self.places,
        });
    }
}

/// A deposit frame read from `peer`'s stream (a `mailbox::Request`, not yet decoded).
pub(super) struct Note {
    pub(super) peer: PeerId,
    pub(super) frame: Vec<u8>,
    pub(super) reply: StreamReply,
}

/// What bounds each stream.
#[derive(Debug, Clone)]
pub(super) struct Limits {
    /// Deposits read ahead of their answers.
    pub(super) window: usize,
    /// Bytes of unanswered frames per stream.
    pub(super) stream_bytes: usize,
    /// Deposit streams per peer.
    pub(super) per_peer: usize,
    /// The relay's read budget, shared with the request protocols.
    pub(super) budget: Arc<Semaphore>,
}

/// Accepts deposit streams until the event loop is gone (its note queue closed), serving
/// each in a task of its own.
pub(super) fn spawn_acceptor(
    mut incoming: crate::inbound::Incoming,
    limits: Limits,
    notes: mpsc::Sender<Note>,
    metrics: Arc<Metrics>,
) {
    let open: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    tokio::spawn(async move {
        loop {
            let (peer, stream) = tokio::select! {
                next = incoming.next() => match next {
                    Some(s) => s,
                    None => return,
                },
                () = notes.closed() => return,
            };
            {
                let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
                let n = open.entry(peer).or_default();
                if *n >= limits.per_peer {
                    tracing::debug!(%peer, "too many deposit streams; refused");
                    continue;
                }
                *n += 1;
            }
            let (limits, notes, metrics, open) =
                (limits.clone(), notes.clone(), metrics.clone(), open.clone());
            tokio::spawn(async move {
                metrics.deposit_streams.fetch_add(1, Relaxed);
                serve(peer, stream, limits, notes).await;
                metrics.deposit_streams.fetch_sub(1, Relaxed);
                let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some(n) = open.get_mut(&peer) {
                    *n -= 1;
                    if *n == 0 {
                        open.remove(&peer);
                    }
                }
            });
        }
    });
}

/// One stream: reads deposits within the limits and passes them on, numbered; writes the
/// answers as they come. When the client closes its side, the deposits read are still
/// answered before the stream is closed; when a write fails, the task ends at once.
async fn serve(peer: PeerId, stream: Stream, limits: Limits, notes: mpsc::Sender<Note>) {
    let (mut r, mut w) = futures::AsyncReadExt::split(stream);
    let (out, mut answers) = mpsc::channel::<Answered>(limits.window);
    let window = Arc::new(Semaphore::new(limits.window));
    let stream_bytes = Arc::new(Semaphore::new(limits.stream_bytes));
    let fence = Arc::new(Fence::default());
    let reading = async move {
        let mut seq = 0u64;
        loop {
            let Ok(place) = window.clone().acquire_owned().await else {
                return;
            };
            let len = match read_prefix(&mut r, MAX_DEPOSIT_FRAME_BYTES).await {
                Ok(Some(len)) => len,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "deposit stream read failed");
                    return;
                }
            };
            // At most MAX_DEPOSIT_FRAME_BYTES, which fits in u32.
            let n = len as u32;
            let (Ok(own), Ok(shared)) = (
                stream_bytes.clone().acquire_many_owned(n).await,
                limits.budget.clone().acquire_many_owned(n).await,
            ) else {
                return;
            };
            let frame = match read_body(&mut r, len).await {
                Ok(f) => f,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "deposit stream read failed");
                    return;
                }
            };
            let reply = StreamReply {
                seq,
                out: out.clone(),
                places: Places {
                    _window: place,
                    _stream: own,
                    _relay: shared,
                },
                fence: fence.clone(),
            };
            if notes.send(Note { peer, frame, reply }).await.is_err() {
                return;
            }
            seq += 1;
        }
    };
    let writing = async {
        let mut buf = Vec::new();
        while let Some(first) = answers.recv().await {
            // The answers of one commit come together: they go in one write.
            let mut next = Some(first);
            while let Some(a) = next.take() {
                let answer = deposit::Answer {
                    seq: a.seq,
                    response: a.response,
                };
                let appended = answer
                    .encode()
                    .map_err(std::io::Error::other)
                    .and_then(|f| append_frame(&mut buf, &f));
                if let Err(e) = appended {
                    tracing::error!(error = %e, "cannot encode a deposit answer");
                    return;
                }
                if buf.len() < BATCH_BYTES {
                    next = answers.try_recv().ok();
                }
            }
            if let Err(e) = write_batch(&mut w, &buf).await {
                tracing::debug!(%peer, error = %e, "deposit stream write failed");
                return;
            }
            buf.clear();
        }
        let _ = w.close().await;
    };
    let mut writing = std::pin::pin!(writing);
    tokio::select! {
        () = reading => {}
        () = &mut writing => return,
    }
    // Reading ended and its sender is gone: the answers still owed come, then the end.
    writing.await;
}
