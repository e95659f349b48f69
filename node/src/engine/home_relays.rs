//! This device's home relays: what is done when one comes up (device list, prekeys, live
//! delivery, allow-list, grants), one-time keys kept topped up, mailbox drains in the
//! relay's order, and presence heartbeats.

use libp2p::PeerId;
use tern_relay::rpc::Requests as _;
use tern_relay::wire::presence;

use super::{Engine, Internal, relay_peer};
use crate::{error::NodeError, net::rpc};

impl Engine {
    pub(super) fn home_relay_peers(&self) -> Vec<PeerId> {
        self.relays
            .home_relays
            .iter()
            .filter_map(relay_peer)
            .collect()
    }

    /// Publishes the device list and prekeys, turns live delivery on, tells the relay who
    /// may see our presence, and drains the mailbox.
    /// A step that fails (the connection dropped in between) is retried on a later tick
    /// while the relay is connected, so live delivery is never left off.
    pub(super) async fn on_home_relay_up(&mut self, relay: PeerId) {
        let mut ok = true;
        if let Err(e) = rpc::publish_device_list(
            &self.net,
            relay,
            self.me.keys.device_list.as_bytes().to_vec(),
        )
        .await
        {
            tracing::warn!(%relay, "publishing the device list failed: {e}");
            ok = false;
        }
        if let Err(e) = self.top_up_prekeys(relay, true).await {
            tracing::warn!(%relay, "publishing prekeys failed: {e}");
            ok = false;
        }
        if let Err(e) = rpc::listen(&self.net, relay).await {
            tracing::warn!(%relay, "turning on live delivery failed: {e}");
            ok = false;
        }
        if ok {
            self.relays.setup_pending.remove(&relay);
        } else {
            self.relays.setup_pending.insert(relay);
        }
        self.push_allow_list();
        self.push_grants(Some(relay));
        self.push_relay_up(relay);
        self.ask_usage();
        self.heartbeat();
        self.fetch_mailbox(relay);
    }

    /// Runs the connection routine again for home relays where it did not complete.
    pub(super) async fn retry_setup(&mut self) {
        for relay in self.relays.setup_pending.clone() {
            if self.relays.relay_up.contains(&relay) {
                self.on_home_relay_up(relay).await;
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

    /// Publishes prekeys: a bundle with no new one-time keys to learn how many the relay
    /// holds (and refresh the fallback key), and a full batch when it runs low.
    pub(crate) async fn top_up_prekeys(
        &mut self,
        relay: PeerId,
        refresh: bool,
    ) -> Result<(), NodeError> {
        use tern_crypto::prekey::PrekeyBundle;
        let mut count = if refresh { 0 } else { u32::MAX };
        if refresh {
            let bundle = PrekeyBundle::generate_keeping(
                &mut self.me.keys.device,
                self.me.keys.certificate.clone(),
                0,
                self.me.fallback,
            )?;
            self.save_device()?;
            self.me.fallback = Some(bundle.fallback);
            count = self
                .net
                .at(relay)
                .publish_prekeys(bundle.to_bytes()?)
                .await?;
        }
        if count < crate::consts::ONE_TIME_KEYS_LOW || !refresh {
            let bundle = PrekeyBundle::generate_keeping(
                &mut self.me.keys.device,
                self.me.keys.certificate.clone(),
                crate::consts::ONE_TIME_KEYS_BATCH,
                self.me.fallback,
            )?;
            self.save_device()?;
            self.me.fallback = Some(bundle.fallback);
            let held = self
                .net
                .at(relay)
                .publish_prekeys(bundle.to_bytes()?)
                .await?;
            tracing::debug!(held, "published one-time keys");
        }
        Ok(())
    }

    /// Drains the mailbox at every home relay that is up (mail kept there may be readable
    /// now: a device became known, a contact was added).
    pub(crate) fn fetch_home_mailboxes(&mut self) {
        for relay in self.home_relay_peers() {
            if self.relays.relay_up.contains(&relay) {
                self.fetch_mailbox(relay);
            }
        }
    }

    /// Drains the mailbox at `relay` from its start, page by page, in the relay's order. One
    /// drain per relay runs at a time; one asked for meanwhile runs on the next tick after it.
    pub(crate) fn fetch_mailbox(&mut self, relay: PeerId) {
        if !self.relays.fetching.insert(relay) {
            self.relays.refetch.insert(relay);
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
