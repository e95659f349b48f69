//! The transport ceilings of the `relay` suite: a bare libp2p request/response echo server,
//! and a deposit-stream server that answers every deposit at once.

use std::time::Duration;

use anyhow::Context;
use tern_relay::{
    Multiaddr,
    libp2p::{
        self, Swarm, SwarmBuilder,
        futures::StreamExt,
        noise, request_response,
        swarm::{NetworkBehaviour, SwarmEvent},
        tcp,
    },
    wire::{Frame, mailbox},
};

use super::START_TIMEOUT;

/// A libp2p server on the relay's transport (TCP, Noise, Yamux) on 127.0.0.1, on its own
/// thread and single-threaded runtime as the relay has its own process and (by default) one
/// network thread; stopped on drop.
pub(super) struct Server {
    pub(super) addr: Multiaddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Starts a server with `behaviour`, runs `setup` on its swarm (inside its runtime,
    /// before it listens) and hands each swarm event to `on_event`; waits for its address.
    fn start<B, F>(
        behaviour: impl FnOnce() -> B + Send + 'static,
        setup: impl FnOnce(&mut Swarm<B>) + Send + 'static,
        mut on_event: F,
    ) -> anyhow::Result<Self>
    where
        B: NetworkBehaviour + Send,
        F: FnMut(&mut Swarm<B>, SwarmEvent<B::ToSwarm>) + Send + 'static,
    {
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
                    .map(|b| b.with_behaviour(|_| behaviour()));
                let Ok(Ok(builder)) = built else { return };
                let mut swarm = builder
                    .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
                    .build();
                setup(&mut swarm);
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
                            ev => on_event(&mut swarm, ev),
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

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The transport ceiling: a request/response server on the relay mailbox's protocol id,
/// answering every request at once with `Ok`.
pub(super) fn echo_server() -> anyhow::Result<Server> {
    let ok = mailbox::Response::Ok.encode()?;
    Server::start(
        || {
            request_response::Behaviour::with_codec(
                mailbox::codec(),
                [(mailbox::PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default().with_max_concurrent_streams(1024),
            )
        },
        |_| {},
        move |swarm, ev| {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { channel, .. },
                ..
            }) = ev
            {
                let _ = swarm
                    .behaviour_mut()
                    .send_response(channel, Frame::Data(ok.clone()));
            }
        },
    )
}

/// The transport ceiling of the pipelined deposits: a server accepting `/tern/deposit/1`
/// streams and answering every deposit frame at once (`Deposited`, without decoding it),
/// answers gathered into one write as the relay does.
pub(super) fn stream_echo() -> anyhow::Result<Server> {
    Server::start(
        libp2p_stream::Behaviour::new,
        |swarm| {
            let Ok(mut incoming) = swarm
                .behaviour()
                .new_control()
                .accept(tern_relay::wire::deposit::PROTOCOL)
            else {
                return;
            };
            tokio::spawn(async move {
                while let Some((_, stream)) = incoming.next().await {
                    tokio::spawn(answer_deposits(stream));
                }
            });
        },
        |_, _| {},
    )
}

/// One deposit stream of [`stream_echo`]: a reading task numbers the frames, the writing
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
