//! The relay's requests as typed calls, whatever carries them.
//!
//! [`Transport`] is how one request frame reaches a relay and its answer comes back: the
//! relay's own [`crate::client::Client`] (a task owning a swarm to one relay), or a node's
//! network task that talks to many relays ("this relay, over that swarm"). [`Requests`]
//! gives every relay request as a typed call on any transport, with one error type,
//! [`RequestError`], which carries the relay's codes ([`crate::wire::ErrorCode`]) when it
//! refuses. Behaviour a caller adds on top (a node opening its live stream after `Listen`,
//! acknowledging on that stream) stays with the caller.

use std::{future::Future, time::Duration};

use libp2p::PeerId;
use serde_bytes::{ByteArray, ByteBuf};

use crate::wire::{
    DecodeError, EncodeError, ErrorCode, Frame, Rejection, directory,
    mailbox::{self, Envelope},
    presence,
};

/// Requests of one protocol a client keeps unanswered at one relay by default: a relay's
/// default `connections.max_concurrent_streams`. A relay drops the streams beyond its limit
/// on a connection, so a client that opens more loses those requests.
pub const DEFAULT_REQUESTS_IN_FLIGHT: usize = 64;

/// Places for requests in flight, one set per protocol (a relay limits each protocol's
/// streams on its own): a request takes one before it is sent and gives it back when it is
/// answered or fails, so at most `n` of a protocol are unanswered and the next waits.
#[derive(Debug)]
pub struct InFlight([std::sync::Arc<tokio::sync::Semaphore>; 3]);

impl InFlight {
    /// `n` places per protocol (at least 1).
    pub fn new(n: usize) -> Self {
        let n = n.max(1);
        Self(std::array::from_fn(|_| {
            std::sync::Arc::new(tokio::sync::Semaphore::new(n))
        }))
    }

    /// Waits for a place for a request of `proto`.
    pub async fn acquire(
        &self,
        proto: Proto,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, RequestError> {
        let i = match proto {
            Proto::Mailbox => 0,
            Proto::Presence => 1,
            Proto::Directory => 2,
        };
        self.0[i]
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| RequestError::Closed)
    }
}

/// Which relay protocol a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// `/tern/mailbox/1`.
    Mailbox,
    /// `/tern/presence/1`.
    Presence,
    /// `/tern/directory/1`.
    Directory,
}

/// What a relay sends unasked, as a request on one of its protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Pushed {
    /// New mail for the device (`Deliver` on `/tern/mailbox/1`); still to be acknowledged.
    Mail(Vec<Envelope>),
    /// Changes of subscribed peers (`Update` on `/tern/presence/1`).
    Presence(Vec<presence::Entry>),
}

/// Reads a request a relay sent on `proto` and makes the answer to send back: what was
/// pushed and `Ok`, or nothing and a `BadRequest` refusal for anything else (a client is
/// never asked on `/tern/directory/1`). The relay client and a node's network task both
/// answer with it, so they refuse the same things the same way.
pub fn answer_pushed(
    proto: Proto,
    request: &Frame,
) -> (Option<Pushed>, Result<Vec<u8>, EncodeError>) {
    let bad = || Rejection::new(ErrorCode::BadRequest);
    match proto {
        Proto::Mailbox => match mailbox::Request::from_frame(request) {
            Ok(mailbox::Request::Deliver { messages }) => {
                (Some(Pushed::Mail(messages)), mailbox::Response::Ok.encode())
            }
            _ => (None, mailbox::Response::Error(bad()).encode()),
        },
        Proto::Presence => match presence::Request::from_frame(request) {
            Ok(presence::Request::Update { entries }) => (
                Some(Pushed::Presence(entries)),
                presence::Response::Ok.encode(),
            ),
            _ => (None, presence::Response::Error(bad()).encode()),
        },
        Proto::Directory => (None, directory::Response::Error(bad()).encode()),
    }
}

/// Why a request failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The task that sends requests has stopped.
    #[error("network stopped")]
    Closed,
    /// The request could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// The stream failed (no connection, timeout, protocol not supported).
    #[error("request failed: {0}")]
    Transport(String),
    /// The peer refused the stream's protocol: nothing sent on it was taken. A deposit
    /// stream refused this way is to a relay that takes deposits only as requests
    /// ([`crate::pipeline::deposit`] sends them so).
    #[error("protocol not supported by the peer")]
    Unsupported,
    /// The answer could not be decoded.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The relay (or peer) refused the request.
    #[error("refused: {} (retry after {:?} ms)", .0.code.label(), .0.retry_after_ms)]
    Rejected(Rejection),
    /// The answer was of the wrong kind.
    #[error("unexpected response: {0}")]
    Unexpected(String),
}

impl RequestError {
    /// The relay's code, if it refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            RequestError::Rejected(r) => Some(r.code),
            _ => None,
        }
    }

    /// When to try again, if the relay said (a rate limit, a full disk).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            RequestError::Rejected(r) => r.retry_after_ms.map(Duration::from_millis),
            _ => None,
        }
    }
}

/// How a request frame reaches one relay and its answer frame comes back.
pub trait Transport: Sync {
    /// Sends `frame` on `proto` and returns the answer.
    fn send(
        &self,
        proto: Proto,
        frame: Vec<u8>,
    ) -> impl Future<Output = Result<Frame, RequestError>> + Send;
}

fn unexpected(what: impl std::fmt::Debug) -> RequestError {
    RequestError::Unexpected(format!("{what:?}"))
}

/// The `Deposit` request for `recipients`, with a deposit token per recipient (in their
/// order; empty for none), whatever carries it (a request, or the deposit stream).
pub fn deposit_request(
    recipients: Vec<PeerId>,
    tokens: Vec<Option<[u8; 32]>>,
    ttl_secs: Option<u32>,
    ciphertext: Vec<u8>,
) -> mailbox::Request {
    // No token at all goes as no list.
    let tokens = if tokens.iter().any(Option::is_some) {
        tokens.into_iter().map(|t| t.map(ByteArray::new)).collect()
    } else {
        Vec::new()
    };
    mailbox::Request::Deposit {
        recipients,
        ttl_secs,
        ciphertext: ByteBuf::from(ciphertext),
        tokens,
        follows: None,
    }
}

/// What the answer to a deposit means: the message id and the recipients it did not reach,
/// or the relay's refusal.
pub fn deposited(
    response: mailbox::Response,
) -> Result<(u64, Vec<mailbox::Refusal>), RequestError> {
    match response {
        mailbox::Response::Deposited {
            message, refused, ..
        } => Ok((message, refused)),
        mailbox::Response::Error(r) => Err(RequestError::Rejected(r)),
        other => Err(unexpected(other)),
    }
}

/// Every relay request as a typed call, on any [`Transport`].
pub trait Requests: Transport {
    /// A mailbox request; a refusal is [`RequestError::Rejected`].
    fn mailbox(
        &self,
        req: mailbox::Request,
    ) -> impl Future<Output = Result<mailbox::Response, RequestError>> + Send {
        async move {
            let answer = self.send(Proto::Mailbox, req.encode()?).await?;
            match mailbox::Response::from_frame(&answer)? {
                mailbox::Response::Error(r) => Err(RequestError::Rejected(r)),
                other => Ok(other),
            }
        }
    }

    /// A presence request; a refusal is [`RequestError::Rejected`].
    fn presence(
        &self,
        req: presence::Request,
    ) -> impl Future<Output = Result<presence::Response, RequestError>> + Send {
        async move {
            let answer = self.send(Proto::Presence, req.encode()?).await?;
            match presence::Response::from_frame(&answer)? {
                presence::Response::Error(r) => Err(RequestError::Rejected(r)),
                other => Ok(other),
            }
        }
    }

    /// A directory request; a refusal is [`RequestError::Rejected`].
    fn directory(
        &self,
        req: directory::Request,
    ) -> impl Future<Output = Result<directory::Response, RequestError>> + Send {
        async move {
            let answer = self.send(Proto::Directory, req.encode()?).await?;
            match directory::Response::from_frame(&answer)? {
                directory::Response::Error(r) => Err(RequestError::Rejected(r)),
                other => Ok(other),
            }
        }
    }

    /// Deposits `ciphertext` for `recipients`, showing a deposit token per recipient (in
    /// their order; empty for none); returns once the relay has made it durable, with its
    /// message id and the recipients it did not reach, with why.
    fn deposit_with(
        &self,
        recipients: Vec<PeerId>,
        tokens: Vec<Option<[u8; 32]>>,
        ttl_secs: Option<u32>,
        ciphertext: Vec<u8>,
    ) -> impl Future<Output = Result<(u64, Vec<mailbox::Refusal>), RequestError>> + Send {
        async move {
            let req = deposit_request(recipients, tokens, ttl_secs, ciphertext);
            deposited(self.mailbox(req).await?)
        }
    }

    /// [`Requests::deposit_with`] without tokens.
    fn deposit(
        &self,
        recipients: Vec<PeerId>,
        ttl_secs: Option<u32>,
        ciphertext: Vec<u8>,
    ) -> impl Future<Output = Result<(u64, Vec<mailbox::Refusal>), RequestError>> + Send {
        self.deposit_with(recipients, Vec::new(), ttl_secs, ciphertext)
    }

    /// Replaces the grants (token hashes) the caller's mailbox takes deposits under.
    fn set_grants(
        &self,
        hashes: Vec<[u8; 32]>,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        let hashes = hashes.into_iter().map(ByteArray::new).collect();
        self.expect_ok(mailbox::Request::SetGrants { hashes })
    }

    /// Registers (or with `None` removes) the caller's push endpoint.
    fn register_push(
        &self,
        url: Option<String>,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        self.expect_ok(mailbox::Request::RegisterPush { url })
    }

    /// Starts or stops live delivery of new mail to the caller.
    fn set_listen(&self, enabled: bool) -> impl Future<Output = Result<(), RequestError>> + Send {
        self.expect_ok(mailbox::Request::Listen { enabled })
    }

    /// A mailbox request answered with `Ok`.
    fn expect_ok(
        &self,
        req: mailbox::Request,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        async move {
            match self.mailbox(req).await? {
                mailbox::Response::Ok => Ok(()),
                other => Err(unexpected(other)),
            }
        }
    }

    /// How full the caller's mailbox is, and by whom.
    fn usage(&self) -> impl Future<Output = Result<mailbox::Usage, RequestError>> + Send {
        async move {
            match self.mailbox(mailbox::Request::Usage).await? {
                mailbox::Response::Usage(u) => Ok(u),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Fetches up to `limit` messages after the cursor `after`; says whether more follow.
    fn fetch(
        &self,
        after: u64,
        limit: u32,
    ) -> impl Future<Output = Result<(Vec<Envelope>, bool), RequestError>> + Send {
        async move {
            match self
                .mailbox(mailbox::Request::Fetch { after, limit })
                .await?
            {
                mailbox::Response::Messages { messages, more } => Ok((messages, more)),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Acknowledges (deletes) messages; returns how many were removed.
    fn ack(&self, ids: Vec<u64>) -> impl Future<Output = Result<u32, RequestError>> + Send {
        async move {
            match self.mailbox(mailbox::Request::Ack { ids }).await? {
                mailbox::Response::Acked { removed } => Ok(removed),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Publishes a signed device list (`tern_crypto::SignedDeviceList` bytes); the caller
    /// must be active in it.
    fn publish_device_list(
        &self,
        list: Vec<u8>,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        async move {
            let req = directory::Request::PublishDeviceList {
                list: ByteBuf::from(list),
            };
            match self.directory(req).await? {
                directory::Response::Ok => Ok(()),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Fetches a user's signed device list bytes (verify them with `tern-crypto`).
    fn fetch_device_list(
        &self,
        user: [u8; directory::USER_ID_BYTES],
    ) -> impl Future<Output = Result<Vec<u8>, RequestError>> + Send {
        async move {
            let req = directory::Request::FetchDeviceList {
                user: ByteBuf::from(user.to_vec()),
            };
            match self.directory(req).await? {
                directory::Response::DeviceList { list } => Ok(list.into_vec()),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Publishes the caller's prekey bundle; returns how many one-time keys the relay holds.
    fn publish_prekeys(
        &self,
        bundle: Vec<u8>,
    ) -> impl Future<Output = Result<u32, RequestError>> + Send {
        async move {
            let req = directory::Request::PublishPrekeys {
                bundle: ByteBuf::from(bundle),
            };
            match self.directory(req).await? {
                directory::Response::Published { one_time_keys } => Ok(one_time_keys),
                other => Err(unexpected(other)),
            }
        }
    }

    /// How many one-time keys the relay holds for the caller.
    fn prekey_count(&self) -> impl Future<Output = Result<u32, RequestError>> + Send {
        async move {
            match self.directory(directory::Request::PrekeyCount).await? {
                directory::Response::Published { one_time_keys } => Ok(one_time_keys),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Claims one prekey of `device` (`tern_crypto::prekey::ClaimedPrekey` bytes, to verify
    /// against the user's device list) and whether it is the fallback key.
    fn claim_prekey(
        &self,
        user: [u8; directory::USER_ID_BYTES],
        device: PeerId,
    ) -> impl Future<Output = Result<(Vec<u8>, bool), RequestError>> + Send {
        async move {
            let req = directory::Request::ClaimPrekey {
                user: ByteBuf::from(user.to_vec()),
                device,
            };
            match self.directory(req).await? {
                directory::Response::Prekey { claim, fallback } => Ok((claim.into_vec(), fallback)),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Sends a heartbeat with a status.
    fn heartbeat(
        &self,
        status: presence::Status,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        self.presence_ok(presence::Request::Heartbeat { status })
    }

    /// Replaces who may see the caller's presence.
    fn set_allow_list(
        &self,
        peers: Vec<PeerId>,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        self.presence_ok(presence::Request::SetAllowList { peers })
    }

    /// A presence request answered with `Ok`.
    fn presence_ok(
        &self,
        req: presence::Request,
    ) -> impl Future<Output = Result<(), RequestError>> + Send {
        async move {
            match self.presence(req).await? {
                presence::Response::Ok => Ok(()),
                other => Err(unexpected(other)),
            }
        }
    }

    /// Asks for the presence of `peers` once.
    fn query(
        &self,
        peers: Vec<PeerId>,
    ) -> impl Future<Output = Result<Vec<presence::Entry>, RequestError>> + Send {
        self.presence_entries(presence::Request::Query { peers })
    }

    /// Subscribes to changes of `peers` (replacing any earlier subscription); returns their
    /// current presence.
    fn subscribe(
        &self,
        peers: Vec<PeerId>,
    ) -> impl Future<Output = Result<Vec<presence::Entry>, RequestError>> + Send {
        self.presence_entries(presence::Request::Subscribe { peers })
    }

    /// A presence request answered with entries.
    fn presence_entries(
        &self,
        req: presence::Request,
    ) -> impl Future<Output = Result<Vec<presence::Entry>, RequestError>> + Send {
        async move {
            match self.presence(req).await? {
                presence::Response::Presence { entries } => Ok(entries),
                other => Err(unexpected(other)),
            }
        }
    }
}

impl<T: Transport> Requests for T {}

#[cfg(test)]
mod tests {
    use super::*;

    /// At most `n` requests of a protocol hold a place; the next waits until one is given
    /// back, and the other protocols have places of their own.
    #[tokio::test]
    async fn requests_in_flight_are_bounded_per_protocol() {
        let places = InFlight::new(2);
        let a = places.acquire(Proto::Directory).await.unwrap();
        let _b = places.acquire(Proto::Directory).await.unwrap();
        let third = places.acquire(Proto::Directory);
        tokio::pin!(third);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), &mut third).await;
        assert!(waited.is_err(), "a third directory request went out");
        let _mail = places.acquire(Proto::Mailbox).await.unwrap();
        drop(a);
        let _third = third.await.unwrap();
    }

    #[test]
    fn pushed_mail_and_presence_are_taken_and_anything_else_refused() {
        let deliver = mailbox::Request::Deliver { messages: vec![] };
        let (pushed, answer) =
            answer_pushed(Proto::Mailbox, &Frame::Data(deliver.encode().unwrap()));
        assert_eq!(pushed, Some(Pushed::Mail(vec![])));
        assert_eq!(
            mailbox::Response::decode(&answer.unwrap()).unwrap(),
            mailbox::Response::Ok
        );

        let update = presence::Request::Update { entries: vec![] };
        let (pushed, answer) =
            answer_pushed(Proto::Presence, &Frame::Data(update.encode().unwrap()));
        assert_eq!(pushed, Some(Pushed::Presence(vec![])));
        assert_eq!(
            presence::Response::decode(&answer.unwrap()).unwrap(),
            presence::Response::Ok
        );

        let (pushed, answer) = answer_pushed(Proto::Mailbox, &Frame::Data(vec![0xff, 0x00]));
        assert_eq!(pushed, None);
        assert!(matches!(
            mailbox::Response::decode(&answer.unwrap()).unwrap(),
            mailbox::Response::Error(r) if r.code == ErrorCode::BadRequest
        ));
        // A presence update sent on the mailbox protocol is not mail.
        let (pushed, _) = answer_pushed(Proto::Mailbox, &Frame::Data(update.encode().unwrap()));
        assert_eq!(pushed, None);
        let (pushed, answer) =
            answer_pushed(Proto::Directory, &Frame::Data(deliver.encode().unwrap()));
        assert_eq!(pushed, None);
        assert!(matches!(
            directory::Response::decode(&answer.unwrap()).unwrap(),
            directory::Response::Error(r) if r.code == ErrorCode::BadRequest
        ));
    }
}
