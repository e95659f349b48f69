//! Answers: encoding and sending responses on each request/response protocol, refusals
//! (counted in the metrics), and `submit`, which queues a storage operation and answers
//! once the writer replies.
//!
//! Depends only on the event loop's state and types (`mod.rs`); every handler uses it.

use libp2p::request_response::ResponseChannel;
use tokio::sync::oneshot;

use super::{Completion, EventLoop, Proto, await_reply};
use crate::{
    server::storage,
    wire::{ErrorCode, Frame, Rejection, directory as dw, mailbox, presence as pw},
};

impl EventLoop {
    fn respond_bytes(&mut self, proto: Proto, channel: ResponseChannel<Frame>, bytes: Vec<u8>) {
        let b = self.swarm.behaviour_mut();
        let r = match proto {
            Proto::Mailbox => b.mailbox.send_response(channel, Frame::Data(bytes)),
            Proto::Presence => b.presence.send_response(channel, Frame::Data(bytes)),
            Proto::Directory => b.directory.send_response(channel, Frame::Data(bytes)),
        };
        if r.is_err() {
            tracing::debug!("peer went away before its response");
        }
    }

    pub(super) fn respond_mailbox(
        &mut self,
        channel: ResponseChannel<Frame>,
        resp: mailbox::Response,
    ) {
        match resp.encode() {
            Ok(bytes) => self.respond_bytes(Proto::Mailbox, channel, bytes),
            Err(e) => tracing::error!(error = %e, "cannot encode mailbox response"),
        }
    }

    pub(super) fn respond_presence(&mut self, channel: ResponseChannel<Frame>, resp: pw::Response) {
        match resp.encode() {
            Ok(bytes) => self.respond_bytes(Proto::Presence, channel, bytes),
            Err(e) => tracing::error!(error = %e, "cannot encode presence response"),
        }
    }

    pub(super) fn respond_directory(
        &mut self,
        channel: ResponseChannel<Frame>,
        resp: dw::Response,
    ) {
        if let dw::Response::Error(r) = &resp {
            self.metrics.reject(r.code);
        }
        match resp.encode() {
            Ok(bytes) => self.respond_bytes(Proto::Directory, channel, bytes),
            Err(e) => tracing::error!(error = %e, "cannot encode directory response"),
        }
    }

    fn respond_bytes_directory_error(
        &mut self,
        channel: ResponseChannel<Frame>,
        rejection: Rejection,
    ) {
        match dw::Response::Error(rejection).encode() {
            Ok(bytes) => self.respond_bytes(Proto::Directory, channel, bytes),
            Err(e) => tracing::error!(error = %e, "cannot encode directory response"),
        }
    }

    /// Queues the storage operation `op` makes with its reply sender; answers `channel` with
    /// `Unavailable` if the writer's queue is full, else with the completion `done` makes
    /// once the operation has committed.
    pub(super) fn submit<T: Send + 'static>(
        &mut self,
        proto: Proto,
        channel: ResponseChannel<Frame>,
        op: impl FnOnce(oneshot::Sender<Result<T, storage::OpError>>) -> storage::Op,
        done: impl FnOnce(ResponseChannel<Frame>, Result<T, storage::OpError>) -> Completion
        + Send
        + 'static,
    ) {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.storage.submit(op(reply)) {
            return self.reject(proto, channel, busy(e));
        }
        self.pending.push(Box::pin(
            async move { done(channel, await_reply(rx).await) },
        ));
    }

    pub(super) fn reject(
        &mut self,
        proto: Proto,
        channel: ResponseChannel<Frame>,
        rejection: Rejection,
    ) {
        self.metrics.reject(rejection.code);
        match proto {
            Proto::Mailbox => self.respond_mailbox(channel, mailbox::Response::Error(rejection)),
            Proto::Presence => self.respond_presence(channel, pw::Response::Error(rejection)),
            Proto::Directory => {
                // Counted above; respond_directory would count it again.
                self.respond_bytes_directory_error(channel, rejection)
            }
        }
    }
}

/// A storage failure as a rejection; transient ones carry a retry hint.
pub(super) fn busy(e: storage::OpError) -> Rejection {
    let code = e.code();
    Rejection {
        code,
        retry_after_ms: matches!(code, ErrorCode::Unavailable).then_some(100),
    }
}
