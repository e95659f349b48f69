//! The client's end of `/tern/deposit/1` ([`crate::wire::deposit`]): deposits written one
//! after another on one stream, up to a window of them waiting for their answers.
//!
//! [`Pipeline`] is a cheap cloneable handle to a task that owns the stream. A deposit first
//! takes a place in the window ([`Pipeline::submit`] waits for one), is then queued for the
//! stream in that order, and its [`Ticket`] resolves when the relay answers it: with the
//! same result a `Deposit` request gets ([`crate::rpc::Requests::deposit_with`]). Deposits
//! submitted one after another (each `submit` awaited before the next) are stored by the
//! relay in that order. When the stream closes or breaks, or an answer is later than the
//! timeout, every unanswered deposit fails with [`RequestError::Transport`]: it may or may
//! not be stored, and the caller sends it again (over the request/response protocol, or a
//! new stream).
//!
//! Streams are opened without waiting for the relay to agree to the protocol
//! (`crate::swarm_config`), so a relay that does not take deposit streams refuses the first
//! deposits written on one: they fail with [`RequestError::Unsupported`], certain not to be
//! stored, and [`deposit`] sends such a deposit as a request at once.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::{
    rpc::{RequestError, Requests, deposit_request, deposited},
    wire::{
        deposit::{Answer, MAX_ANSWER_BYTES},
        mailbox,
        stream::{BATCH_BYTES, append_frame, read_frame, write_batch},
    },
};

/// How a deposit's answer reaches its caller.
type Waiter = oneshot::Sender<Result<mailbox::Response, RequestError>>;

/// A deposit on its way to the stream, holding its place in the window.
struct Queued {
    frame: Vec<u8>,
    reply: Waiter,
    place: OwnedSemaphorePermit,
}

/// A deposit written and not yet answered; its place in the window is given back with it.
struct Unanswered {
    reply: Waiter,
    _place: OwnedSemaphorePermit,
    sent: Instant,
}

fn closed() -> RequestError {
    RequestError::Transport("deposit stream closed".into())
}

/// Deposits `req` (a `mailbox::Request::Deposit`) on `pipe` when there is one, else as a
/// request on `relay`; a deposit the stream could not take (it closed) or whose relay
/// refused the stream's protocol goes as a request too. The answer as
/// [`crate::rpc::Requests::deposit_with`] gives it.
pub async fn deposit(
    pipe: Option<&Pipeline>,
    relay: &impl Requests,
    req: mailbox::Request,
) -> Result<(u64, Vec<mailbox::Refusal>), RequestError> {
    // Not queued (the stream closed), or refused as a protocol: the relay has not seen it.
    if let Some(pipe) = pipe
        && let Ok(ticket) = pipe.submit(&req).await
    {
        match ticket.answer().await {
            Err(RequestError::Unsupported) => {}
            answered => return answered,
        }
    }
    deposited(relay.mailbox(req).await?)
}

/// Whether `e`, from reading a stream, says the peer refused the stream's protocol.
fn protocol_refused(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<libp2p::core::upgrade::NegotiationError>())
        .is_some_and(|n| matches!(n, libp2p::core::upgrade::NegotiationError::Failed))
}

/// A handle to one open deposit stream.
#[derive(Debug, Clone)]
pub struct Pipeline {
    queue: mpsc::Sender<Queued>,
    window: Arc<Semaphore>,
    /// The number the next deposit queued will have on the stream (the relay numbers them
    /// in the order written, which is the queue's): taken and queued under this lock.
    next: Arc<tokio::sync::Mutex<u64>>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Queued(..)")
    }
}

/// The answer to one deposit, to wait for.
#[derive(Debug)]
pub struct Ticket {
    answer: oneshot::Receiver<Result<mailbox::Response, RequestError>>,
    seq: u64,
}

impl Ticket {
    /// The deposit's number on its stream (from 0): what a later deposit names to follow it
    /// ([`Pipeline::submit_following`]).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Waits for the relay's answer: the message id and the recipients it did not reach, as
    /// for a `Deposit` request; a refusal is [`RequestError::Rejected`] with the relay's code.
    pub async fn answer(self) -> Result<(u64, Vec<mailbox::Refusal>), RequestError> {
        match self.answer.await {
            Ok(Ok(response)) => deposited(response),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(closed()),
        }
    }
}

impl Pipeline {
    /// Runs the client's end of an open `/tern/deposit/1` stream in a task of its own, with
    /// at most `window` deposits unanswered (at least 1); an answer later than `timeout`
    /// fails the stream.
    pub fn spawn(stream: Stream, window: usize, timeout: Duration) -> Self {
        let window = Arc::new(Semaphore::new(window.max(1)));
        let (queue, rx) = mpsc::channel(window.available_permits());
        tokio::spawn(run(stream, rx, window.clone(), timeout));
        Self {
            queue,
            window,
            next: Arc::default(),
        }
    }

    /// Whether the stream is still open.
    pub fn is_open(&self) -> bool {
        !self.queue.is_closed()
    }

    /// Places of the window taken: deposits queued for the stream or not yet answered.
    pub fn in_flight(&self) -> usize {
        self.queue.max_capacity() - self.window.available_permits()
    }

    /// Queues a deposit request (a `mailbox::Request::Deposit`) once a place in the window
    /// is free; it goes on the stream after everything submitted before it.
    pub async fn submit(&self, req: &mailbox::Request) -> Result<Ticket, RequestError> {
        self.queue_frame(req.encode()?).await
    }

    /// Like [`Pipeline::submit`], naming as the deposit it must not overtake `follows`
    /// (the [`Ticket::seq`] of one submitted before on this stream; see the `follows` field
    /// of `mailbox::Request::Deposit`): if the relay refused that one, it refuses this one
    /// `OutOfOrder` rather than store it. A sender keeps a device's deposits in order this
    /// way with several of them in flight.
    pub async fn submit_following(
        &self,
        mut req: mailbox::Request,
        follows: Option<u64>,
    ) -> Result<Ticket, RequestError> {
        if let mailbox::Request::Deposit { follows: f, .. } = &mut req {
            *f = follows;
        }
        self.queue_frame(req.encode()?).await
    }

    /// Takes a place in the window, then numbers `frame` and queues it, both under the
    /// numbering lock.
    async fn queue_frame(&self, frame: Vec<u8>) -> Result<Ticket, RequestError> {
        let place = self
            .window
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| closed())?;
        let mut next = self.next.lock().await;
        let seq = *next;
        // Every queued frame is written (the stream numbers frames as they come).
        if u32::try_from(frame.len()).is_err() {
            return Err(RequestError::Transport("deposit frame too long".into()));
        }
        let (reply, rx) = oneshot::channel();
        self.queue
            .send(Queued {
                frame,
                reply,
                place,
            })
            .await
            .map_err(|_| closed())?;
        *next += 1;
        Ok(Ticket { answer: rx, seq })
    }

    /// Deposits `ciphertext` for `recipients` like [`crate::rpc::Requests::deposit_with`],
    /// on the stream.
    pub async fn deposit_with(
        &self,
        recipients: Vec<PeerId>,
        tokens: Vec<Option<[u8; 32]>>,
        ttl_secs: Option<u32>,
        ciphertext: Vec<u8>,
    ) -> Result<(u64, Vec<mailbox::Refusal>), RequestError> {
        let req = deposit_request(recipients, tokens, ttl_secs, ciphertext);
        self.submit(&req).await?.answer().await
    }
}

/// The stream's task: writes queued deposits in order, numbering them, and hands each
/// answer to its caller. Ends when the stream closes or breaks, an answer does not decode or
/// answers nothing unanswered, or the oldest unanswered deposit is older than `timeout`;
/// every deposit not answered then fails ([`RequestError::Unsupported`] if the relay
/// refused the protocol, which the reading side learns: a failed write waits for its
/// verdict). When every handle is gone, the stream is closed for writing once the queue is
/// empty, and the task waits for the last answers.
async fn run(
    stream: Stream,
    mut queue: mpsc::Receiver<Queued>,
    window: Arc<Semaphore>,
    timeout: Duration,
) {
    let (mut r, mut w) = stream.split();
    let unanswered: Mutex<HashMap<u64, Unanswered>> = Mutex::new(HashMap::new());
    let lock = || unanswered.lock().unwrap_or_else(PoisonError::into_inner);
    let writing = async {
        let mut seq = 0u64;
        let mut buf = Vec::new();
        while let Some(first) = queue.recv().await {
            // Deposits queued while the last write went out go together in the next.
            let mut next = Some(first);
            while let Some(q) = next.take() {
                if let Err(e) = append_frame(&mut buf, &q.frame) {
                    // Not reached (`queue_frame` checks the length); were it, the relay's
                    // numbering would no longer be the tickets': the stream ends.
                    let _ = q.reply.send(Err(RequestError::Transport(e.to_string())));
                    return;
                } else {
                    lock().insert(
                        seq,
                        Unanswered {
                            reply: q.reply,
                            _place: q.place,
                            sent: Instant::now(),
                        },
                    );
                    seq += 1;
                }
                if buf.len() < BATCH_BYTES {
                    next = queue.try_recv().ok();
                }
            }
            if let Err(e) = write_batch(&mut w, &buf).await {
                // The reading side learns why (a refused protocol, a reset) and ends the
                // stream; if it has not within the timeout, this does.
                tracing::debug!(error = %e, "deposit stream write failed");
                tokio::time::sleep(timeout).await;
                return;
            }
            buf.clear();
        }
        let _ = w.close().await;
        // What is still unanswered is answered on the reading side.
        std::future::pending::<()>().await;
    };
    let reading = async {
        loop {
            let frame = match read_frame(&mut r, MAX_ANSWER_BYTES).await {
                Ok(Some(f)) => f,
                Ok(None) => return false,
                Err(e) => {
                    tracing::debug!(error = %e, "deposit stream read failed");
                    return protocol_refused(&e);
                }
            };
            let Ok(answer) = Answer::decode(&frame) else {
                tracing::debug!("deposit stream: undecodable answer; closing");
                return false;
            };
            let Some(waiting) = lock().remove(&answer.seq) else {
                tracing::debug!(seq = answer.seq, "deposit stream: answer to no deposit");
                return false;
            };
            let _ = waiting.reply.send(Ok(answer.response));
        }
    };
    let watchdog = async {
        let tick = (timeout / 4).max(Duration::from_millis(10));
        loop {
            tokio::time::sleep(tick).await;
            let oldest = lock().values().map(|u| u.sent).min();
            if oldest.is_some_and(|t| t.elapsed() > timeout) {
                tracing::debug!("deposit stream: no answer in time; closing");
                return;
            }
        }
    };
    let refused = tokio::select! {
        () = writing => false,
        refused = reading => refused,
        () = watchdog => false,
    };
    let failure = || {
        if refused {
            RequestError::Unsupported
        } else {
            closed()
        }
    };
    window.close();
    queue.close();
    for (_, u) in lock().drain() {
        let _ = u.reply.send(Err(failure()));
    }
    while let Ok(q) = queue.try_recv() {
        let _ = q.reply.send(Err(failure()));
    }
}
