//! A second device for a user, over real processes on 127.0.0.1: `tern device link` on an
//! empty home shows a code, `tern device add CODE` on the first device provisions it (identity,
//! contacts, recent history, groups), and from then on both devices send and receive: each
//! gets sync copies of what the other sends, a contact's messages reach both, and a group
//! reaches both.

use std::time::Duration;
use tern_relay::rpc::Requests as _;

use serde_json::Value;
use tern_tests::support::{Linking, Node, Relay, link_pair, wait_for};

const WAIT: Duration = Duration::from_secs(60);

fn texts(node: &Node, args: &[&str]) -> Vec<(String, bool)> {
    node.json(args)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m| {
            (
                m["text"].as_str().unwrap_or_default().to_owned(),
                m["own"].as_bool().unwrap_or(false),
            )
        })
        .collect()
}

fn has(node: &Node, args: &[&str], text: &str) -> Option<bool> {
    texts(node, args)
        .into_iter()
        .find(|(t, _)| t == text)
        .map(|(_, own)| own)
}

fn ids(node: &Node, args: &[&str]) -> Vec<String> {
    node.json(args)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m| m["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_linked_second_device_sends_receives_and_gets_sync_copies() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), "")?;
    let ana = Node::init_and_start(dir.path(), "ana", Some(&relay.addr))?;
    let ben = Node::init_and_start(dir.path(), "ben", Some(&relay.addr))?;
    link_pair(&ana, &ben, "ana", "ben")?;
    ana.ok(&["send", "ben", "before linking"])?;
    wait_for("ben to get the first message", WAIT, || {
        has(&ben, &["history", "ana"], "before linking")
    })?;

    // The new device shows a code and waits; the first device adds it.
    let laptop_home = dir.path().join("ana-laptop");
    let mut link = Linking::start(&laptop_home, &relay.addr, "laptop")?;
    let code = link.code.clone();
    // A damaged code is refused with a clear error, before anything changes.
    let mut damaged = code.clone();
    damaged.insert(20, 'x');
    let bad = ana.cli(&["device", "add", &damaged]);
    assert_eq!(bad.status.code(), Some(5), "{bad:?}");
    let added = ana.json(&["device", "add", &code])?;
    assert_eq!(added["name"], "laptop");
    // Both screens show the same words; the new device applies the record once they are
    // confirmed there.
    let words = added["words"].as_str().unwrap_or_default().to_owned();
    assert_eq!(words.split(' ').count(), 5, "{added}");
    assert_eq!(link.next_words()?, words);
    link.answer("y")?;
    let (status, err) = link.finish()?;
    assert_eq!(status, Some(0), "tern device link: {err}");
    let devices = ana.json(&["device", "list"])?;
    assert_eq!(devices.as_array().map(Vec::len), Some(2));
    // A code naming the laptop with another provisioning key would get the identity secret
    // without any device being added: refused, and nothing changes.
    let mut forged = tern_node::device_link::Request::parse(&code)?;
    forged.provision = serde_bytes::ByteArray::new([7u8; 32]);
    let refused = ana.cli(&["device", "add", &forged.encode()?]);
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    assert_eq!(ana.json(&["device", "list"])?, devices);

    let laptop = Node::start(&laptop_home, Some(&relay.addr))?;
    assert_eq!(laptop.user, ana.user, "same user on both devices");
    assert_ne!(laptop.device, ana.device);
    // Contacts and recent history came along.
    let contacts = laptop.json(&["contact", "list"])?;
    assert_eq!(contacts[0]["name"], "ben");
    assert_eq!(
        has(&laptop, &["history", "ben"], "before linking"),
        Some(true)
    );

    // The laptop writes: Ben gets it (learning the new device from the relay), and the phone
    // shows it as its own.
    laptop.ok(&["send", "ben", "from the laptop"])?;
    wait_for("ben to get the laptop's message", WAIT, || {
        has(&ben, &["history", "ana"], "from the laptop")
    })?;
    let own = wait_for("the phone's sync copy", WAIT, || {
        has(&ana, &["history", "ben"], "from the laptop")
    })?;
    assert!(own, "a sync copy is an own message");
    // ... and names the device it came from, not its id.
    let shown = ana.ok(&["history", "ben", "--no-mark-read"])?;
    assert!(shown.contains("me (laptop): from the laptop"), "{shown}");
    // The phone writes: the laptop shows it as its own.
    ana.ok(&["send", "ben", "from the phone"])?;
    assert!(wait_for("the laptop's sync copy", WAIT, || {
        has(&laptop, &["history", "ben"], "from the phone")
    })?);
    // Ben's message reaches both devices.
    ben.ok(&["send", "ana", "to both devices"])?;
    for device in [&ana, &laptop] {
        let own = wait_for("ben's message on each device", WAIT, || {
            has(device, &["history", "ben"], "to both devices")
        })?;
        assert!(!own);
    }
    let on_phone = ids(&ana, &["history", "ben"]);
    let on_laptop = ids(&laptop, &["history", "ben"]);
    assert_eq!(on_phone, on_laptop, "both devices show one conversation");

    // A group Ben makes with Ana reaches both of Ana's devices, and either can write to it.
    let group = ben.json(&["group", "create", "Duo", "ana"])?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ben.ok(&["group", "send", &group, "hello both"])?;
    for device in [&ana, &laptop] {
        wait_for("the group message on each device", WAIT, || {
            has(device, &["group", "history", &group], "hello both")
        })?;
    }
    laptop.ok(&["group", "send", &group, "laptop in the group"])?;
    wait_for("ben to get the laptop's group message", WAIT, || {
        has(&ben, &["group", "history", &group], "laptop in the group")
    })?;
    assert!(wait_for("the phone's group sync copy", WAIT, || {
        has(&ana, &["group", "history", &group], "laptop in the group")
    })?);
    let info: Value = laptop.json(&["group", "info", &group])?;
    assert_eq!(info["member"], true);
    Ok(())
}

/// An identity secret record for `user_id` with a fresh key: what someone posing as that user
/// would hold (tern-crypto's `IdentityKey::to_secret_bytes` layout).
fn identity_posing_as(user_id: &str) -> anyhow::Result<tern_crypto::IdentityKey> {
    #[derive(serde::Serialize)]
    struct Record {
        #[serde(with = "serde_bytes")]
        user_id: [u8; 16],
        #[serde(with = "serde_bytes")]
        secret: [u8; 32],
    }
    let user = tern_crypto::UserId::from_hex(user_id).ok_or_else(|| anyhow::anyhow!("user id"))?;
    let secret = *tern_crypto::IdentityKey::generate()?
        .to_secret_bytes()?
        .last_chunk::<32>()
        .ok_or_else(|| anyhow::anyhow!("secret"))?;
    let mut bytes = vec![1, tern_crypto::Kind::IdentitySecret as u8];
    ciborium::into_writer(
        &Record {
            user_id: *user.as_bytes(),
            secret,
        },
        &mut bytes,
    )?;
    Ok(tern_crypto::IdentityKey::from_secret_bytes(&bytes)?)
}

#[test]
fn a_contacts_device_list_under_another_identity_key_blocks_sending() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut relay = Relay::start(&dir.path().join("relay"), "")?;
    let ana = Node::init_and_start(dir.path(), "ana", Some(&relay.addr))?;
    let mut ben = Node::init_and_start(dir.path(), "ben", Some(&relay.addr))?;
    link_pair(&ana, &ben, "ana", "ben")?;
    ana.ok(&["send", "ben", "hello"])?;
    // The relay loses its database (same identity and port), and someone else publishes a
    // device list for Ben's user id under their own identity key.
    ben.kill9();
    relay.kill9();
    for f in ["relay.sqlite3", "relay.sqlite3-wal", "relay.sqlite3-shm"] {
        let _ = std::fs::remove_file(relay.data.join("db").join(f));
    }
    relay.restart_after_kill9("")?;
    let forger = identity_posing_as(&ben.user)?;
    let device = tern_crypto::DeviceKeys::generate()?;
    let certificate = device.certify(&forger, "forged", 1)?;
    let list = tern_crypto::DeviceList::first(&forger, certificate, 1).sign(&forger)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let key = tern_relay::client::Keypair::ed25519_from_bytes(*device.network_secret())?;
        let (client, _events) = tern_relay::client::Client::connect(
            key,
            relay.addr.parse()?,
            tern_relay::client::Config::default(),
        )
        .await?;
        client.publish_device_list(list.as_bytes().to_vec()).await?;
        // Mail from a device Ana does not know makes her look at device lists again.
        let ana_device: tern_relay::PeerId = ana.device.parse()?;
        client
            .deposit(vec![ana_device], None, vec![1, 2, 3])
            .await?;
        anyhow::Ok(())
    })?;
    let contacts = wait_for("Ana to see Ben's key change", WAIT, || {
        ana.json(&["contact", "list"])
            .ok()
            .filter(|c| c[0]["identity_change_pending"] == true)
    })?;
    assert_eq!(contacts[0]["name"], "ben");
    let refused = ana.cli(&["send", "ben", "to a forger?"]);
    assert_eq!(refused.status.code(), Some(6), "{refused:?}");
    Ok(())
}
