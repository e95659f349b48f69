//! The new device's side of a link: wait at a relay for the provisioning record another
//! device of the user deposits, show its words, and apply it only once the user confirms.

use std::collections::HashSet;

use libp2p::{Multiaddr, identity::Keypair};
use tern_relay::rpc::Requests as _;

use crate::{Home, NodeError, consts, device_link, engine, home, net};

/// A provisioning record the new device received and opened, shown to its user before
/// anything of it is applied ([`link_new_device`]).
#[derive(Debug, Clone)]
pub struct LinkOffer {
    /// Which record this is: 1 for the first that opened, 2 for the next, ...
    pub number: usize,
    /// The record's link words: the sending device shows the same ones.
    pub words: device_link::LinkWords,
    /// The user name the record carries (its sender's say; the words are the check).
    pub name: String,
    /// How many contacts it carries.
    pub contacts: usize,
}

/// The user's answer to a [`LinkOffer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAnswer {
    /// The words match those on the sending device: apply this record.
    Yes,
    /// They do not: discard this record and wait for another.
    No,
    /// The words the sending device shows, typed: applied if they are this record's words,
    /// else the link stops ([`NodeError::LinkNotConfirmed`]) with nothing applied.
    Words(String),
    /// No answer will come (input closed): stop with nothing applied.
    Stop,
}

/// Links this home as a new device of an existing user (see [`device_link`]): makes the
/// device keys and a one-time provisioning key, connects to `relay`, hands the link code to
/// `show_code` (to print), and waits up to `timeout` for the provisioning record another
/// device of the user deposits (`tern device add CODE` there). Each record that opens and
/// is for this device is offered to `confirm` with its link words; nothing is applied until
/// an answer confirms one, which then writes the home. Records answered [`LinkAnswer::No`]
/// are discarded. Two records with the same words stop the link (someone who saw the
/// sending device's words made a record to match them). The node is not started; `tern up`
/// runs it afterwards.
pub async fn link_new_device<F>(
    home: &Home,
    relay: Multiaddr,
    device_name: &str,
    show_code: impl FnOnce(&str),
    mut confirm: impl FnMut(LinkOffer) -> F,
    timeout: std::time::Duration,
) -> Result<home::Created, NodeError>
where
    F: std::future::Future<Output = LinkAnswer>,
{
    use tern_crypto::{DeviceKeys, provision::ProvisionKey};
    if home.is_initialised() {
        return Err(NodeError::BadRequest(format!(
            "{} already holds a Tern identity; link a new device into an empty home",
            home.dir().display()
        )));
    }
    if device_name.len() > consts::MAX_NAME_BYTES {
        return Err(NodeError::BadRequest("device name too long".into()));
    }
    let relay_peer = engine::relay_peer(&relay)
        .ok_or_else(|| NodeError::BadRequest("the relay address must end in /p2p/<id>".into()))?;
    let device = DeviceKeys::generate().map_err(NodeError::from)?;
    let provision = ProvisionKey::generate().map_err(NodeError::from)?;
    let keypair = Keypair::ed25519_from_bytes(*device.network_secret()).map_err(NodeError::from)?;
    let (net, mut events, event_loop) = net::new(
        keypair,
        net::Config {
            listen: Vec::new(),
            direct: false,
        },
    )
    .map_err(NodeError::from)?;
    let task = tokio::spawn(event_loop.run());
    // A timeout too long to add (`--timeout` is any u64) waits as long as a year would.
    let deadline =
        tokio::time::Instant::now() + timeout.min(std::time::Duration::from_secs(365 * 24 * 3600));
    let result = async {
        net.add_relay(relay.clone(), false).await?;
        // Wait for the relay connection, then ask for live delivery and look at what waits.
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(net::Event::RelayUp(p))) if p == relay_peer => break,
                Ok(Some(_)) => {}
                Ok(None) => return Err(NodeError::Stopped),
                Err(_) => {
                    return Err(NodeError::unreachable(format!("cannot reach the relay {relay}")));
                }
            }
        }
        let request = device_link::Request {
            v: device_link::LINK_VERSION,
            device: serde_bytes::ByteArray::new(*device.device_id().as_bytes()),
            curve25519: serde_bytes::ByteArray::new(device.curve25519()),
            ed25519: serde_bytes::ByteArray::new(device.ed25519()),
            provision: serde_bytes::ByteArray::new(provision.public()),
            relays: vec![relay.to_string()],
            name: device_name.to_owned(),
        };
        // Shown as soon as the relay is reached: live delivery is asked for while the user
        // carries the code over, and a record deposited before it is on is in the fetch
        // that follows.
        show_code(&request.encode().map_err(|e| NodeError::BadRequest(e.to_string()))?);
        let mut batch = catch_up(&net, relay_peer).await;
        // The words of every record offered so far.
        let mut offered: Vec<device_link::LinkWords> = Vec::new();
        // Mailbox ids seen: a record that came both live and in the fetch is one record.
        let mut seen: HashSet<u64> = HashSet::new();
        loop {
            for env in batch.drain(..) {
                if !seen.insert(env.id) {
                    continue;
                }
                // Anything else in this fresh mailbox is not for us; only a record that
                // opens with the one-time key counts.
                let Ok((plain, check)) = provision.open_checked(&env.ciphertext) else {
                    continue;
                };
                // Whoever holds the code can seal to its key: a record that does not decode,
                // or is not for this device, is passed over, so one bad deposit cannot end
                // the wait for the real one.
                let bundle = match device_link::Bundle::decode(&plain) {
                    Ok(b) => b,
                    // The decoder's words could quote the record's texts: not logged.
                    Err(_) => {
                        tracing::warn!("a provisioning record that does not decode; waiting on");
                        continue;
                    }
                };
                drop(plain);
                if Home::check_linked(&device, &bundle).is_err() {
                    tracing::warn!("a provisioning record not made for this device; waiting on");
                    continue;
                }
                let Ok(identity) = bundle.identity_public() else {
                    continue;
                };
                let words = device_link::LinkWords::derive(
                    &check,
                    &provision.public(),
                    &device.device_id(),
                    &identity,
                );
                let confirmation =
                    device_link::confirm::Confirmation::derive(&check, &device.device_id())?;
                drop(check);
                if offered.contains(&words) {
                    return Err(NodeError::LinkNotConfirmed(
                        "two provisioning records show the same words: someone who saw the \
                         words on your other device made a record to match them. Nothing was \
                         applied; start again with a new code"
                            .into(),
                    ));
                }
                offered.push(words.clone());
                let offer = LinkOffer {
                    number: offered.len(),
                    words: words.clone(),
                    name: bundle.name.clone(),
                    contacts: bundle.contacts.len(),
                };
                let answer = tokio::time::timeout_at(deadline, confirm(offer))
                    .await
                    .map_err(|_| {
                        NodeError::LinkNotConfirmed(
                            "no confirmation in time; nothing was applied".into(),
                        )
                    })?;
                let apply = match answer {
                    LinkAnswer::Yes => true,
                    LinkAnswer::Words(typed) if words.matches(&typed) => true,
                    LinkAnswer::Words(_) => {
                        return Err(NodeError::LinkNotConfirmed(
                            "the words do not match this record's: it was not sent by your \
                             device (someone else may have used the code). Nothing was \
                             applied; start again with a new code"
                                .into(),
                        ));
                    }
                    LinkAnswer::No => false,
                    LinkAnswer::Stop => {
                        return Err(NodeError::LinkNotConfirmed(
                            "the link was not confirmed; nothing was applied".into(),
                        ));
                    }
                };
                // A discarded record is taken out of the mailbox too.
                let at = net.at(relay_peer);
                let ack = at.ack(vec![env.id]);
                if !apply {
                    let _ = ack.await;
                    continue;
                }
                let created = home.init_linked(device, &bundle)?;
                // The sending device learns that its record was the one confirmed (sent with
                // the ack, not after it). It costs nothing if lost: that device then shows
                // the link unconfirmed.
                let confirm = at.deposit(
                    vec![confirmation.mailbox()],
                    None,
                    confirmation.message(),
                );
                if let (_, Err(e)) = tokio::join!(ack, confirm) {
                    tracing::warn!("the confirmation did not reach the relay: {e}");
                }
                return Ok(created);
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(net::Event::Mail { envelopes, .. })) => batch = envelopes,
                // The relay connection came back (the user may take minutes, on a flaky
                // link), or a push was dropped for want of room: live delivery again, and
                // what waits; records already seen are passed over by id.
                Ok(Some(net::Event::RelayUp(p) | net::Event::MailDropped(p))) if p == relay_peer => {
                    batch = catch_up(&net, relay_peer).await;
                }
                Ok(Some(_)) => {}
                Ok(None) => return Err(NodeError::Stopped),
                Err(_) => {
                    return Err(NodeError::unreachable(
                        "no device added this one in time (run `tern device add CODE` on a linked device)",
                    ));
                }
            }
        }
    }
    .await;
    drop(net);
    task.abort();
    result
}

/// Asks `relay` for live delivery and fetches what waits in the link mailbox. Neither
/// failing ends the link: the relay may be restarting, and once it is back (`RelayUp`) this
/// runs again, so a record deposited meanwhile still arrives.
async fn catch_up(
    net: &net::Client,
    relay: libp2p::PeerId,
) -> Vec<tern_relay::wire::mailbox::Envelope> {
    if let Err(e) = net::rpc::listen(net, relay).await {
        tracing::debug!("live delivery not turned on: {e}");
    }
    match net.at(relay).fetch(0, consts::FETCH_PAGE).await {
        Ok((waiting, _)) => waiting,
        Err(e) => {
            tracing::debug!("fetching the link mailbox failed: {e}");
            Vec::new()
        }
    }
}
