//! `/tern/deposit/1`: pipelined deposits on one long-lived, ordered stream per connection.
//!
//! The client opens the stream and writes deposits on it, each a length-prefixed frame
//! ([`super::stream`]) holding a `/tern/mailbox/1` [`Request::Deposit`](super::mailbox::Request)
//! frame. The n-th frame (counting from 0) is deposit number n of the stream: the numbers
//! are implicit, so a frame carries nothing the request/response protocol does not. The
//! relay answers each deposit with an [`Answer`] frame carrying its number and the same
//! [`mailbox::Response`] a `Deposit` request would get (`Deposited` after the commit, or
//! `Error` with the same codes). Answers may come in any order (a refusal is answered at
//! once, or held back like on `/tern/mailbox/1`, while earlier deposits wait for their
//! commit); deposits are stored in the order of the stream.
//!
//! The relay reads at most its window of deposits ahead of its answers and holds at most its
//! byte budget of unanswered frames per stream; beyond either it stops reading, and the
//! stream's flow control holds the client back. Either side may close the stream; deposits
//! not answered by then have failed from the client's point of view (they may or may not be
//! stored, like a request whose answer was lost), and request/response remains the fallback.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use super::mailbox;

/// The protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/tern/deposit/1");

/// Longest frame a relay reads on the stream (one deposit request).
pub const MAX_DEPOSIT_FRAME_BYTES: usize = mailbox::MAX_REQUEST_BYTES;

/// Longest answer frame: a `Deposited` listing a refusal for every recipient, or an `Error`.
pub const MAX_ANSWER_BYTES: usize = 64 + mailbox::MAX_RECIPIENTS * 64;

/// Deposits a client keeps in flight on one stream unless told otherwise: enough to fill a
/// group commit of the relay's writer from a few connections, small enough that a stream
/// that breaks leaves few deposits to send again.
pub const DEFAULT_WINDOW: usize = 256;

/// The relay's answer to deposit number `seq` of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Which deposit (the n-th frame of the stream, from 0).
    pub seq: u64,
    /// What a `Deposit` request would have been answered.
    pub response: mailbox::Response,
}

framed!(Answer, "deposit answer", MAX_ANSWER_BYTES);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{ErrorCode, Rejection};

    #[test]
    fn answers_round_trip() {
        for response in [
            mailbox::Response::Deposited {
                message: 9,
                recipients: 1,
                refused: vec![mailbox::Refusal {
                    peer: libp2p::PeerId::random(),
                    code: ErrorCode::ShareFull,
                }],
            },
            mailbox::Response::Error(Rejection {
                code: ErrorCode::RateLimited,
                retry_after_ms: Some(12),
            }),
        ] {
            let a = Answer {
                seq: u64::MAX - 1,
                response,
            };
            assert_eq!(Answer::decode(&a.encode().unwrap()).unwrap(), a);
        }
    }

    #[test]
    fn an_answer_refusing_every_recipient_fits() {
        let a = Answer {
            seq: u64::MAX,
            response: mailbox::Response::Deposited {
                message: u64::MAX,
                recipients: 0,
                refused: (0..mailbox::MAX_RECIPIENTS)
                    .map(|_| mailbox::Refusal {
                        peer: libp2p::PeerId::random(),
                        code: ErrorCode::QuotaBytes,
                    })
                    .collect(),
            },
        };
        assert!(a.encode().is_ok());
    }
}
