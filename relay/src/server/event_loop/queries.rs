//! Presence and directory requests: presence subscriptions and heartbeats, and directory
//! requests, whose signatures are checked off the event loop before the writer is asked.
//!
//! Uses `answer`.

use std::{sync::atomic::Ordering::Relaxed, time::Instant};

use libp2p::{PeerId, request_response::ResponseChannel};
use tokio::sync::oneshot;

use super::{Completion, EventLoop, Proto, await_reply, now_ms};
use crate::{
    server::storage,
    wire::{ErrorCode, Frame, Rejection, directory as dw, presence as pw},
};

impl EventLoop {
    pub(super) fn on_presence(
        &mut self,
        peer: PeerId,
        req: pw::Request,
        channel: ResponseChannel<Frame>,
    ) {
        match req {
            pw::Request::Heartbeat { status } => {
                self.presence
                    .heartbeat(peer, status, Instant::now(), now_ms());
                self.respond_presence(channel, pw::Response::Ok);
            }
            pw::Request::SetAllowList { peers } => {
                if peers.len() > pw::MAX_PEERS {
                    return self.reject(
                        Proto::Presence,
                        channel,
                        Rejection::new(ErrorCode::BadRequest),
                    );
                }
                let viewers = peers.clone();
                self.submit(
                    Proto::Presence,
                    channel,
                    |reply| storage::Op::SetAllowList {
                        owner: peer,
                        viewers,
                        reply,
                    },
                    move |channel, result| Completion::SetAllow {
                        channel,
                        peer,
                        viewers: peers,
                        result,
                    },
                );
            }
            pw::Request::Query { peers } => {
                if peers.len() > pw::MAX_PEERS {
                    return self.reject(
                        Proto::Presence,
                        channel,
                        Rejection::new(ErrorCode::BadRequest),
                    );
                }
                let entries = self.presence.query(&peer, &peers);
                self.respond_presence(channel, pw::Response::Presence { entries });
            }
            pw::Request::Subscribe { peers } => {
                if peers.len() > pw::MAX_PEERS {
                    return self.reject(
                        Proto::Presence,
                        channel,
                        Rejection::new(ErrorCode::BadRequest),
                    );
                }
                let entries = self.presence.subscribe(peer, &peers);
                self.respond_presence(channel, pw::Response::Presence { entries });
            }
            // Only the relay sends updates.
            pw::Request::Update { .. } => {
                self.reject(
                    Proto::Presence,
                    channel,
                    Rejection::new(ErrorCode::BadRequest),
                );
            }
        }
    }

    /// Whether a prekey claim may take a one-time key (`[prekeys]` limits); over them the
    /// claimer gets the fallback key. Other requests: true (unused).
    pub(super) fn one_time_allowed(&mut self, claimer: PeerId, req: &dw::Request) -> bool {
        let dw::Request::ClaimPrekey { device, .. } = req else {
            return true;
        };
        let allowed = self.claims.allow_one_time(claimer, *device, Instant::now());
        if !allowed {
            self.metrics.claims_limited.fetch_add(1, Relaxed);
        }
        allowed
    }
}

fn dir_error(code: ErrorCode) -> dw::Response {
    dw::Response::Error(Rejection::new(code))
}

/// Runs `f` on the blocking pool (signature checks), mapping a lost task to `Internal`.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ErrorCode> + Send + 'static,
) -> Result<T, ErrorCode> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or(Err(ErrorCode::Internal))
}

/// Serves one directory request: checks signatures off the event loop, then asks the
/// writer, which re-checks against stored state inside its transaction.
/// `one_time`: whether a claim may take a one-time key (else it gets the fallback key).
pub(super) async fn directory_request(
    storage: storage::StorageHandle,
    peer: PeerId,
    req: dw::Request,
    one_time: bool,
) -> dw::Response {
    use crate::server::directory::{build_claim, verify_bundle, verify_list};
    match req {
        dw::Request::PublishDeviceList { list } => {
            let v = match blocking(move || verify_list(list.into_vec(), peer)).await {
                Ok(v) => v,
                Err(code) => return dir_error(code),
            };
            match ask(&storage, |reply| storage::Op::PublishList {
                user: v.user,
                body: v.body,
                check: v.check,
                reply,
            })
            .await
            {
                Ok(()) => dw::Response::Ok,
                Err(e) => dir_error(e.code()),
            }
        }
        dw::Request::FetchDeviceList { user } => {
            if user.len() != dw::USER_ID_BYTES {
                return dir_error(ErrorCode::BadRequest);
            }
            match ask(&storage, |reply| storage::Op::FetchList {
                user: user.into_vec(),
                reply,
            })
            .await
            {
                Ok(Some(list)) => dw::Response::DeviceList {
                    list: serde_bytes::ByteBuf::from(list),
                },
                Ok(None) => dir_error(ErrorCode::NotFound),
                Err(e) => dir_error(e.code()),
            }
        }
        dw::Request::PublishPrekeys { bundle } => {
            let v = match blocking(move || verify_bundle(&bundle, peer)).await {
                Ok(v) => v,
                Err(code) => return dir_error(code),
            };
            match ask(&storage, |reply| storage::Op::PublishPrekeys {
                device: v.device,
                user: v.user,
                bundle: v.bundle,
                one_time: v.one_time,
                check: v.check,
                reply,
            })
            .await
            {
                Ok(n) => dw::Response::Published { one_time_keys: n },
                Err(e) => dir_error(e.code()),
            }
        }
        dw::Request::ClaimPrekey { user, device } => {
            if user.len() != dw::USER_ID_BYTES {
                return dir_error(ErrorCode::BadRequest);
            }
            match ask(&storage, |reply| storage::Op::Claim {
                device: device.to_bytes(),
                user: user.into_vec(),
                one_time,
                reply,
            })
            .await
            {
                Ok(Some((bundle, key))) => {
                    match blocking(move || build_claim(&bundle, key.as_deref())).await {
                        Ok((claim, fallback)) => dw::Response::Prekey {
                            claim: serde_bytes::ByteBuf::from(claim),
                            fallback,
                        },
                        Err(code) => dir_error(code),
                    }
                }
                Ok(None) => dir_error(ErrorCode::NotFound),
                Err(e) => dir_error(e.code()),
            }
        }
        dw::Request::PrekeyCount => {
            match ask(&storage, |reply| storage::Op::PrekeyCount {
                device: peer.to_bytes(),
                reply,
            })
            .await
            {
                Ok(n) => dw::Response::Published { one_time_keys: n },
                Err(e) => dir_error(e.code()),
            }
        }
    }
}

/// Queues the storage operation `op` makes with its reply sender and waits for the answer.
async fn ask<T: Send + 'static>(
    storage: &storage::StorageHandle,
    op: impl FnOnce(oneshot::Sender<Result<T, storage::OpError>>) -> storage::Op,
) -> Result<T, storage::OpError> {
    let (reply, rx) = oneshot::channel();
    storage.submit_wait(op(reply)).await?;
    await_reply(rx).await
}
