//! Identity backups and the store passphrase, over real processes on 127.0.0.1:
//! `tern id backup` on a running node, `tern id restore` into a fresh home (a new device of
//! the same user, with the contacts and groups), and refusals that write nothing; `tern id
//! passphrase` on a stopped node, then restarts that still open the store with history intact.

use std::{path::Path, time::Duration};

use serde_json::Value;
use tern_tests::support::{Node, Relay, link_pair, tern, wait_for};

const WAIT: Duration = Duration::from_secs(60);
const PASSPHRASE: &str = "correct horse battery staple";

fn has_text(node: &Node, args: &[&str], text: &str) -> bool {
    node.json(args)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .any(|m| m["text"] == text)
}

fn write_passphrase(path: &Path, p: &str) -> anyhow::Result<()> {
    std::fs::write(path, format!("{p}\n"))?;
    Ok(())
}

fn home_is_empty(home: &Path) -> bool {
    !home.exists()
        || std::fs::read_dir(home)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
}

#[test]
fn a_backup_restores_as_a_new_device_and_bad_files_write_nothing() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), "")?;
    let ana = Node::init_and_start(dir.path(), "ana", Some(&relay.addr))?;
    let ben = Node::init_and_start(dir.path(), "ben", Some(&relay.addr))?;
    link_pair(&ana, &ben, "ana", "ben")?;
    let group = ana.json(&["group", "create", "Club", "ben"])?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ana.ok(&["send", "ben", "before the backup"])?;
    wait_for("ben to get the first text", WAIT, || {
        has_text(&ben, &["history", "ana"], "before the backup").then_some(())
    })?;

    let pass_file = dir.path().join("pass");
    write_passphrase(&pass_file, PASSPHRASE)?;
    let weak_file = dir.path().join("weak");
    write_passphrase(&weak_file, "aaaaaaaaaaaaaaaa")?;
    let backup = dir.path().join("ana.ternbackup");
    let backup_s = backup.to_str().unwrap_or_default();

    // A weak passphrase is refused as bad input, and nothing is written.
    let out = ana.cli(&[
        "id",
        "backup",
        backup_s,
        "--passphrase-file",
        weak_file.to_str().unwrap_or_default(),
    ]);
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("different characters"));
    assert!(!backup.exists());

    let v = ana.json(&[
        "id",
        "backup",
        backup_s,
        "--passphrase-file",
        pass_file.to_str().unwrap_or_default(),
    ])?;
    assert_eq!(v["contacts"], 1);
    assert_eq!(v["groups"], 1);
    let bytes = std::fs::read(&backup)?;
    assert_eq!(&bytes[..8], b"TERNBKUP");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&backup)?.permissions().mode() & 0o777,
            0o600
        );
    }

    // Refusals: wrong passphrase, a flipped byte, a cut file, another version. Exit 10 and an
    // empty home each time.
    let bad_home = dir.path().join("bad");
    let wrong_file = dir.path().join("wrong");
    write_passphrase(&wrong_file, "correct horse battery stapler")?;
    let restore_bad = |file: &Path, pass: &Path| {
        tern(
            &bad_home,
            &[
                "id",
                "restore",
                file.to_str().unwrap_or_default(),
                "--passphrase-file",
                pass.to_str().unwrap_or_default(),
            ],
        )
    };
    let out = restore_bad(&backup, &wrong_file);
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    assert!(home_is_empty(&bad_home));
    let variants: Vec<(&str, Vec<u8>)> = vec![
        ("tampered", {
            let mut b = bytes.clone();
            let i = b.len() - 20;
            b[i] ^= 0x01;
            b
        }),
        ("truncated", bytes[..bytes.len() - 1].to_vec()),
        ("version", {
            let mut b = bytes.clone();
            b[8] = 9;
            b
        }),
        ("magic", {
            let mut b = bytes.clone();
            b[0] = b'X';
            b
        }),
    ];
    for (what, b) in variants {
        let f = dir.path().join(what);
        std::fs::write(&f, b)?;
        let out = restore_bad(&f, &pass_file);
        assert_eq!(out.status.code(), Some(10), "{what}: {out:?}");
        assert!(home_is_empty(&bad_home), "{what}: the home was written");
    }

    // The real restore: a new device of ana, offline, then `tern up`.
    let new_home = dir.path().join("ana-restored");
    // A laptop linked after the backup: the relay now holds a device list the backup does
    // not know, with the same version the restored device will give its own.
    tern_tests::support::link_device(&ana, &dir.path().join("ana-laptop"), &relay.addr, "laptop")?;
    let v: Value = serde_json::from_str(&tern_tests::support::tern_ok(
        &new_home,
        &[
            "--json",
            "id",
            "restore",
            backup_s,
            "--passphrase-file",
            pass_file.to_str().unwrap_or_default(),
            "--name",
            "restored",
        ],
    )?)?;
    assert_eq!(v["user_id"], ana.user.as_str());
    assert_ne!(v["device_id"], ana.device.as_str());
    // Restoring again into the same home is refused.
    let out = tern(
        &new_home,
        &[
            "id",
            "restore",
            backup_s,
            "--passphrase-file",
            pass_file.to_str().unwrap_or_default(),
        ],
    );
    assert_eq!(out.status.code(), Some(8), "{out:?}");

    let restored = Node::start(&new_home, Some(&relay.addr))?;
    assert_eq!(restored.user, ana.user);
    let contacts = restored.json(&["contact", "list"])?;
    let ben_entry = contacts
        .as_array()
        .and_then(|a| a.iter().find(|c| c["name"] == "ben").cloned())
        .ok_or_else(|| anyhow::anyhow!("ben missing from {contacts}"))?;
    assert_eq!(ben_entry["user_id"], ben.user.as_str());
    let groups = restored.json(&["group", "list"])?;
    assert!(
        groups.as_array().is_some_and(|a| a
            .iter()
            .any(|g| g["id"] == group.as_str() && g["title"] == "Club")),
        "{groups}"
    );
    // The restored device finds its list superseded at the relay and adds itself on top of
    // it: phone, laptop and restored device, on the restored device and on the phone.
    for (name, node) in [("restored", &restored), ("phone", &ana)] {
        wait_for(&format!("three devices on the {name}"), WAIT, || {
            node.json(&["device", "list"])
                .ok()
                .filter(|d| d.as_array().map(Vec::len) == Some(3))
        })?;
    }

    // Ben reaches the restored device once he learns it from ana's new device list.
    restored.ok(&["send", "ben", "from the restored device"])?;
    wait_for("ben to get the restored device's text", WAIT, || {
        has_text(&ben, &["history", "ana"], "from the restored device").then_some(())
    })?;
    ben.ok(&["send", "ana", "back to both devices"])?;
    wait_for("the restored device to get ben's answer", WAIT, || {
        has_text(&restored, &["history", "ben"], "back to both devices").then_some(())
    })?;
    Ok(())
}

#[test]
fn a_store_passphrase_change_keeps_everything_across_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), "")?;
    let mut ana = Node::init_and_start(dir.path(), "ana", Some(&relay.addr))?;
    let ben = Node::init_and_start(dir.path(), "ben", Some(&relay.addr))?;
    link_pair(&ana, &ben, "ana", "ben")?;
    ben.ok(&["send", "ana", "kept through the change"])?;
    wait_for("ana to get the text", WAIT, || {
        has_text(&ana, &["history", "ben"], "kept through the change").then_some(())
    })?;
    let pass_file = dir.path().join("pass");
    write_passphrase(&pass_file, PASSPHRASE)?;
    let pass = pass_file.to_str().unwrap_or_default();

    // Refused while the node runs.
    let out = ana.cli(&["id", "passphrase", "--new-passphrase-file", pass]);
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    ana.stop()?;

    let weak = dir.path().join("weak");
    write_passphrase(&weak, "short")?;
    let out = tern(
        &ana.home,
        &[
            "id",
            "passphrase",
            "--new-passphrase-file",
            weak.to_str().unwrap_or_default(),
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(ana.home.join("store.key").exists(), "nothing changed");

    tern_tests::support::tern_ok(
        &ana.home,
        &["id", "passphrase", "--new-passphrase-file", pass],
    )?;
    assert!(!ana.home.join("store.key").exists());
    assert!(ana.home.join("store.kdf").exists());

    let mut ana = Node::start_with(
        &ana.home.clone(),
        Some(&relay.addr),
        &["--passphrase-file", pass],
    )?;
    assert!(has_text(
        &ana,
        &["history", "ben"],
        "kept through the change"
    ));
    ben.ok(&["send", "ana", "after the change"])?;
    wait_for("ana to get a text after the change", WAIT, || {
        has_text(&ana, &["history", "ben"], "after the change").then_some(())
    })?;
    ana.stop()?;

    // A wrong current passphrase is refused; the right one takes the store back to a keyfile.
    let wrong = dir.path().join("wrong");
    write_passphrase(&wrong, "not the right passphrase")?;
    let out = tern(
        &ana.home,
        &[
            "id",
            "passphrase",
            "--keyfile",
            "--passphrase-file",
            wrong.to_str().unwrap_or_default(),
        ],
    );
    assert_eq!(out.status.code(), Some(10), "{out:?}");
    tern_tests::support::tern_ok(
        &ana.home,
        &["id", "passphrase", "--keyfile", "--passphrase-file", pass],
    )?;
    assert!(ana.home.join("store.key").exists());
    assert!(!ana.home.join("store.kdf").exists());
    let ana = Node::start(&ana.home.clone(), Some(&relay.addr))?;
    assert!(has_text(
        &ana,
        &["history", "ben"],
        "kept through the change"
    ));
    assert!(has_text(&ana, &["history", "ben"], "after the change"));
    Ok(())
}
