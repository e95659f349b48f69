//! This device's home relays: what is done when one comes up (device list, prekeys, live
//! delivery, allow-list, grants), one-time keys kept topped up, mailbox drains in the
//! relay's order, and presence heartbeats.

use libp2p::PeerId;
use tern_relay::rpc::Requests as _;
use tern_relay::wire::{ErrorCode, presence};

use super::{Engine, Internal, relay_peer};
use crate::{
    error::NodeError,
    net::{Client, NetError, rpc},
};

impl Engine {
    /// The home relays' addresses as text (as links, member entries and records carry them).
    pub(crate) fn home_relay_addrs(&self) -> Vec<String> {
        self.relays
            .home_relays
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    pub(super) fn home_relay_peers(&self) -> Vec<PeerId> {
        self.relays
            .home_relays
            .iter()
            .filter_map(relay_peer)
            .collect()
    }

    /// The relays whose mailboxes this device drains: its home relays, and removed ones
    /// whose drain is not over (never a home relay too: adding one ends its drain).
    pub(super) fn mailbox_relay_peers(&self) -> Vec<PeerId> {
        let mut peers = self.home_relay_peers();
        peers.extend(
            self.relays
                .draining
                .iter()
                .filter_map(|(a, _)| relay_peer(a)),
        );
        peers
    }

    /// Whether `relay` is a removed home relay still drained.
    pub(super) fn is_draining(&self, relay: PeerId) -> bool {
        self.relays
            .draining
            .iter()
            .any(|(a, _)| relay_peer(a) == Some(relay))
    }

    /// Sets a home relay up in a task off the engine: publishes the device list and a
    /// prekey bundle (made here: it changes the device keys, saved before it leaves), and
    /// turns live delivery on; [`Engine::on_relay_set_up`] takes the report. `ready`: the
    /// relay just came up, and is announced as connected once set up. One setup per relay
    /// runs at a time.
    pub(super) fn set_up_home_relay(&mut self, relay: PeerId, ready: bool) {
        if let Some(announce) = self.relays.setting_up.get_mut(&relay) {
            // One runs: it announces the relay too if this asks for that.
            *announce |= ready;
            return;
        }
        self.relays.setting_up.insert(relay, ready);
        let bundle = match self.prekey_bundle(0) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(%relay, "making a prekey bundle failed: {e}");
                None
            }
        };
        let list = self.me.keys.device_list.as_bytes().to_vec();
        let net = self.net.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let (ok, held, soon) = set_up(&net, relay, list, bundle).await;
            let _ = tx
                .send(Internal::RelaySetUp {
                    relay,
                    ok,
                    held,
                    soon,
                })
                .await;
        });
    }

    /// A home relay's setup finished: one-time keys are topped up if it holds few, then it
    /// is told who may see this device's presence and which grants it takes, and drained.
    /// A step that failed (the connection dropped in between) is retried on a later tick
    /// while the relay is connected, so live delivery is never left off.
    pub(super) fn on_relay_set_up(
        &mut self,
        relay: PeerId,
        ok: bool,
        held: Option<u32>,
        soon: bool,
    ) {
        let ready = self.relays.setting_up.remove(&relay).unwrap_or(false);
        if !self.relays.relay_up.contains(&relay) {
            // It went down meanwhile: its next coming up sets it up again.
            self.relays.setup_pending.insert(relay);
            return;
        }
        if ok {
            self.relays.setup_pending.remove(&relay);
        } else {
            self.relays.setup_pending.insert(relay);
            // Refused for the moment (the outbox and the drain went at the same time): on
            // the next tick, not the next heartbeat, so live delivery is not off for long.
            self.relays.setup_soon |= soon;
        }
        if let Some(held) = held {
            self.on_prekeys_held(relay, held);
        }
        self.push_allow_list();
        self.push_grants(Some(relay));
        self.push_relay_up(relay);
        self.ask_usage();
        self.heartbeat();
        self.fetch_mailbox(relay);
        if ready {
            self.relay_ready(relay);
        }
    }

    /// Runs the connection routine again for home relays where it did not complete.
    pub(super) fn retry_setup(&mut self) {
        for relay in self.relays.setup_pending.clone() {
            if self.relays.relay_up.contains(&relay) {
                self.set_up_home_relay(relay, false);
            }
        }
    }

    /// Asks each connected home relay, off the engine, how many one-time keys it still
    /// holds; if one is low, the next outbox tick tops up. Others may have claimed keys
    /// without any session reaching this device, so only asking tells.
    pub(super) fn check_prekeys(&self) {
        let relays: Vec<PeerId> = self
            .home_relay_peers()
            .into_iter()
            .filter(|r| self.relays.relay_up.contains(r))
            .collect();
        if relays.is_empty() {
            return;
        }
        let net = self.net.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            for relay in relays {
                match net.at(relay).prekey_count().await {
                    Ok(n) if n < crate::consts::ONE_TIME_KEYS_LOW => {
                        tracing::debug!(%relay, held = n, "one-time keys low");
                        let _ = tx.send(Internal::PrekeysLow).await;
                        return;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(%relay, "counting one-time keys failed: {e}"),
                }
            }
        });
    }

    /// A prekey bundle with `count` new one-time keys (0: only the signed fallback key, to
    /// learn how many the relay holds) under this run's fallback key, the device keys saved
    /// before it can leave.
    fn prekey_bundle(&mut self, count: usize) -> Result<Vec<u8>, NodeError> {
        let bundle = tern_crypto::prekey::PrekeyBundle::generate_keeping(
            &mut self.me.keys.device,
            self.me.keys.certificate.clone(),
            count,
            self.me.fallback,
        )?;
        self.save_device()?;
        self.me.fallback = Some(bundle.fallback);
        Ok(bundle.to_bytes()?)
    }

    /// Publishes prekeys at `relay` in a task: with `refresh`, a bundle with no new one-time
    /// keys, to learn how many the relay holds (a full batch follows when it holds few);
    /// else a full batch.
    pub(super) fn publish_prekeys(&mut self, relay: PeerId, refresh: bool) {
        let count = if refresh {
            0
        } else {
            crate::consts::ONE_TIME_KEYS_BATCH
        };
        let bundle = match self.prekey_bundle(count) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%relay, "making a prekey bundle failed: {e}");
                return;
            }
        };
        let net = self.net.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            match net.at(relay).publish_prekeys(bundle).await {
                Ok(held) if refresh => {
                    let _ = tx.send(Internal::PrekeysHeld { relay, held }).await;
                }
                Ok(held) => tracing::debug!(%relay, held, "published one-time keys"),
                Err(e) => tracing::warn!(%relay, "publishing prekeys failed: {e}"),
            }
        });
    }

    /// A relay holds `held` one-time keys: a full batch goes when that is few.
    pub(super) fn on_prekeys_held(&mut self, relay: PeerId, held: u32) {
        if held < crate::consts::ONE_TIME_KEYS_LOW {
            self.publish_prekeys(relay, false);
        }
    }

    /// Drains the mailbox at every home relay that is up, and at removed ones still drained
    /// (mail kept there may be readable now: a device became known, a contact was added).
    pub(crate) fn fetch_home_mailboxes(&mut self) {
        for relay in self.mailbox_relay_peers() {
            if self.relays.relay_up.contains(&relay) {
                self.fetch_mailbox(relay);
            }
        }
    }

    /// Drains the mailbox at `relay` from its start, page by page, in the relay's order. One
    /// drain per relay runs at a time; one asked for meanwhile runs as soon as it ends.
    pub(crate) fn fetch_mailbox(&mut self, relay: PeerId) {
        if !self.relays.fetching.insert(relay) {
            self.relays.drain_again.insert(relay);
            return;
        }
        let net = self.net.clone();
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let mut after = 0;
            loop {
                match net.at(relay).fetch(after, crate::consts::FETCH_PAGE).await {
                    Ok((envelopes, more)) => {
                        if let Some(last) = envelopes.last() {
                            after = last.id;
                        }
                        let empty = envelopes.is_empty();
                        if !empty
                            && tx
                                .send(Internal::Fetched { relay, envelopes })
                                .await
                                .is_err()
                        {
                            return;
                        }
                        if !more || empty {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%relay, "mailbox fetch failed: {e}");
                        break;
                    }
                }
            }
            let _ = tx.send(Internal::FetchDone { relay }).await;
        });
    }

    /// Starts the drains asked for while others ran or for mail left waiting.
    pub(super) fn refetch_due(&mut self) {
        let due: Vec<PeerId> = self
            .relays
            .refetch
            .iter()
            .filter(|r| !self.relays.fetching.contains(*r) && self.relays.relay_up.contains(*r))
            .copied()
            .collect();
        for relay in due {
            self.relays.refetch.remove(&relay);
            self.fetch_mailbox(relay);
        }
    }

    pub(super) fn heartbeat(&self) {
        let status = if self.relays.away {
            presence::Status::Away
        } else {
            presence::Status::Online
        };
        for relay in self.home_relay_peers() {
            if !self.relays.relay_up.contains(&relay) {
                continue;
            }
            let net = self.net.clone();
            tokio::spawn(async move {
                if let Err(e) = net.at(relay).heartbeat(status).await {
                    tracing::debug!(%relay, "heartbeat failed: {e}");
                }
            });
        }
    }
}

/// A home relay's setup: publishes the device `list` and the prekey `bundle` and turns live
/// delivery on, all at once (on a slow link one round trip, not three). Returns whether
/// every step succeeded, how many one-time keys the relay holds (if the bundle was
/// published), and whether a step was refused as rate-limited (to try again soon).
///
/// The relay checks a bundle against the device list it stores, so a bundle refused as
/// unknown or not listed while a new list was being stored goes once more after it.
async fn set_up(
    net: &Client,
    relay: PeerId,
    list: Vec<u8>,
    bundle: Option<Vec<u8>>,
) -> (bool, Option<u32>, bool) {
    let publish_list = async {
        let r = rpc::publish_device_list(net, relay, list).await;
        if let Err(e) = &r {
            tracing::warn!(%relay, "publishing the device list failed: {e}");
        }
        r
    };
    let publish_bundle = async {
        match &bundle {
            Some(b) => Some(net.at(relay).publish_prekeys(b.clone()).await),
            None => None,
        }
    };
    let listen = async {
        let r = rpc::listen(net, relay).await;
        if let Err(e) = &r {
            tracing::warn!(%relay, "turning on live delivery failed: {e}");
        }
        r
    };
    let (listed, first, listening) = tokio::join!(publish_list, publish_bundle, listen);
    let published = match (first, bundle) {
        (Some(Err(NetError::Rejected(r))), Some(b))
            if matches!(listed, Ok(true))
                && matches!(r.code, ErrorCode::NotFound | ErrorCode::NotAllowed) =>
        {
            tracing::debug!(
                %relay,
                code = r.code.label(),
                "prekey bundle refused as the device list went; sent again"
            );
            Some(net.at(relay).publish_prekeys(b).await)
        }
        (first, _) => first,
    };
    if let Some(Err(e)) = &published {
        tracing::warn!(%relay, "publishing prekeys failed: {e}");
    }
    let soon = [
        listed.as_ref().err(),
        listening.as_ref().err(),
        published.as_ref().and_then(|r| r.as_ref().err()),
    ]
    .into_iter()
    .flatten()
    .any(|e| e.code() == Some(ErrorCode::RateLimited));
    let held = published.and_then(Result::ok);
    (
        listed.is_ok() && held.is_some() && listening.is_ok(),
        held,
        soon,
    )
}
