//! The transport ceiling of the `relay` suite: a bare libp2p request/response echo server.

use std::time::Duration;

use anyhow::Context;
use tern_relay::{
    Multiaddr,
    libp2p::{
        self, SwarmBuilder, futures::StreamExt, noise, request_response, swarm::SwarmEvent, tcp,
        yamux,
    },
    wire::{Frame, mailbox},
};

use super::START_TIMEOUT;

/// The transport ceiling: a libp2p request/response server on the same transport (TCP,
/// Noise, Yamux) and protocol id as the relay's mailbox, answering every request at once
/// with `Ok`, on its own thread and single-threaded runtime as the relay has its own
/// process and (by default) one network thread.
pub(super) struct EchoServer {
    pub(super) addr: Multiaddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EchoServer {
    /// Starts the server on its own thread and waits for its address.
    pub(super) fn start() -> anyhow::Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            // Single-threaded, like the relay's default runtime.
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let ok = match mailbox::Response::Ok.encode() {
                    Ok(b) => b,
                    Err(_) => return,
                };
                let built = SwarmBuilder::with_new_identity()
                    .with_tokio()
                    .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
                    .map(|b| {
                        b.with_behaviour(|_| {
                            request_response::Behaviour::with_codec(
                                mailbox::codec(),
                                [(mailbox::PROTOCOL, request_response::ProtocolSupport::Full)],
                                request_response::Config::default().with_max_concurrent_streams(1024),
                            )
                        })
                    });
                let Ok(Ok(builder)) = built else { return };
                let mut swarm = builder
                    .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
                    .build();
                let Ok(listen) = "/ip4/127.0.0.1/tcp/0".parse::<Multiaddr>() else { return };
                if swarm.listen_on(listen).is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        ev = swarm.select_next_some() => match ev {
                            SwarmEvent::NewListenAddr { address, .. } => {
                                let full = address.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id()));
                                let _ = addr_tx.send(full);
                            }
                            SwarmEvent::Behaviour(request_response::Event::Message {
                                message: request_response::Message::Request { channel, .. },
                                ..
                            }) => {
                                let _ = swarm.behaviour_mut().send_response(channel, Frame::Data(ok.clone()));
                            }
                            _ => {}
                        }
                    }
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(START_TIMEOUT)
            .context("echo server did not start")?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
