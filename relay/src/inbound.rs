//! Inbound streams of chosen protocols, each protocol's handed to its task through a queue
//! that holds many ([`QUEUE`]).
//!
//! libp2p-stream hands inbound streams over through a queue of one: a stream that arrives
//! while another is waiting for the accepting task is dropped unread, and its opener sees
//! it closed. Streams opened together meet that queue at once: with 64 clients opening a
//! deposit stream each at the same moment, 52 to 62 of them were dropped (three runs), which
//! is what every node does when a relay comes back after a restart. Here each connection
//! hands its streams straight to a bounded queue per protocol; a stream is dropped only when
//! [`QUEUE`] are waiting, which means the accepting task is stuck, not busy.
//!
//! The streams keep their connection open while they are open (libp2p counts them); this
//! behaviour opens none and keeps no connection open by itself.

use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol,
    core::{Endpoint, InboundUpgrade, UpgradeInfo, transport::PortUse, upgrade::DeniedUpgrade},
    swarm::{
        ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
        NetworkBehaviour, SubstreamProtocol, THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
        handler::{ConnectionEvent, FullyNegotiatedInbound},
    },
};
use tokio::sync::mpsc;

/// Streams of one protocol waiting for their task; beyond this a new one is dropped.
pub const QUEUE: usize = 1024;

/// Streams dropped because their queue was full, since the process started.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// One protocol's queue.
#[derive(Debug)]
struct Route {
    protocol: StreamProtocol,
    tx: mpsc::Sender<(PeerId, Stream)>,
}

/// The inbound streams of one protocol, in the order they were opened on each connection.
#[derive(Debug)]
pub struct Incoming(mpsc::Receiver<(PeerId, Stream)>);

impl Incoming {
    /// The next stream and the peer that opened it; `None` once the behaviour is gone.
    pub async fn next(&mut self) -> Option<(PeerId, Stream)> {
        self.0.recv().await
    }
}

/// Accepts inbound streams of its protocols on every connection.
#[derive(Debug)]
pub struct Behaviour {
    routes: Arc<[Route]>,
}

impl Behaviour {
    /// Accepts `protocols`; their streams come out of the [`Incoming`] at the same place.
    pub fn new<const N: usize>(protocols: [StreamProtocol; N]) -> (Self, [Incoming; N]) {
        let mut routes = Vec::with_capacity(N);
        let incoming = protocols.map(|protocol| {
            let (tx, rx) = mpsc::channel(QUEUE);
            routes.push(Route { protocol, tx });
            Incoming(rx)
        });
        (
            Self {
                routes: routes.into(),
            },
            incoming,
        )
    }

    fn handler(&self, peer: PeerId) -> Handler {
        Handler {
            peer,
            routes: self.routes.clone(),
        }
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(self.handler(peer))
    }

    fn on_swarm_event(&mut self, _: FromSwarm<'_>) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

/// The protocols a connection offers its peer, and the stream with the one it chose.
#[derive(Debug, Clone)]
pub struct Protocols(Arc<[Route]>);

impl UpgradeInfo for Protocols {
    type Info = StreamProtocol;
    type InfoIter = std::vec::IntoIter<StreamProtocol>;

    fn protocol_info(&self) -> Self::InfoIter {
        let names: Vec<_> = self.0.iter().map(|r| r.protocol.clone()).collect();
        names.into_iter()
    }
}

impl InboundUpgrade<Stream> for Protocols {
    type Output = (Stream, StreamProtocol);
    type Error = Infallible;
    type Future = Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, stream: Stream, protocol: Self::Info) -> Self::Future {
        ready(Ok((stream, protocol)))
    }
}

/// One connection's side: hands each negotiated stream to its protocol's queue.
#[derive(Debug)]
pub struct Handler {
    peer: PeerId,
    routes: Arc<[Route]>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Infallible;
    type ToBehaviour = Infallible;
    type InboundProtocol = Protocols;
    type OutboundProtocol = DeniedUpgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(Protocols(self.routes.clone()), ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        Poll::Pending
    }

    fn on_behaviour_event(&mut self, event: Self::FromBehaviour) {
        match event {}
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<'_, Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        let ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
            protocol: (stream, protocol),
            ..
        }) = event
        else {
            return;
        };
        let Some(route) = self.routes.iter().find(|r| r.protocol == protocol) else {
            return;
        };
        match route.tx.try_send((self.peer, stream)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Said once per [`QUEUE`] drops, so a flood of streams cannot flood the log.
                let n = DROPPED.fetch_add(1, Ordering::Relaxed);
                if n.is_multiple_of(QUEUE as u64) {
                    tracing::warn!(
                        %protocol,
                        dropped = n + 1,
                        "new streams are not being taken; dropping what does not fit the queue"
                    );
                }
            }
            // Nobody accepts them any more (the relay is stopping): dropping closes it.
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }
}
