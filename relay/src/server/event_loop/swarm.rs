//! Connection and swarm events (listening addresses, connections opened and closed, relay
//! and identify events) and the periodic work of the loop: presence sweeps and coalesced
//! updates, last-seen persistence and mailbox expiry.
//!
//! Uses `dispatch` (request/response events), `live` (inbound live streams), `dht` (DHT
//! events and peers) and `answer`.

use std::{sync::atomic::Ordering::Relaxed, time::Instant};

use libp2p::{PeerId, identify, multiaddr::Protocol, relay, swarm::SwarmEvent};

use tokio::sync::oneshot;

use super::{Completion, EventLoop, Proto, await_reply, now_ms};
use crate::{
    server::{Announcement, BehaviourEvent, iplimit::IpKey, storage},
    wire::{Frame, presence as pw},
};

impl EventLoop {
    pub(super) fn on_swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => {
                if self.cfg.public_addresses.is_empty() {
                    // With no configured public address, announce what we listen on, so
                    // circuit reservations carry a usable address.
                    self.swarm.add_external_address(address.clone());
                }
                let full = address.with(Protocol::P2p(*self.swarm.local_peer_id()));
                tracing::info!(addr = %full, "listening");
                (self.announce)(Announcement::Listening(full));
            }
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                if self.penalties.is_banned(&peer_id, Instant::now()) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                }
                self.note_ip(peer_id, &endpoint);
                *self.connections.entry(peer_id).or_default() += 1;
                self.metrics.connections.fetch_add(1, Relaxed);
                self.metrics.connections_total.fetch_add(1, Relaxed);
                self.presence.connected(peer_id, Instant::now(), now_ms());
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                self.metrics.connections.fetch_sub(1, Relaxed);
                if num_established == 0 {
                    self.connections.remove(&peer_id);
                    self.peer_ips.remove(&peer_id);
                    self.rate_limited.remove(&peer_id);
                    self.listening.remove(&peer_id);
                    // Dropping the queue ends the stream's task.
                    self.live.remove(&peer_id);
                } else if let Some(n) = self.connections.get_mut(&peer_id) {
                    *n = n.saturating_sub(1);
                }
                if let Some(ms) = self.presence.disconnected(peer_id, now_ms()) {
                    self.persist_last_seen(peer_id, ms);
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Mailbox(ev)) => {
                self.on_rr_event(Proto::Mailbox, ev)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Presence(ev)) => {
                self.on_rr_event(Proto::Presence, ev)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Directory(ev)) => {
                self.on_rr_event(Proto::Directory, ev)
            }
            SwarmEvent::Behaviour(BehaviourEvent::Live(ev)) => self.on_live_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(ev)) => match ev {
                relay::Event::ReservationReqAccepted { .. } => {
                    self.metrics.reservations.fetch_add(1, Relaxed);
                }
                relay::Event::CircuitReqAccepted { .. } => {
                    self.metrics.circuits.fetch_add(1, Relaxed);
                }
                other => tracing::debug!(event = ?other, "relay event"),
            },
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                tracing::debug!(%peer_id, agent = %info.agent_version, "identified");
                self.on_identified(peer_id, &info);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Kad(ev)) => self.on_kad_event(ev),
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ev)) => {
                crate::ping_failed(&mut self.swarm, &ev);
            }
            SwarmEvent::ListenerError { error, .. } => tracing::warn!(%error, "listener error"),
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "incoming connection failed");
            }
            _ => {}
        }
    }

    /// Remembers the IP address (IPv6 /64) an inbound connection came from, for the per-IP
    /// request limit; the relay's own outbound connections and circuits have none.
    fn note_ip(&mut self, peer: PeerId, endpoint: &libp2p::core::ConnectedPoint) {
        if let libp2p::core::ConnectedPoint::Listener { send_back_addr, .. } = endpoint
            && let Some(key) = IpKey::of_addr(send_back_addr)
        {
            self.peer_ips.insert(peer, key);
        }
    }

    pub(super) fn on_sweep(&mut self) {
        for (peer, ms) in self.presence.sweep(Instant::now()) {
            self.persist_last_seen(peer, ms);
        }
    }

    pub(super) fn persist_last_seen(&mut self, peer: PeerId, ms: u64) {
        if self
            .storage
            .submit(storage::Op::SetLastSeen { peer, ms })
            .is_err()
        {
            tracing::debug!("storage busy; last-seen time kept in memory only");
        }
    }

    pub(super) fn flush_presence(&mut self) {
        for (subscriber, entries) in self.presence.flush() {
            for chunk in entries.chunks(pw::MAX_PEERS) {
                let req = pw::Request::Update {
                    entries: chunk.to_vec(),
                };
                match req.encode() {
                    Ok(bytes) => {
                        self.swarm
                            .behaviour_mut()
                            .presence
                            .send_request(&subscriber, Frame::Data(bytes));
                    }
                    Err(e) => tracing::error!(error = %e, "cannot encode presence update"),
                }
            }
        }
    }

    pub(super) fn start_expiry(&mut self) {
        // Expired mail makes room in any mailbox.
        self.intro_full.clear();
        let idle_ms = self.cfg.mailbox.grant_idle_secs.saturating_mul(1000);
        self.grants.expire(now_ms().saturating_sub(idle_ms));
        let (reply, rx) = oneshot::channel();
        let device_idle_ms = self.cfg.storage.device_idle_secs.saturating_mul(1000);
        if self
            .storage
            .submit(storage::Op::ExpireDevices {
                before_ms: now_ms().saturating_sub(device_idle_ms),
                reply,
            })
            .is_ok()
        {
            self.pending.push(Box::pin(async move {
                Completion::DevicesExpired(await_reply(rx).await)
            }));
        }
        let (reply, rx) = oneshot::channel();
        if self
            .storage
            .submit(storage::Op::Expire {
                now_ms: now_ms(),
                reply,
            })
            .is_ok()
        {
            self.pending.push(Box::pin(async move {
                Completion::Expired(await_reply(rx).await)
            }));
        }
    }
}
