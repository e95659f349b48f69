//! Request dispatch: a request/response event is admitted, decoded and routed to the
//! handler of its protocol (`requests`, `deposit`, `queries`).
//!
//! Uses `admission`, `answer` and those handlers; nothing calls back into it but `swarm`.

use libp2p::{
    PeerId,
    request_response::{self, Message, ResponseChannel},
};

use super::{Completion, EventLoop, Proto, queries::directory_request};
use crate::wire::{ErrorCode, Frame, Rejection, directory as dw, mailbox, presence as pw};

impl EventLoop {
    pub(super) fn on_rr_event(&mut self, proto: Proto, ev: request_response::Event<Frame, Frame>) {
        match ev {
            request_response::Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_request(proto, peer, request, channel),
            request_response::Event::Message {
                message: Message::Response { .. },
                ..
            } => {}
            request_response::Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "relay-initiated request failed");
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }

    fn on_request(
        &mut self,
        proto: Proto,
        peer: PeerId,
        frame: Frame,
        channel: ResponseChannel<Frame>,
    ) {
        match self.admit(peer) {
            Ok(()) => {}
            Err(Some(rejection)) => return self.reject(proto, channel, rejection),
            Err(None) => return,
        }
        match proto {
            Proto::Mailbox => match mailbox::Request::from_frame(&frame) {
                Ok(req) => self.on_mailbox(peer, req, channel),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad mailbox frame");
                    self.reject(
                        proto,
                        channel,
                        Rejection::new(ErrorCode::for_decode_error(&e)),
                    );
                }
            },
            Proto::Directory => match dw::Request::from_frame(&frame) {
                Ok(req) => {
                    let one_time = self.one_time_allowed(peer, &req);
                    let storage = self.storage.clone();
                    self.pending.push(Box::pin(async move {
                        let response = directory_request(storage, peer, req, one_time).await;
                        Completion::Directory { channel, response }
                    }));
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad directory frame");
                    self.reject(
                        proto,
                        channel,
                        Rejection::new(ErrorCode::for_decode_error(&e)),
                    );
                }
            },
            Proto::Presence => match pw::Request::from_frame(&frame) {
                Ok(req) => self.on_presence(peer, req, channel),
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "bad presence frame");
                    self.reject(
                        proto,
                        channel,
                        Rejection::new(ErrorCode::for_decode_error(&e)),
                    );
                }
            },
        }
    }
}
