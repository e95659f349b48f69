//! Device lists that converge at once, and revocation, over real processes on 127.0.0.1:
//! two relays, Ana on one and Ben and Cleo on the other. Ana links a laptop; Ben (whom Ana's
//! phone tells of it at once) and Cleo (who still holds Ana's old device list) each send a
//! burst right away: both of Ana's devices get all of it, in order, without waiting for a
//! periodic refresh (Ana's phone answers Cleo with the new list and the texts the laptop
//! missed, and Cleo sends them again for it). Then Ana revokes the laptop
//! from her phone: nothing Ben sends afterwards, directly or in a group, is deposited for the
//! laptop (checked in the relay's database), and the laptop refuses to send once it learns.

use std::time::Duration;

use tern_tests::support::{Node, Relay, link_device, link_pair, relay_mail_from, wait_for};

const WAIT: Duration = Duration::from_secs(60);
/// Well inside the periodic device-list refresh (every 60 s): what arrives by then did not
/// wait for it.
const AT_ONCE: Duration = Duration::from_secs(30);

fn texts(node: &Node, args: &[&str]) -> Vec<String> {
    node.json(args)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn has(node: &Node, args: &[&str], text: &str) -> Option<()> {
    texts(node, args).iter().any(|t| t == text).then_some(())
}

#[test]
fn a_linked_device_gets_a_contacts_burst_at_once_and_a_revoked_one_gets_nothing()
-> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let r1 = Relay::start(&dir.path().join("relay1"), "")?;
    let r2 = Relay::start(&dir.path().join("relay2"), "")?;
    let ana = Node::init_and_start(dir.path(), "ana", Some(&r1.addr))?;
    let ben = Node::init_and_start(dir.path(), "ben", Some(&r2.addr))?;
    link_pair(&ana, &ben, "ana", "ben")?;
    ben.ok(&["send", "ana", "hello"])?;
    wait_for("ana to get hello", WAIT, || {
        has(&ana, &["history", "ben"], "hello")
    })?;
    ana.ok(&["send", "ben", "hi"])?;
    wait_for("ben to get hi", WAIT, || {
        has(&ben, &["history", "ana"], "hi")
    })?;
    let group = ben.json(&["group", "create", "Duo", "ana"])?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ben.ok(&["group", "send", &group, "group before"])?;
    wait_for("ana to get the group message", WAIT, || {
        has(&ana, &["group", "history", &group], "group before")
    })?;

    // Cleo, on Ben's relay, has Ana's link but has not written to her yet: Ana's phone holds
    // no session with her, so it cannot tell her of a new device ahead of time.
    let cleo = Node::init_and_start(dir.path(), "cleo", Some(&r2.addr))?;
    link_pair(&ana, &cleo, "ana", "cleo")?;

    // Ana links a laptop. Before it even starts, Ben (told by Ana's phone, with which he has
    // a session) and Cleo (who still holds Ana's old list) each send a burst.
    let laptop_home = dir.path().join("ana-laptop");
    let added = link_device(&ana, &laptop_home, &r1.addr, "laptop")?;
    let laptop_id = added["device_id"].as_str().unwrap_or_default().to_owned();
    let bursts: Vec<(&Node, &str, Vec<String>)> = vec![
        (
            &ben,
            "ben",
            (0..20).map(|i| format!("ben burst {i:02}")).collect(),
        ),
        (
            &cleo,
            "cleo",
            (0..20).map(|i| format!("cleo burst {i:02}")).collect(),
        ),
    ];
    for (from, _, burst) in &bursts {
        for t in burst {
            from.ok(&["send", "ana", t])?;
        }
    }
    let mut laptop = Node::start(&laptop_home, Some(&r1.addr))?;
    for (name, device) in [("phone", &ana), ("laptop", &laptop)] {
        for (_, contact, burst) in &bursts {
            let got = wait_for(
                &format!("{contact}'s whole burst on the {name}"),
                AT_ONCE,
                || {
                    let h = texts(device, &["history", contact, "--limit", "200"]);
                    let got: Vec<String> = h.into_iter().filter(|t| t.contains("burst")).collect();
                    (got.len() >= burst.len()).then_some(got)
                },
            )?;
            assert_eq!(&got, burst, "the {name} shows each text once, in order");
        }
    }
    let laptop_status = laptop.json(&["status"])?;
    assert_eq!(laptop_status["recovery"]["undecryptable"], 0);
    // Cleo did encrypt for the old list, and sent those texts again for the laptop.
    let cleo_status = cleo.json(&["status"])?;
    assert!(
        cleo_status["recovery"]["texts_resent"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{cleo_status}"
    );
    // The group reaches the laptop too: what Ben sends now, and what he sent shortly before
    // the laptop was linked.
    ben.ok(&["group", "send", &group, "group to both"])?;
    for text in ["group before", "group to both"] {
        wait_for(&format!("{text:?} on the laptop"), AT_ONCE, || {
            has(&laptop, &["group", "history", &group], text)
        })?;
    }

    // Ana revokes the laptop from her phone while the laptop is stopped (its mail drained).
    wait_for("the laptop's mailbox to be drained", WAIT, || {
        relay_mail_from(&r1.data, &laptop_id, None)
            .ok()
            .filter(|m| m.is_empty())
    })?;
    laptop.stop()?;
    let revoked = ana.json(&["device", "revoke", "laptop"])?;
    assert_eq!(revoked["device_id"], laptop_id.as_str());
    assert_eq!(
        ana.json(&["device", "list"])?.as_array().map(Vec::len),
        Some(1)
    );
    // Revoking it again, or this device, is refused with a clear error.
    let again = ana.cli(&["device", "revoke", &laptop_id]);
    assert_eq!(again.status.code(), Some(5), "{again:?}");
    let own = ana.cli(&["device", "revoke", &ana.device]);
    assert_eq!(own.status.code(), Some(5), "{own:?}");

    // Ben writes, directly and in the group: Ana's phone gets both, the laptop nothing.
    ben.ok(&["send", "ana", "after revoking"])?;
    ben.ok(&["group", "send", &group, "group after revoking"])?;
    wait_for("ana to get the direct text", WAIT, || {
        has(&ana, &["history", "ben"], "after revoking")
    })?;
    wait_for("ana to get the group text", WAIT, || {
        has(&ana, &["group", "history", &group], "group after revoking")
    })?;
    tern_tests::support::wait_outbox_empty(&ben, WAIT)?;
    let from_ben = relay_mail_from(&r1.data, &laptop_id, Some(&ben.device))?;
    assert!(
        from_ben.is_empty(),
        "{} ciphertexts from ben were deposited for the revoked laptop",
        from_ben.len()
    );

    // The laptop starts again, learns it was revoked and refuses to send; it never shows
    // what was sent after.
    laptop.restart()?;
    wait_for("the laptop to learn it was revoked", WAIT, || {
        laptop
            .json(&["device", "list"])
            .ok()
            .filter(|d| d.as_array().map(Vec::len) == Some(1))
    })?;
    let refused = laptop.cli(&["send", "ben", "from a revoked laptop"]);
    assert_eq!(refused.status.code(), Some(12), "{refused:?}");
    assert!(has(&laptop, &["history", "ben"], "after revoking").is_none());
    assert!(
        has(
            &laptop,
            &["group", "history", &group],
            "group after revoking"
        )
        .is_none()
    );
    assert!(has(&ben, &["history", "ana"], "from a revoked laptop").is_none());
    Ok(())
}
