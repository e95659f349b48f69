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

/// The transport ceiling of the pipelined deposits: a libp2p server on the relay's
/// transport accepting `/tern/deposit/1` streams and answering every deposit frame at once
/// (`Deposited`, without decoding it), answers gathered into one write as the relay does;
/// on its own thread and single-threaded runtime, like [`EchoServer`].
pub(super) struct StreamEcho {
    pub(super) addr: Multiaddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StreamEcho {
    /// Starts the server on its own thread and waits for its address.
    pub(super) fn start() -> anyhow::Result<Self> {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, mut stop_rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let built = SwarmBuilder::with_new_identity()
                    .with_tokio()
                    .with_tcp(
                        tcp::Config::default().nodelay(true),
                        noise::Config::new,
                        tern_relay::yamux_config,
                    )
                    .map(|b| b.with_behaviour(|_| libp2p_stream::Behaviour::new()));
                let Ok(Ok(builder)) = built else { return };
                let mut swarm = builder
                    .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
                    .build();
                let Ok(mut incoming) = swarm
                    .behaviour()
                    .new_control()
                    .accept(tern_relay::wire::deposit::PROTOCOL)
                else {
                    return;
                };
                let Ok(listen) = "/ip4/127.0.0.1/tcp/0".parse::<Multiaddr>() else { return };
                if swarm.listen_on(listen).is_err() {
                    return;
                }
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => return,
                        s = incoming.next() => if let Some((_, stream)) = s {
                            tokio::spawn(answer_deposits(stream));
                        },
                        ev = swarm.select_next_some() => if let SwarmEvent::NewListenAddr { address, .. } = ev {
                            let full = address.with(libp2p::multiaddr::Protocol::P2p(*swarm.local_peer_id()));
                            let _ = addr_tx.send(full);
                        },
                    }
                }
            });
        });
        let addr = addr_rx
            .recv_timeout(START_TIMEOUT)
            .context("stream echo server did not start")?;
        Ok(Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for StreamEcho {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One deposit stream of [`StreamEcho`]: a reading task numbers the frames, the writing
/// side answers every number queued so far in one write.
async fn answer_deposits(stream: libp2p::Stream) {
    use tern_relay::wire::{
        deposit::{Answer, MAX_DEPOSIT_FRAME_BYTES},
        stream::{BATCH_BYTES, append_frame, read_frame, write_batch},
    };
    let (mut r, mut w) = libp2p::futures::AsyncReadExt::split(stream);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(1024);
    let reading = async move {
        let mut seq = 0u64;
        while let Ok(Some(_)) = read_frame(&mut r, MAX_DEPOSIT_FRAME_BYTES).await {
            if tx.send(seq).await.is_err() {
                return;
            }
            seq += 1;
        }
    };
    let writing = async {
        let mut buf = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            while let Some(seq) = next.take() {
                let answer = Answer {
                    seq,
                    response: mailbox::Response::Deposited {
                        message: seq,
                        recipients: 1,
                        refused: Vec::new(),
                    },
                };
                let Ok(frame) = answer.encode() else { return };
                if append_frame(&mut buf, &frame).is_err() {
                    return;
                }
                if buf.len() < BATCH_BYTES {
                    next = rx.try_recv().ok();
                }
            }
            if write_batch(&mut w, &buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    };
    tokio::join!(reading, writing);
}
