//! Files and images end to end, over real `tern` and `tern-relay` processes on 127.0.0.1: a
//! 100 MiB file to an offline contact with both nodes killed -9 mid-transfer, the same
//! between online peers with the sender killed mid-download, a photo whose GPS position must
//! not arrive, one upload for a group of five, the relay's quota and expiry, a tampered blob,
//! and the inputs that must be refused at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tern_tests::support::{
    Node, Relay, link_pair, media as fixtures, start_nodes, wait_direct, wait_for,
    wait_outbox_empty,
};

/// Longest a 100 MiB transfer (or its resumption) may take on a 2-core machine, debug build.
const BIG_WAIT: Duration = Duration::from_secs(300);
/// Longest a small transfer or a message may take.
const WAIT: Duration = Duration::from_secs(60);
/// The largest file a user may send (the node's limit).
const MAX_FILE: u64 = 100 * 1024 * 1024;

/// Writes `len` pseudo-random bytes (seeded) to `path`; returns their SHA-256.
fn random_file(path: &Path, len: u64, seed: u64) -> [u8; 32] {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut hash = Sha256::new();
    let mut x = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = usize::try_from(left.min(buf.len() as u64)).unwrap();
        f.write_all(&buf[..n]).unwrap();
        hash.update(&buf[..n]);
        left -= n as u64;
    }
    f.flush().unwrap();
    hash.finalize().into()
}

fn file_hash(path: &Path) -> [u8; 32] {
    use std::io::Read;
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().into()
}

/// The node's transfer of message `id`, as `tern file list` shows it.
fn transfer(node: &Node, id: &str) -> Option<Value> {
    let list = node.json(&["file", "list"]).ok()?;
    list.as_array()?.iter().find(|t| t["id"] == id).cloned()
}

/// Waits until the transfer of `id` is in `state` (failing fast if it failed instead).
fn wait_transfer(node: &Node, id: &str, state: &str, timeout: Duration) -> Value {
    wait_for(&format!("transfer {id} {state}"), timeout, || {
        let t = transfer(node, id)?;
        assert!(
            state == "failed" || t["state"] != "failed",
            "transfer failed: {t}"
        );
        (t["state"] == state).then_some(t)
    })
    .unwrap()
}

/// Waits until the transfer of `id` has moved more than `bytes`, and is still running. It
/// asks through one API session every few milliseconds (a `tern file list` per look would
/// take a good part of a second on a loaded machine, while a fast transfer on loopback moves
/// the rest of a file in less), so that what it returns is mid-way.
fn wait_past(node: &Node, id: &str, bytes: u64) -> Value {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut api = node.api().await.unwrap();
        let deadline = tokio::time::Instant::now() + BIG_WAIT;
        loop {
            let list = api.call("file.transfers", json!({})).await.unwrap();
            let found = list
                .as_array()
                .and_then(|l| l.iter().find(|t| t["id"] == id))
                .cloned();
            if let Some(t) = found {
                assert_ne!(
                    t["state"], "done",
                    "the transfer ended before it could be cut: {t}"
                );
                assert_ne!(t["state"], "failed", "transfer failed: {t}");
                if t["bytes"].as_u64().is_some_and(|b| b > bytes) {
                    return t;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "transfer {id} not past {bytes} bytes within {BIG_WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    })
}

/// Waits until `node` holds message `id` in its conversation with `contact`.
fn wait_message(node: &Node, contact: &str, id: &str) -> Value {
    wait_for(&format!("message {id}"), BIG_WAIT, || {
        let h = node.json(&["history", contact, "--no-mark-read"]).ok()?;
        h.as_array()?.iter().find(|m| m["id"] == id).cloned()
    })
    .unwrap()
}

use tern_crypto::hex::encode as hex;

/// Starts saving message `id`'s file to `to` over the API (returns at once while the file
/// downloads).
fn start_get(node: &Node, id: &str, to: &Path) -> Value {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut api = node.api().await.unwrap();
        api.call(
            "file.get",
            json!({"message": id, "to": to.display().to_string()}),
        )
        .await
        .unwrap()
    })
}

/// Alice and Bob, contacts of each other, both homed on `relay`.
fn alice_and_bob(dir: &Path, relay: &Relay) -> (Node, Node) {
    let mut nodes = start_nodes(dir, &["alice", "bob"], &relay.addr).unwrap();
    let bob = nodes.pop().unwrap();
    let alice = nodes.pop().unwrap();
    link_pair(&alice, &bob, "Alice", "Bob").unwrap();
    (alice, bob)
}

/// `tern send-file ARGS` on `node`; returns the message id it prints.
fn send_file(node: &Node, args: &[&str]) -> String {
    let mut all = vec!["send-file"];
    all.extend_from_slice(args);
    let id = node.ok(&all).unwrap().trim().to_owned();
    assert_eq!(id.len(), 32, "a message id: {id}");
    id
}

fn blob_files(relay: &Relay) -> Vec<PathBuf> {
    let dir = relay.data.join("db").join("blobs");
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_100_mib_file_reaches_an_offline_contact_across_kills_of_both_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_metrics(&dir.path().join("relay"), "").unwrap();
    let (mut alice, mut bob) = alice_and_bob(dir.path(), &relay);
    bob.stop().unwrap();

    let src = dir.path().join("big.bin");
    let sha = random_file(&src, MAX_FILE, 7);
    let id = send_file(
        &alice,
        &[
            "--no-wait",
            "Bob",
            src.to_str().unwrap(),
            "--caption",
            "the archive",
        ],
    );
    assert_eq!(id.len(), 32, "{id}");

    // Alice is killed a third of the way through the upload, and goes on after a restart.
    let cut = wait_past(&alice, &id, MAX_FILE / 3);
    alice.kill9();
    alice.restart().unwrap();
    let done = wait_transfer(&alice, &id, "done", BIG_WAIT);
    let total = done["total"].as_u64().unwrap();
    assert!(total > MAX_FILE, "the blob is the ciphertext: {done}");
    // Resuming sent again at most one window (8 MiB) past what the relay had acknowledged.
    let received = relay.metric("tern_relay_blob_upload_bytes_total").unwrap() as u64;
    assert!(
        received <= total + 8 * 1024 * 1024 + 256 * 1024,
        "the relay received {received} bytes for a {total}-byte blob (cut at {cut})"
    );
    assert_eq!(relay.metric("tern_relay_blob_uploads_total").unwrap(), 1.0);

    // Bob comes online: the message arrives; a file over 25 MB waits to be asked for.
    bob.restart().unwrap();
    let m = wait_message(&bob, "Alice", &id);
    assert_eq!(m["kind"], "file", "{m}");
    assert_eq!(m["text"], "the archive", "{m}");
    assert_eq!(m["media"]["name"], "big.bin", "{m}");
    assert_eq!(m["media"]["size"], MAX_FILE, "{m}");
    assert_eq!(m["media"]["sha256"], hex(&sha), "{m}");
    assert!(
        transfer(&bob, &id).is_none(),
        "not downloaded without asking"
    );
    // The file name is searchable.
    let hits = bob.json(&["search", "big.bin"]).unwrap();
    assert!(
        hits.as_array()
            .unwrap()
            .iter()
            .any(|h| h.to_string().contains(&id)),
        "{hits}"
    );

    // Bob asks for it, is killed a third of the way, and the download resumes on restart.
    let out = dir.path().join("received.bin");
    let started = start_get(&bob, &id, &out);
    assert_eq!(started["state"], "downloading", "{started}");
    wait_past(&bob, &id, MAX_FILE / 3);
    bob.kill9();
    assert!(!out.exists(), "no partial file under the asked-for name");
    bob.restart().unwrap();
    let got = wait_transfer(&bob, &id, "done", BIG_WAIT);
    assert_eq!(got["path"], out.display().to_string(), "{got}");
    assert_eq!(file_hash(&out), sha, "the bytes arrived unchanged");
    // Nothing is left behind but the verified ciphertext.
    let media = bob.home.join("media");
    let leftovers: Vec<_> = std::fs::read_dir(&media)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn a_large_file_moves_directly_between_online_peers_and_goes_on_from_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_metrics(&dir.path().join("relay"), "").unwrap();
    let (mut alice, bob) = alice_and_bob(dir.path(), &relay);
    wait_direct(&bob, &alice, WAIT).unwrap();

    let len = 60 * 1024 * 1024;
    let src = dir.path().join("video.bin");
    let sha = random_file(&src, len, 11);
    let id = send_file(&alice, &["Bob", src.to_str().unwrap()]);
    wait_message(&bob, "Alice", &id);

    // Fetched from Alice directly: the relay serves nothing.
    let out = dir.path().join("direct.bin");
    bob.ok(&["file", "get", &id, "--to", out.to_str().unwrap()])
        .unwrap();
    assert_eq!(file_hash(&out), sha);
    assert_eq!(
        relay.metric("tern_relay_blob_downloads_total").unwrap(),
        0.0,
        "the whole file came from the sender"
    );

    // A second copy on a fresh device of Bob's would be fetched again; here Bob's copy is
    // removed and fetched again, with Alice killed a third of the way: the rest comes from
    // the relay, and the bytes are the same.
    std::fs::remove_dir_all(bob.home.join("media")).unwrap();
    std::fs::create_dir(bob.home.join("media")).unwrap();
    let again = dir.path().join("again.bin");
    start_get(&bob, &id, &again);
    wait_past(&bob, &id, len / 3);
    alice.kill9();
    let got = wait_transfer(&bob, &id, "done", BIG_WAIT);
    assert_eq!(got["path"], again.display().to_string());
    assert_eq!(file_hash(&again), sha);
    assert_eq!(
        relay.metric("tern_relay_blob_downloads_total").unwrap(),
        1.0,
        "the relay served the rest once"
    );
}

#[test]
fn an_upload_goes_on_after_the_relay_is_killed_mid_way() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let (alice, mut bob) = alice_and_bob(dir.path(), &relay);
    bob.stop().unwrap();

    // The largest file, cut at the first progress report past a quarter: progress comes
    // every 250 ms, and on a fast loopback a smaller file was up before its first report.
    let len = MAX_FILE;
    let src = dir.path().join("backup.tar");
    let sha = random_file(&src, len, 13);
    let id = send_file(&alice, &["--no-wait", "Bob", src.to_str().unwrap()]);
    wait_past(&alice, &id, len / 4);
    relay.restart_after_kill9("").unwrap();
    // Paused while the relay is down, then on from the relay's durable mark.
    wait_transfer(&alice, &id, "done", BIG_WAIT);
    bob.restart().unwrap();
    wait_message(&bob, "Alice", &id);
    // Over 25 MB: fetched when asked for.
    let out = dir.path().join("backup-received.tar");
    bob.ok(&["file", "get", &id, "--to", out.to_str().unwrap()])
        .unwrap();
    assert_eq!(file_hash(&out), sha);
}

#[test]
fn a_photo_arrives_without_its_gps_position_and_with_a_thumbnail() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let (alice, bob) = alice_and_bob(dir.path(), &relay);

    let photo = fixtures::jpeg_with_gps(3000, 2000);
    assert!(fixtures::has_exif(&photo));
    let src = dir.path().join("IMG_0001.jpeg");
    std::fs::write(&src, &photo).unwrap();
    let id = send_file(
        &alice,
        &["Bob", src.to_str().unwrap(), "--caption", "the view"],
    );
    let m = wait_message(&bob, "Alice", &id);
    assert_eq!(m["media"]["mime"], "image/jpeg", "{m}");
    assert_eq!(m["media"]["name"], "IMG_0001.jpg", "{m}");
    assert_eq!(
        (m["media"]["width"].as_u64(), m["media"]["height"].as_u64()),
        (Some(2048), Some(1365)),
        "{m}"
    );
    let thumb = m["media"]["thumbnail"].as_str().expect("a thumbnail");
    let thumb = data_encoding::BASE64.decode(thumb.as_bytes()).unwrap();
    assert!(
        thumb.len() <= 8 * 1024 && thumb.starts_with(&[0xff, 0xd8]),
        "a small JPEG"
    );
    assert!(
        m["media"]["thumbhash"]
            .as_str()
            .is_some_and(|h| !h.is_empty())
    );

    // Small enough to download at once; the copy carries no EXIF and no GPS position.
    wait_transfer(&bob, &id, "done", WAIT);
    let out = dir.path().join("view.jpg");
    bob.ok(&["file", "get", &id, "--to", out.to_str().unwrap()])
        .unwrap();
    let got = std::fs::read(&out).unwrap();
    assert!(got.starts_with(&[0xff, 0xd8]));
    assert!(!fixtures::has_exif(&got), "EXIF was stripped");
    assert!(
        !got.windows(fixtures::GPS_LATITUDE.len())
            .any(|w| w == fixtures::GPS_LATITUDE),
        "no GPS position"
    );
    // Nothing the relay holds carries the position either (it only ever sees ciphertext).
    let holding = tern_tests::support::files_containing(&relay.data, &fixtures::GPS_LATITUDE);
    assert!(
        holding.is_empty(),
        "relay files hold the GPS position: {holding:?}"
    );
    // Without --to, the file goes to the current directory under its own name.
    let cwd = dir.path().join("downloads");
    std::fs::create_dir(&cwd).unwrap();
    let out = std::process::Command::new(tern_tests::support::bin("tern"))
        .current_dir(&cwd)
        .args(["--home", bob.home.to_str().unwrap(), "file", "get", &id])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(cwd.join("IMG_0001.jpg").exists());
}

#[test]
fn a_group_of_five_gets_one_file_from_one_upload() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_metrics(&dir.path().join("relay"), "").unwrap();
    let names = ["alice", "bob", "carol", "dave", "erin"];
    let nodes = start_nodes(dir.path(), &names, &relay.addr).unwrap();
    for (i, name) in ["Bob", "Carol", "Dave", "Erin"].iter().enumerate() {
        link_pair(&nodes[0], &nodes[i + 1], "Alice", name).unwrap();
    }
    let g = nodes[0]
        .json(&["group", "create", "Team", "Bob", "Carol", "Dave", "Erin"])
        .unwrap();
    let group = g["id"].as_str().unwrap().to_owned();
    for n in &nodes[1..] {
        wait_for("the group", WAIT, || {
            let l = n.json(&["group", "list"]).ok()?;
            l.as_array()?
                .iter()
                .any(|x| x["id"] == group.as_str())
                .then_some(())
        })
        .unwrap();
    }
    let src = dir.path().join("minutes.pdf");
    let sha = random_file(&src, 3 * 1024 * 1024 + 17, 3);
    let id = nodes[0]
        .ok(&["send-file", "--group", "Team", src.to_str().unwrap()])
        .unwrap()
        .trim()
        .to_owned();
    for (i, n) in nodes[1..].iter().enumerate() {
        wait_transfer(n, &id, "done", WAIT);
        let out = dir.path().join(format!("minutes-{i}.pdf"));
        n.ok(&["file", "get", &id, "--to", out.to_str().unwrap()])
            .unwrap();
        assert_eq!(file_hash(&out), sha, "member {i}");
    }
    assert_eq!(
        relay.metric("tern_relay_blob_uploads_total").unwrap(),
        1.0,
        "one upload"
    );
    assert_eq!(relay.metric("tern_relay_blobs").unwrap(), 1.0, "one blob");
}

#[test]
fn over_large_files_bad_images_and_the_relay_quota_are_refused_with_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        &dir.path().join("relay"),
        "[blobs]\nquota_bytes = 3000000\n",
    )
    .unwrap();
    let (alice, bob) = alice_and_bob(dir.path(), &relay);

    // Over 100 MiB: refused at once, nothing staged.
    let huge = dir.path().join("huge.bin");
    std::fs::File::create(&huge)
        .unwrap()
        .set_len(MAX_FILE + 1)
        .unwrap();
    let out = alice.cli(&["send-file", "Bob", huge.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("at most"),
        "{out:?}"
    );
    // Not a file, and no such file.
    let out = alice.cli(&["send-file", "Bob", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    let out = alice.cli(&["send-file", "Bob", "/nonexistent/x.bin"]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    // Whom to: a contact and a group, or neither, is a usage error (exit 2, as clap's).
    let out = alice.cli(&["send-file", "Bob", "--group", "Team", "x.bin"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let out = alice.cli(&["send-file", "x.bin"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // A group and no file: the file is asked for, not a contact.
    let out = alice.cli(&["send-file", "--group", "Team"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("give the file to send to the group"),
        "{out:?}"
    );

    // An image that claims to be enormous (a decompression bomb) is refused, not decoded.
    let bomb = dir.path().join("bomb.png");
    std::fs::write(&bomb, png_claiming(100_000, 100_000)).unwrap();
    let out = alice.cli(&["send-file", "Bob", bomb.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad_image"),
        "{out:?}"
    );

    // Over the relay's quota: refused before any byte moves, and said why.
    let big = dir.path().join("big.bin");
    random_file(&big, 4_000_000, 5);
    let out = alice.cli(&["send-file", "Bob", big.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("over_quota"),
        "{out:?}"
    );
    assert!(
        blob_files(&relay)
            .iter()
            .all(|f| std::fs::metadata(f).unwrap().len() < 4096),
        "no blob data stored"
    );
    // Nothing was sent to Bob, and under the quota a file goes.
    let ok = dir.path().join("ok.bin");
    random_file(&ok, 1_000_000, 6);
    let id = send_file(&alice, &["Bob", ok.to_str().unwrap()]);
    let m = wait_message(&bob, "Alice", &id);
    let h = bob.json(&["history", "Alice"]).unwrap();
    assert_eq!(
        h.as_array().unwrap().len(),
        1,
        "only the file under the quota: {h} {m}"
    );
    // Saved into a directory that does not exist: said at once, in those terms.
    let nowhere = dir.path().join("no-such-dir").join("ok.bin");
    let out = bob.cli(&["file", "get", &id, "--to", nowhere.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a directory that exists"), "{err}");
    assert!(!err.contains("ok.bin"), "no temporary file named: {err}");
}

#[test]
fn an_image_that_cannot_be_decoded_goes_as_it_is_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let (alice, bob) = alice_and_bob(dir.path(), &relay);
    // JPEG's magic bytes, then nothing a decoder can read.
    let broken = dir.path().join("broken.jpg");
    let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xE0];
    bytes.extend_from_slice(b"not really a JPEG, whatever its first bytes say");
    std::fs::write(&broken, &bytes).unwrap();
    let path = broken.to_str().unwrap();
    let out = alice.cli(&["send-file", "Bob", path]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bad_image"),
        "{out:?}"
    );
    // Not both ways at once.
    let out = alice.cli(&["send-file", "--as-file", "--original", "Bob", path]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    // As a file: the bytes as they are, under their name.
    let id = send_file(&alice, &["--as-file", "Bob", path]);
    let m = wait_message(&bob, "Alice", &id);
    assert_eq!(m["media"]["name"], "broken.jpg", "{m}");
    assert_eq!(m["media"]["mime"], "application/octet-stream", "{m}");
    assert_eq!(m["media"]["size"], bytes.len(), "{m}");
    let out = dir.path().join("got.jpg");
    bob.ok(&["file", "get", &id, "--to", out.to_str().unwrap()])
        .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), bytes);
}

#[test]
fn a_tampered_blob_is_refused_and_nothing_of_it_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let (mut alice, mut bob) = alice_and_bob(dir.path(), &relay);

    // Bob is offline while a byte of the blob is flipped at the relay; Alice goes offline
    // once it is sent, so the relay's copy is the only one.
    bob.stop().unwrap();
    let small = dir.path().join("small.bin");
    random_file(&small, 1_000_000, 9);
    let id = send_file(&alice, &["Bob", small.to_str().unwrap()]);
    let data = blob_files(&relay)
        .into_iter()
        .max_by_key(|f| std::fs::metadata(f).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&data).unwrap();
    assert!(bytes.len() > 900_000, "the blob's data file");
    bytes[500_000] ^= 0x40;
    std::fs::write(&data, &bytes).unwrap();
    wait_outbox_empty(&alice, WAIT).unwrap();
    alice.stop().unwrap();
    bob.restart().unwrap();
    let failed = wait_transfer(&bob, &id, "failed", WAIT);
    let code = failed["code"].as_str().unwrap_or_default();
    assert!(
        ["tampered", "hash_mismatch"].contains(&code),
        "refused as tampered: {failed}"
    );
    let media = bob.home.join("media");
    assert_eq!(
        std::fs::read_dir(&media).unwrap().count(),
        0,
        "nothing kept of a file that does not verify"
    );
    let out = bob.cli(&[
        "file",
        "get",
        &id,
        "--to",
        dir.path().join("x.bin").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    assert!(!dir.path().join("x.bin").exists());
}

#[test]
fn an_expired_file_is_reported_and_its_space_freed() {
    let dir = tempfile::tempdir().unwrap();
    // Blobs live three seconds here, collected every second.
    let relay = Relay::start_with_metrics(
        &dir.path().join("relay"),
        "[blobs]\nttl_secs = 3\ngc_secs = 1\n",
    )
    .unwrap();
    let (alice, mut bob) = alice_and_bob(dir.path(), &relay);
    bob.stop().unwrap();
    let small = dir.path().join("small.bin");
    random_file(&small, 1_000_000, 9);
    let id = send_file(&alice, &["Bob", small.to_str().unwrap()]);
    wait_for("the relay to collect the expired blob", WAIT, || {
        (relay.metric("tern_relay_blobs_collected_total").ok()? >= 1.0).then_some(())
    })
    .unwrap();
    assert_eq!(
        relay.metric("tern_relay_blob_bytes").unwrap(),
        0.0,
        "disk space freed"
    );
    assert!(blob_files(&relay).is_empty(), "{:?}", blob_files(&relay));
    bob.restart().unwrap();
    let m = wait_message(&bob, "Alice", &id);
    assert!(m["media"]["expires_at"].as_u64().unwrap() > 0, "{m}");
    let out = bob.cli(&[
        "file",
        "get",
        &id,
        "--to",
        dir.path().join("late.bin").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(13), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{out:?}"
    );
}

/// A PNG signature and IHDR declaring `w` × `h`, with a tiny IDAT: a decoder that trusted
/// the header would allocate `w * h * 4` bytes.
fn png_claiming(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(kind);
        out.extend(data);
        out.extend(crc32(kind, data).to_be_bytes());
    }
    fn crc32(kind: &[u8], data: &[u8]) -> u32 {
        let mut c = 0xffff_ffffu32;
        for &b in kind.iter().chain(data) {
            c ^= u32::from(b);
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    (c >> 1) ^ 0xedb8_8320
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    let mut out = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 6, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A relay whose storage stays full: the upload is paused (the node retries it), and
/// `send-file` says so and gives up waiting once it has made no progress for `--idle-secs`,
/// rather than waiting for good; the transfer is still listed, paused, for the node to finish.
#[test]
fn send_file_gives_up_waiting_on_a_relay_that_stays_full() {
    let dir = tempfile::tempdir().unwrap();
    // No disk ever has this much free: every upload is refused as `StorageFull`.
    let relay = Relay::start(
        &dir.path().join("relay"),
        "[blobs]\nreserve_bytes = 18446744073709551615\n",
    )
    .unwrap();
    let (alice, bob) = alice_and_bob(dir.path(), &relay);
    drop(bob);
    let file = dir.path().join("f.bin");
    random_file(&file, 200_000, 9);
    let out = alice
        .cli_within(
            &[
                "send-file",
                "Bob",
                file.to_str().unwrap(),
                "--idle-secs",
                "2",
            ],
            WAIT,
        )
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        err.contains("paused (storage_full)") && err.contains("no progress for 2 s"),
        "{err}"
    );
    // Listed paused, and why (polled: between two of the node's retries it is uploading).
    wait_for("the transfer listed paused: storage_full", WAIT, || {
        let list = alice.json(&["file", "list"]).ok()?;
        let t = list.as_array()?.first()?.clone();
        (t["state"] == "paused" && t["code"] == "storage_full").then_some(())
    })
    .unwrap();
    // Bad values are refused before anything is sent.
    let out = alice.cli(&[
        "send-file",
        "Bob",
        file.to_str().unwrap(),
        "--idle-secs",
        "0",
    ]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
}

/// Several files sent at the same moment (picked together in a file dialog) all upload
/// without a pause: the relay takes one new stream at a time and drops the others unread,
/// and the node opens another for those at once, rather than pausing them as a network
/// failure and trying again seconds later.
#[test]
fn files_sent_together_upload_without_a_pause() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let (a, b) = alice_and_bob(dir.path(), &relay);
    let files: Vec<PathBuf> = (0..8u64)
        .map(|i| {
            let p = dir.path().join(format!("f{i}.bin"));
            random_file(&p, 20_000 + i, i);
            p
        })
        .collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ids = rt.block_on(async {
        let mut api = a.api().await.unwrap();
        api.subscribe().await.unwrap();
        let calls: Vec<(&str, Value)> = files
            .iter()
            .map(|p| ("file.send", json!({"contact": "Bob", "path": p})))
            .collect();
        let ids: Vec<String> = api
            .call_many(&calls)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.unwrap()["id"].as_str().unwrap().to_owned())
            .collect();
        let mut done = std::collections::HashSet::new();
        let deadline = std::time::Instant::now() + WAIT;
        while done.len() < ids.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ev = api
                .next_event(left)
                .await
                .unwrap_or_else(|e| panic!("{} of {} uploads done: {e}", done.len(), ids.len()));
            if let tern_node::types::Event::Transfer { transfer: t } = ev
                && ids.contains(&t.id)
            {
                assert!(!["paused", "failed"].contains(&t.state.as_str()), "{t:?}");
                if t.state == "done" {
                    done.insert(t.id);
                }
            }
        }
        ids
    });
    for id in &ids {
        wait_message(&b, "Alice", id);
    }
}

/// A node serving as many downloads of its files as it serves at once answers one more
/// stream `Unavailable` at once (its opener turns to the relay rather than waiting on a
/// stream the node dropped), and a stream that never asks for anything gives its place back
/// after `MEDIA_SERVE_FIRST_FRAME`.
#[test]
fn a_node_serving_all_it_can_says_so_and_idle_streams_give_way() {
    use tern_relay::{blob::BlobError, wire::ErrorCode};
    const STREAMS: usize = tern_node::consts::MEDIA_SERVE_STREAMS;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let alice = Node::start(&dir.path().join("alice"), Some(&relay.addr)).unwrap();
    let addr = direct_addr(&alice);
    let work = dir.path().to_owned();
    let rt = tern_tests::support::runtime();
    rt.block_on(async move {
        let (c, _events) = direct_client(addr).await;
        // Every place taken by a stream that asks for nothing.
        let mut idle = Vec::with_capacity(STREAMS);
        for _ in 0..STREAMS {
            let mut s = c.open_blob_stream().await.unwrap();
            // A byte of a frame's length prefix makes the node take the stream and wait for
            // the rest of the frame.
            tern_relay::libp2p::futures::AsyncWriteExt::write_all(&mut s, &[0])
                .await
                .unwrap();
            tern_relay::libp2p::futures::AsyncWriteExt::flush(&mut s)
                .await
                .unwrap();
            idle.push(s);
        }
        let get = |i: usize| {
            let (c, path) = (c.clone(), work.join(format!("get-{i}")));
            async move {
                let stream = c.open_blob_stream().await.unwrap();
                let mut f = tokio::fs::File::create(path).await.unwrap();
                tern_relay::blob::download(stream, &[7; 32], &[3; 32], 0, None, &mut f, |_| {})
                    .await
            }
        };
        // The idle streams are surely taken once a stream behind them is refused; until
        // then a stream may still be answered (it took a place before them).
        let mut i = 0;
        let refused = loop {
            i += 1;
            assert!(i < 200, "no stream was refused with every place taken");
            match tokio::time::timeout(Duration::from_secs(10), get(i))
                .await
                .unwrap()
            {
                Err(BlobError::Rejected {
                    code: ErrorCode::NotFound,
                    ..
                }) => {}
                other => break other,
            }
        };
        match refused {
            Err(BlobError::Rejected {
                code: ErrorCode::Unavailable,
                retry_after_ms: Some(_),
                ..
            }) => {}
            other => panic!("a stream beyond the node's places: {other:?}"),
        }
        // The idle streams (still open here) are closed by the node in time, and their
        // places serve again.
        let deadline = std::time::Instant::now()
            + tern_node::consts::MEDIA_SERVE_FIRST_FRAME
            + Duration::from_secs(20);
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "idle streams kept their places"
            );
            i += 1;
            match tokio::time::timeout(Duration::from_secs(10), get(i))
                .await
                .unwrap()
            {
                Err(BlobError::Rejected {
                    code: ErrorCode::NotFound,
                    ..
                }) => break,
                Err(BlobError::Rejected {
                    code: ErrorCode::Unavailable,
                    ..
                }) => tokio::time::sleep(Duration::from_millis(200)).await,
                other => panic!("a stream while the idle ones wait: {other:?}"),
            }
        }
        drop(idle);
    });
}

/// Alice's loopback TCP address with her device id, to open streams at her directly.
fn direct_addr(node: &Node) -> tern_relay::Multiaddr {
    let status = node.json(&["status", "--json"]).unwrap();
    let peer = status["device_id"].as_str().unwrap().to_owned();
    let listen = status["listen"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|a| a.starts_with("/ip4/127.0.0.1/tcp/"))
        .expect("the node listens on loopback TCP")
        .to_owned();
    if listen.contains("/p2p/") {
        listen.parse().unwrap()
    } else {
        format!("{listen}/p2p/{peer}").parse().unwrap()
    }
}

/// A relay client (a fresh identity) connected to `addr`, with its events (kept while it is
/// used).
async fn direct_client(
    addr: tern_relay::Multiaddr,
) -> (
    tern_relay::client::Client,
    tokio::sync::mpsc::Receiver<tern_relay::client::Event>,
) {
    use tern_relay::client::{Client, Config, Keypair};
    Client::connect(Keypair::generate_ed25519(), addr, Config::default())
        .await
        .unwrap()
}

/// Blob streams that peers open at a node at the same moment (several of its files fetched
/// at once, as many as it serves at once) are each taken on the first stream: the node
/// queues new streams rather than dropping all but one (its peers would open a dropped one
/// again, which this test rules out by not doing so).
#[test]
fn blob_streams_opened_together_at_a_node_are_all_taken() {
    use tern_relay::{blob::BlobError, wire::ErrorCode};
    const STREAMS: usize = tern_node::consts::MEDIA_SERVE_STREAMS;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let alice = Node::start(&dir.path().join("alice"), Some(&relay.addr)).unwrap();
    let addr = direct_addr(&alice);
    let work = dir.path().to_owned();
    let rt = tern_tests::support::runtime();
    let got = rt.block_on(async move {
        let (c, _events) = direct_client(addr).await;
        let mut streams = Vec::with_capacity(STREAMS);
        for _ in 0..STREAMS {
            streams.push(c.open_blob_stream().await.unwrap());
        }
        let mut tasks = tokio::task::JoinSet::new();
        for (i, stream) in streams.into_iter().enumerate() {
            let path = work.join(format!("get-{i}"));
            tasks.spawn(async move {
                let mut f = tokio::fs::File::create(path).await.unwrap();
                tern_relay::blob::download(stream, &[7; 32], &[3; 32], 0, None, &mut f, |_| {})
                    .await
            });
        }
        let got = tokio::time::timeout(Duration::from_secs(60), tasks.join_all())
            .await
            .unwrap();
        drop(c);
        got
    });
    for g in got {
        match g {
            Err(BlobError::Rejected {
                code: ErrorCode::NotFound,
                ..
            }) => {}
            other => panic!("a first stream at the node: {other:?}"),
        }
    }
}
