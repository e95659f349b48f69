//! The task that owns a client's swarm: it sends the handles' requests, matches answers to
//! their waiters, and passes on what the relay sends unasked.

use std::collections::HashMap;

use futures::StreamExt;
use libp2p::{
    PeerId, Swarm,
    request_response::{self, Message, OutboundRequestId},
    swarm::SwarmEvent,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use super::{Behaviour, BehaviourEvent, Event, LiveSlot};
use crate::rpc::{Proto, RequestError};
use crate::wire::Frame;

pub(super) enum Command {
    Request {
        proto: Proto,
        frame: Vec<u8>,
        reply: oneshot::Sender<Result<Frame, RequestError>>,
        /// The request's place among those in flight, held until it is answered.
        permit: OwnedSemaphorePermit,
    },
    /// Open the live stream (after `Listen`).
    OpenLive,
}

/// A caller waiting for an answer, and the place its request holds.
type Waiter = (
    oneshot::Sender<Result<Frame, RequestError>>,
    OwnedSemaphorePermit,
);

/// Callers waiting for an answer, by protocol and request id.
type Pending = HashMap<(Proto, OutboundRequestId), Waiter>;

pub(super) async fn run(
    mut swarm: Swarm<Behaviour>,
    relay: PeerId,
    mut cmds: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    live: LiveSlot,
) {
    // Each request/response behaviour numbers its requests itself, so ids repeat across
    // protocols: replies are owed by (protocol, id).
    let mut pending: Pending = HashMap::new();
    loop {
        tokio::select! {
            cmd = cmds.recv() => {
                let (proto, frame, waiter) = match cmd {
                    Some(Command::Request { proto, frame, reply, permit }) => {
                        (proto, frame, (reply, permit))
                    }
                    Some(Command::OpenLive) => {
                        swarm.behaviour_mut().live.open(relay);
                        continue;
                    }
                    None => break,
                };
                let b = swarm.behaviour_mut();
                let id = match proto {
                    Proto::Mailbox => b.mailbox.send_request(&relay, Frame::Data(frame)),
                    Proto::Presence => b.presence.send_request(&relay, Frame::Data(frame)),
                    Proto::Directory => b.directory.send_request(&relay, Frame::Data(frame)),
                };
                pending.insert((proto, id), waiter);
            }
            ev = swarm.select_next_some() => match ev {
                SwarmEvent::Behaviour(BehaviourEvent::Mailbox(ev)) => {
                    on_rr(&mut swarm, Proto::Mailbox, relay, ev, &mut pending, &events);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Presence(ev)) => {
                    on_rr(&mut swarm, Proto::Presence, relay, ev, &mut pending, &events);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Directory(ev)) => {
                    on_rr(&mut swarm, Proto::Directory, relay, ev, &mut pending, &events);
                }
                SwarmEvent::Behaviour(BehaviourEvent::Live(ev)) => match ev {
                    crate::live::Event::Outbound { peer, stream } if peer == relay => {
                        let acks = crate::live::spawn_client_end(stream, events.clone(), Event::Delivered);
                        *live.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(acks);
                    }
                    crate::live::Event::OpenFailed { error, .. } => {
                        tracing::debug!(%error, "live stream not opened; pushes come as requests");
                    }
                    _ => {}
                },
                SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => {
                    crate::ping_failed(&mut swarm, &ev);
                }
                SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } if peer_id == relay => {
                    tracing::debug!("relay connection closed");
                }
                _ => {}
            }
        }
    }
}

fn on_rr(
    swarm: &mut Swarm<Behaviour>,
    proto: Proto,
    relay: PeerId,
    ev: request_response::Event<Frame, Frame>,
    pending: &mut Pending,
    events: &mpsc::Sender<Event>,
) {
    match ev {
        request_response::Event::Message {
            message:
                Message::Response {
                    request_id,
                    response,
                },
            ..
        } => {
            if let Some((tx, _permit)) = pending.remove(&(proto, request_id)) {
                let _ = tx.send(Ok(response));
            }
        }
        request_response::Event::OutboundFailure {
            request_id, error, ..
        } => {
            if let Some((tx, _permit)) = pending.remove(&(proto, request_id)) {
                let _ = tx.send(Err(RequestError::Transport(error.to_string())));
            }
        }
        request_response::Event::Message {
            peer,
            message: Message::Request {
                request, channel, ..
            },
            ..
        } => {
            // Only the relay may push to us.
            if peer != relay {
                return;
            }
            let (pushed, answer) = crate::rpc::answer_pushed(proto, &request);
            let event = pushed.map(|p| match p {
                crate::rpc::Pushed::Mail(messages) => Event::Delivered(messages),
                crate::rpc::Pushed::Presence(entries) => Event::Presence(entries),
            });
            if let Some(ev) = event
                && events.try_send(ev).is_err()
            {
                tracing::warn!("client event queue full; dropping a relay event");
            }
            if let Ok(bytes) = answer {
                let b = swarm.behaviour_mut();
                let _ = match proto {
                    Proto::Mailbox => b.mailbox.send_response(channel, Frame::Data(bytes)),
                    Proto::Presence => b.presence.send_response(channel, Frame::Data(bytes)),
                    Proto::Directory => b.directory.send_response(channel, Frame::Data(bytes)),
                };
            }
        }
        request_response::Event::InboundFailure { .. }
        | request_response::Event::ResponseSent { .. } => {}
    }
}
