//! What the node adds to the relay's requests: one-recipient deposits that fail when
//! refused, a stale device list that is not an error, live delivery and acknowledgements on
//! the live stream.

use libp2p::PeerId;
use tern_relay::{
    rpc::Requests as _,
    wire::{ErrorCode, Rejection, mailbox},
};

use super::{Client, NetError};

/// Deposits a ciphertext for one device, showing `token` (made from the grant the device
/// issued, for this relay; `None`: an introduction); returns once durable at the relay.
pub async fn deposit(
    net: &Client,
    relay: PeerId,
    recipient: PeerId,
    token: Option<[u8; 32]>,
    ciphertext: Vec<u8>,
) -> Result<(), NetError> {
    let refused = deposit_many(net, relay, vec![(recipient, token)], ciphertext).await?;
    one_recipient(&refused)
}

/// The outcome of a deposit for one recipient, from the recipients it refused: stored, or
/// refused with its code.
pub fn one_recipient(refused: &[mailbox::Refusal]) -> Result<(), NetError> {
    match refused.first() {
        None => Ok(()),
        Some(r) => Err(NetError::Rejected(Rejection::new(r.code))),
    }
}

/// Deposits one ciphertext for many devices in one deposit (the relay stores it once),
/// each with its token; returns the recipients refused, with why. It goes on the relay's
/// deposit stream when one is open, else as a request (see `pipeline`).
pub async fn deposit_many(
    net: &Client,
    relay: PeerId,
    recipients: Vec<(PeerId, Option<[u8; 32]>)>,
    ciphertext: Vec<u8>,
) -> Result<Vec<mailbox::Refusal>, NetError> {
    let (peers, tokens) = recipients.into_iter().unzip();
    let req = tern_relay::rpc::deposit_request(peers, tokens, None, ciphertext);
    let pipe = deposit_stream(net, relay);
    let (_, refused) = tern_relay::pipeline::deposit(pipe.as_ref(), &net.at(relay), req).await?;
    Ok(refused)
}

/// The relay's deposit stream when one is open (else `None`, and one opens in the
/// background: see `pipeline`).
pub fn deposit_stream(net: &Client, relay: PeerId) -> Option<tern_relay::pipeline::Pipeline> {
    net.pipes.get(relay, &net.streams)
}

/// Opens the deposit stream to `relay`, which just connected (a stream that broke with the
/// old connection, or failed to open, is not waited out).
pub fn open_deposit_stream(net: &Client, relay: PeerId) {
    net.pipes.reset(relay);
    let _ = deposit_stream(net, relay);
}

/// Acknowledges mail on the relay's live stream when one is open (no answer comes; a
/// lost acknowledgement leaves the mail to be fetched again), else as an `Ack` request.
pub async fn ack_mail(net: &Client, relay: PeerId, ids: Vec<u64>) -> Result<(), NetError> {
    if net.live_ack(relay, ids.clone()).await {
        return Ok(());
    }
    net.at(relay).ack(ids).await.map(drop)
}

/// Turns live delivery on, and opens the live stream for it.
pub async fn listen(net: &Client, relay: PeerId) -> Result<(), NetError> {
    net.at(relay).set_listen(true).await?;
    net.open_live(relay).await
}

/// Publishes the signed device list: `true` if the relay stored it now, `false` if it
/// already had it or a newer one (`Stale` is not an error).
pub async fn publish_device_list(
    net: &Client,
    relay: PeerId,
    list: Vec<u8>,
) -> Result<bool, NetError> {
    match net.at(relay).publish_device_list(list).await {
        Ok(()) => Ok(true),
        Err(NetError::Rejected(r)) if r.code == ErrorCode::Stale => Ok(false),
        Err(e) => Err(e),
    }
}
