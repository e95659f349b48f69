//! What the swarm reports, handled on the event loop: connections opened and closed,
//! identify, circuit reservations and hole punches, the live streams, and the answers to
//! (and requests on) the request/response protocols, which complete the callers' replies.
//!
//! Uses the state and helpers of `event_loop`, and the types of the parent module.

use libp2p::{
    PeerId, dcutr, identify, relay,
    request_response::{self, Message, OutboundRequestId},
    swarm::SwarmEvent,
};
use tern_relay::{
    client::{self as relay_client, Proto},
    wire::{ErrorCode, Frame, Rejection},
};
use tokio::time::Instant;

use super::{
    Event, EventLoop, NetError, direct,
    event_loop::{Channel, is_relayed},
    swarm::BehaviourEvent,
};
use crate::consts::REDIAL_BASE;

impl EventLoop {
    pub(super) fn on_swarm(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::Behaviour(BehaviourEvent::RelayProto(ev)) => self.on_relay_proto(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Direct(ev)) => self.on_direct(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Circuit(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                self.emit(Event::Reservation(relay_peer_id));
            }
            SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event {
                remote_peer_id,
                result,
            })) => {
                self.emit(Event::HolePunch {
                    peer: remote_peer_id,
                    ok: result.is_ok(),
                });
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                self.emit(Event::Listening(address));
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                self.emit(Event::ListenGone(address));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                addresses,
                ..
            } => {
                for state in self.relays.values_mut() {
                    if state.listener == Some(listener_id) {
                        state.listener = None;
                    }
                }
                for address in addresses {
                    self.emit(Event::ListenGone(address));
                }
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                // Kept: a request may already be on its way over it. Beside another
                // connection to the same peer, it closes once idle.
                if let Some(reply) = self.probes.remove(&connection_id) {
                    let _ = reply.send(Ok(()));
                }
                if let Some(state) = self.relays.get_mut(&peer_id) {
                    if !state.connected {
                        state.connected = true;
                        state.redial_at = None;
                        state.backoff = REDIAL_BASE;
                        let home = state.home;
                        self.emit(Event::RelayUp(peer_id));
                        if home {
                            self.reserve(peer_id);
                        }
                    }
                    return;
                }
                let relayed = is_relayed(endpoint.get_remote_address());
                let e = self.direct_conns.entry(peer_id).or_insert((0, 0));
                if relayed {
                    e.1 += 1;
                } else {
                    e.0 += 1;
                }
                let has_direct = e.0 > 0;
                if relayed {
                    self.relayed_conns
                        .entry(peer_id)
                        .or_default()
                        .push(connection_id);
                }
                if has_direct {
                    // A direct connection is up: the circuits to this peer are not needed.
                    for id in self.relayed_conns.remove(&peer_id).unwrap_or_default() {
                        self.swarm.close_connection(id);
                    }
                }
                if num_established.get() == 1 || !relayed {
                    self.emit(Event::PeerUp {
                        peer: peer_id,
                        relayed,
                    });
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if let Some(ids) = self.relayed_conns.get_mut(&peer_id) {
                    ids.retain(|c| *c != connection_id);
                }
                if let Some(state) = self.relays.get_mut(&peer_id) {
                    if num_established == 0 && state.connected {
                        state.connected = false;
                        state.redial_at = Some(Instant::now() + REDIAL_BASE);
                        state.backoff = REDIAL_BASE;
                        self.emit(Event::RelayDown(peer_id));
                    }
                    return;
                }
                if let Some(e) = self.direct_conns.get_mut(&peer_id) {
                    if is_relayed(endpoint.get_remote_address()) {
                        e.1 = e.1.saturating_sub(1);
                    } else {
                        e.0 = e.0.saturating_sub(1);
                    }
                }
                if num_established == 0 {
                    self.direct_conns.remove(&peer_id);
                    self.direct_tries.remove(&peer_id);
                    self.relayed_conns.remove(&peer_id);
                    self.emit(Event::PeerDown { peer: peer_id });
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } if self.probes.contains_key(&connection_id) => {
                if let Some(reply) = self.probes.remove(&connection_id) {
                    let _ = reply.send(Err(super::DialProblem::of(&error)));
                }
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } => {
                tracing::debug!(%peer, "dial failed: {error}");
                if self.relays.contains_key(&peer) {
                    self.emit(Event::RelayDialFailed {
                        relay: peer,
                        problem: super::DialProblem::of(&error),
                    });
                }
            }
            _ => {}
        }
    }

    /// The live stream to a relay opened: its pushes become [`Event::Mail`] like `Deliver`
    /// requests, and acknowledgements go back on it.
    fn on_live(&mut self, ev: tern_relay::live::Event) {
        match ev {
            tern_relay::live::Event::Outbound { peer, stream }
                if self.relays.contains_key(&peer) =>
            {
                let acks = tern_relay::live::spawn_client_end(
                    stream,
                    self.events.clone(),
                    move |envelopes| Event::Mail {
                        relay: peer,
                        envelopes,
                    },
                );
                self.live.insert(peer, acks);
            }
            tern_relay::live::Event::OpenFailed { peer, error } => {
                tracing::debug!(%peer, %error, "live stream not opened; pushes come as requests");
            }
            _ => {}
        }
    }

    fn on_relay_proto(&mut self, ev: relay_client::BehaviourEvent) {
        match ev {
            relay_client::BehaviourEvent::Mailbox(ev) => self.on_rr(Proto::Mailbox, ev),
            relay_client::BehaviourEvent::Presence(ev) => self.on_rr(Proto::Presence, ev),
            relay_client::BehaviourEvent::Directory(ev) => self.on_rr(Proto::Directory, ev),
            relay_client::BehaviourEvent::Live(ev) => self.on_live(ev),
            relay_client::BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            }) => self.on_identify(peer_id, info),
            relay_client::BehaviourEvent::Ping(ev) => {
                tern_relay::ping_failed(&mut self.swarm, &ev);
            }
            _ => {}
        }
    }

    /// A contact's device told us its listen addresses: remember them and, if we only
    /// reach it through a relay circuit, try a direct connection (DCUtR handles the NAT case).
    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        if !self.direct || self.relays.contains_key(&peer) || !self.swarm.is_connected(&peer) {
            return;
        }
        self.learn_addrs(peer, info.listen_addrs);
        self.try_direct(peer);
    }

    fn complete(
        &mut self,
        channel: Channel,
        id: OutboundRequestId,
        result: Result<Frame, NetError>,
    ) {
        if let Some(tx) = self.pending.remove(&(channel, id)) {
            let _ = tx.send(result);
        }
    }

    fn on_rr(&mut self, proto: Proto, ev: request_response::Event<Frame, Frame>) {
        match ev {
            request_response::Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.complete(Channel::of(proto), request_id, Ok(response)),
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.complete(
                Channel::of(proto),
                request_id,
                Err(NetError::Transport(error.to_string())),
            ),
            request_response::Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                // Only relays we chose may push to us.
                if !self.relays.contains_key(&peer) {
                    return;
                }
                let (pushed, answer) = tern_relay::rpc::answer_pushed(proto, &request);
                if let Ok(bytes) = answer {
                    let b = &mut self.swarm.behaviour_mut().relay_proto;
                    let _ = match proto {
                        Proto::Mailbox => b.mailbox.send_response(channel, Frame::Data(bytes)),
                        Proto::Presence => b.presence.send_response(channel, Frame::Data(bytes)),
                        Proto::Directory => b.directory.send_response(channel, Frame::Data(bytes)),
                    };
                }
                let event = match pushed {
                    Some(tern_relay::rpc::Pushed::Mail(envelopes)) => Event::Mail {
                        relay: peer,
                        envelopes,
                    },
                    Some(tern_relay::rpc::Pushed::Presence(entries)) => Event::Presence {
                        relay: peer,
                        entries,
                    },
                    _ => return,
                };
                let mail = matches!(event, Event::Mail { .. });
                if !self.emit(event) && mail {
                    // The mail stays in the mailbox; have the engine fetch it.
                    let _ = self.events.try_send(Event::MailDropped(peer));
                }
            }
            _ => {}
        }
    }

    fn on_direct(&mut self, ev: request_response::Event<Frame, Frame>) {
        match ev {
            request_response::Event::Message {
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.complete(Channel::Direct, request_id, Ok(response)),
            request_response::Event::OutboundFailure {
                request_id, error, ..
            } => self.complete(
                Channel::Direct,
                request_id,
                Err(NetError::Transport(error.to_string())),
            ),
            request_response::Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                let refuse = |code| direct::Response::Error(Rejection::new(code)).encode();
                let ciphertext = match direct::Request::from_frame(&request) {
                    Ok(direct::Request::Message { ciphertext }) => ciphertext.into_vec(),
                    Err(_) => {
                        if let Ok(bytes) = refuse(ErrorCode::Malformed) {
                            let _ = self
                                .swarm
                                .behaviour_mut()
                                .direct
                                .send_response(channel, Frame::Data(bytes));
                        }
                        return;
                    }
                };
                let id = self.next_inbound;
                self.next_inbound += 1;
                if self.emit(Event::Direct {
                    peer,
                    id,
                    ciphertext,
                }) {
                    self.inbound.insert(id, channel);
                } else if let Ok(bytes) = refuse(ErrorCode::Unavailable) {
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .direct
                        .send_response(channel, Frame::Data(bytes));
                }
            }
            _ => {}
        }
    }
}
