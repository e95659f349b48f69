//! `tern device`: linking a new device (from either side), listing and revoking devices.

use serde_json::json;
use tern_node::{
    Home,
    types::{DeviceInfo, LinkState},
};

use crate::{
    client,
    exit::{self, Failure},
    input::stdin_lines,
    opts::DeviceCmd,
    render::{out_block, print_created, print_json, qr, show},
};

/// `tern device ...`.
pub(crate) async fn run(home: &Home, json: bool, cmd: DeviceCmd) -> Result<(), Failure> {
    match cmd {
        DeviceCmd::Link {
            relay,
            name,
            timeout,
            no_qr,
        } => link(home, json, relay, &name, timeout, no_qr).await,
        DeviceCmd::Add { code } => {
            let v = client(home)
                .await?
                .call("device.add", json!({"code": code}))
                .await?;
            show(&v, json, |d: DeviceInfo| {
                outln!("linked device {} ({})", d.device_id, d.name);
                outln!("words: {}", d.words.as_deref().unwrap_or(""));
                outln!(
                    "The new device shows the words of each record it gets: confirm there only \
                     the one that shows these words."
                );
            })
        }
        DeviceCmd::Revoke { device } => {
            let v = client(home)
                .await?
                .call("device.revoke", json!({"device": device}))
                .await?;
            show(&v, json, |d: DeviceInfo| {
                outln!("revoked device {} ({})", d.device_id, d.name);
            })
        }
        DeviceCmd::List => {
            let v = client(home).await?.call("device.list", json!({})).await?;
            show(&v, json, |devices: Vec<DeviceInfo>| {
                for d in devices {
                    let this = if d.this_device { "  (this device)" } else { "" };
                    let link = match d.link {
                        Some(LinkState::Waiting) => "  (linked here: not confirmed yet)",
                        Some(LinkState::Confirmed) => "  (linked here: confirmed)",
                        Some(LinkState::Unconfirmed) => {
                            "  (linked here: NOT confirmed; revoke it if it is not yours)"
                        }
                        _ => "",
                    };
                    outln!("{}  {}{this}{link}", d.device_id, d.name);
                }
            })
        }
    }
}

/// `tern device link`: this empty home becomes a new device of the user whose other device
/// answers the code.
async fn link(
    home: &Home,
    json: bool,
    relay: String,
    name: &str,
    timeout: u64,
    no_qr: bool,
) -> Result<(), Failure> {
    let relay: tern_node::libp2p::Multiaddr = relay
        .parse()
        .map_err(|e| Failure::new(exit::BAD_INPUT, format!("bad relay address {relay}: {e}")))?;
    let answers = stdin_lines();
    let created = tern_node::link_new_device(
        home,
        relay,
        name,
        |code| {
            if json {
                print_json(&json!({"code": code}));
            } else {
                outln!("link code: {code}");
                if !no_qr && let Some(q) = qr(code) {
                    out_block(&q);
                }
                outln!("on a linked device run: tern device add <code>   (waiting...)");
            }
        },
        |offer| {
            // What was typed before these words are shown is no answer to them.
            if let Ok(mut early) = answers.try_lock() {
                while early.try_recv().is_ok() {}
            }
            if json {
                print_json(&json!({
                    "offer": offer.number,
                    "words": offer.words.to_string(),
                    "name": offer.name,
                    "contacts": offer.contacts,
                }));
            } else {
                outln!(
                    "provisioning record {} arrived, for user {:?} with {} contacts",
                    offer.number,
                    offer.name,
                    offer.contacts
                );
                outln!("words: {}", offer.words);
                outln!(
                    "Are these the words `tern device add` showed on your other device? \
                         Type y (or the words) to apply it, n to discard it [y/N]:"
                );
            }
            let answers = answers.clone();
            async move {
                let mut lines = answers.lock().await;
                let answer = match lines.recv().await {
                    None => tern_node::LinkAnswer::Stop,
                    Some(line) => match line.trim().to_ascii_lowercase().as_str() {
                        "y" | "yes" => tern_node::LinkAnswer::Yes,
                        "" | "n" | "no" => tern_node::LinkAnswer::No,
                        _ => tern_node::LinkAnswer::Words(line),
                    },
                };
                if answer == tern_node::LinkAnswer::No && !json {
                    outln!("discarded; waiting for another record");
                }
                answer
            }
        },
        std::time::Duration::from_secs(timeout),
    )
    .await
    .map_err(|e| {
        let code = match e.code() {
            1009 => exit::NETWORK,
            -32602 | 1005 => exit::BAD_INPUT,
            1021 => exit::LINK_NOT_CONFIRMED,
            _ => exit::FAILURE,
        };
        Failure::new(code, e.to_string())
    })?;
    print_created(json, home, &created, "linked", "device id");
    Ok(())
}
