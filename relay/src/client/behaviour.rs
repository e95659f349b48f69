//! The composed behaviour a client runs; a module of its own because the derive generates
//! an event enum without docs.

use std::time::Duration;

use libp2p::{
    StreamProtocol, identify, ping,
    request_response::{self, ProtocolSupport},
    swarm::NetworkBehaviour,
};

use super::{Keypair, MAX_STREAMS};
use crate::wire::{FrameCodec, directory, mailbox, presence};

/// The libp2p behaviour a client runs: identify, ping and the relay protocols.
#[derive(NetworkBehaviour)]
#[behaviour(prelude = "libp2p::swarm::derive_prelude")]
pub struct Behaviour {
    /// Identify, so the relay learns our listen addresses and agent.
    pub identify: identify::Behaviour,
    /// Ping, for liveness.
    pub ping: ping::Behaviour,
    /// `/tern/mailbox/1`.
    pub mailbox: request_response::Behaviour<FrameCodec>,
    /// `/tern/presence/1`.
    pub presence: request_response::Behaviour<FrameCodec>,
    /// `/tern/directory/1` (outbound only).
    pub directory: request_response::Behaviour<FrameCodec>,
    /// `/tern/live/1` (opened by us after `Listen`).
    pub live: crate::live::Behaviour,
    /// `/tern/blob/1`: a stream per blob transfer, opened through a
    /// [`libp2p_stream::Control`].
    pub blob: libp2p_stream::Behaviour,
}

impl std::fmt::Debug for Behaviour {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("client::Behaviour(..)")
    }
}

impl Behaviour {
    /// The behaviour for a device with this public key.
    pub fn new(key: &Keypair, request_timeout: Duration) -> Self {
        let rr = |p: StreamProtocol, c: FrameCodec| {
            request_response::Behaviour::with_codec(
                c,
                [(p, ProtocolSupport::Full)],
                rr_config(request_timeout),
            )
        };
        Self {
            identify: identify::Behaviour::new(identify::Config::new(
                "/tern/1".into(),
                key.public(),
            )),
            ping: crate::ping_behaviour(),
            mailbox: rr(mailbox::PROTOCOL, mailbox::codec()),
            presence: rr(presence::PROTOCOL, presence::codec()),
            directory: request_response::Behaviour::with_codec(
                directory::codec(),
                [(directory::PROTOCOL, ProtocolSupport::Outbound)],
                rr_config(request_timeout),
            ),
            live: crate::live::Behaviour::client(),
            blob: libp2p_stream::Behaviour::new(),
        }
    }
}

/// Every request/response protocol's settings: the timeout, and room for
/// [`MAX_STREAMS`] streams at once.
fn rr_config(request_timeout: Duration) -> request_response::Config {
    request_response::Config::default()
        .with_request_timeout(request_timeout)
        .with_max_concurrent_streams(MAX_STREAMS)
}
