//! A new device's provisioning record on its way: deposited at the device's relay in a task
//! (after the own list naming it is published), then the wait for its confirmation.

use libp2p::PeerId;

use super::{Engine, command::Reply, relay_peer};
use crate::{
    device_link::confirm::{self, Confirmation},
    error::NodeError,
    net::rpc,
    types::DeviceInfo,
};

/// A provisioning record sealed for a new device, to deposit at its relays.
pub(super) struct LinkRecord {
    /// The new device.
    pub device: tern_crypto::DeviceId,
    /// Its PeerId, the record's recipient.
    pub peer: PeerId,
    /// The relays its code named, tried in order.
    pub relays: Vec<libp2p::Multiaddr>,
    /// The record, sealed to the code's provisioning key.
    pub sealed: Vec<u8>,
    /// Where and how the new device confirms it took the record.
    pub confirmation: Confirmation,
    /// The answer to `device add` once it is deposited.
    pub info: DeviceInfo,
    /// The device was added to the list now (which is to be published and announced).
    pub listed: bool,
}

impl Engine {
    /// In a task: publishes the new list (if the device was listed now), then deposits the
    /// record at the first of the new device's relays that takes it; on the engine, the
    /// list is announced, the wait for the device's confirmation starts and `reply` is
    /// answered.
    pub(super) fn deposit_record(&mut self, record: LinkRecord, reply: Reply<DeviceInfo>) {
        let publish = record.listed.then(|| self.publish_own_list());
        let (net, relays, peer, sealed) = (
            self.net.clone(),
            record.relays.clone(),
            record.peer,
            record.sealed.clone(),
        );
        let work = async move {
            let failed = match publish {
                Some(publish) => publish.await,
                None => Vec::new(),
            };
            let mut sent = Err(NodeError::unreachable("the code names no relay"));
            for addr in relays {
                let Some(relay) = relay_peer(&addr) else {
                    continue;
                };
                let _ = net.add_relay(addr.clone(), false).await;
                match rpc::deposit(&net, relay, peer, None, sealed.clone()).await {
                    Ok(()) => {
                        sent = Ok(addr);
                        break;
                    }
                    Err(e) => {
                        sent = Err(NodeError::unreachable(format!(
                            "cannot reach the new device's relay: {e}"
                        )));
                    }
                }
            }
            (failed, sent)
        };
        self.off_task(reply, work, move |engine, (failed, sent), reply| {
            if record.listed {
                engine.own_list_published(failed);
                engine.announce_list();
            }
            let _ = reply.send(engine.record_deposited(record, sent));
        });
    }

    /// The record went to the new device's relay `sent` (or could not): its confirmation
    /// is waited for, and the history it did not carry is owed to it.
    fn record_deposited(
        &mut self,
        record: LinkRecord,
        sent: Result<libp2p::Multiaddr, NodeError>,
    ) -> Result<DeviceInfo, NodeError> {
        let relay = sent?;
        let id = record.device;
        // The new device confirms at the same relay once its user took this record.
        let mailbox = record.confirmation.mailbox();
        self.me
            .link_states
            .insert(id, (crate::types::LinkState::Waiting, mailbox));
        let tx = self.internal.clone();
        let confirmation = record.confirmation;
        tokio::spawn(async move {
            let confirmed = match confirmation.wait(relay, confirm::WAIT).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!("cannot wait for the new device's confirmation: {e}");
                    false
                }
            };
            let _ = tx
                .send(super::Internal::LinkAnswered {
                    device: id,
                    record: mailbox,
                    confirmed,
                })
                .await;
        });
        // The record carries the newest messages; everything else follows over the session.
        self.owe_history(&id.to_peer_id_string())?;
        Ok(record.info)
    }
}
