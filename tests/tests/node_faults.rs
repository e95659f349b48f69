//! Bad input and faults over real processes: unknown contact, malformed and tampered links,
//! oversize text, a changed identity key, a node killed in the middle of sending, and
//! presence moving online → away → offline with last seen.

use serde::Serialize;
use serde_json::Value;
use tern_crypto::{DeviceKeys, DeviceList, IdentityKey};
use tern_node::{
    libp2p::{Multiaddr, identity::Keypair},
    link::ContactLink,
};
use tern_tests::support::{Node, Relay, WAIT, link_pair, wait_for};

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// An identity key that claims `user_id` (someone else's): what an attacker, or a
/// reinstall, would present.
fn identity_with_user_id(user_id: [u8; 16]) -> IdentityKey {
    #[derive(Serialize)]
    struct Record {
        user_id: serde_bytes::ByteArray<16>,
        secret: serde_bytes::ByteArray<32>,
    }
    let mut bytes = vec![1u8, 11];
    ciborium::into_writer(
        &Record {
            user_id: serde_bytes::ByteArray::new(user_id),
            secret: serde_bytes::ByteArray::new([7u8; 32]),
        },
        &mut bytes,
    )
    .unwrap();
    IdentityKey::from_secret_bytes(&bytes).unwrap()
}

fn hex16(s: &str) -> [u8; 16] {
    tern_crypto::hex::decode_array(s).unwrap()
}

#[test]
fn bad_input_is_refused_with_clear_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();

    // Unknown contact.
    let out = a.cli(&["send", "Mallory", "hi"]);
    assert_eq!(code(&out), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("unknown contact"));

    // Malformed and tampered links.
    let out = a.cli(&["contact", "add", "not-a-link"]);
    assert_eq!(code(&out), Some(5), "{}", stderr(&out));
    let link = b.link().unwrap();
    let mut chars: Vec<char> = link.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'a' { 'b' } else { 'a' };
    let tampered: String = chars.into_iter().collect();
    let out = a.cli(&["contact", "add", &tampered]);
    assert_eq!(code(&out), Some(5), "{}", stderr(&out));
    let own = a.link().unwrap();
    assert_eq!(code(&a.cli(&["contact", "add", &own])), Some(5));

    // Text over the limit, and empty text.
    let big = "x".repeat(tern_node::consts::MAX_TEXT_BYTES + 1);
    let out = a.cli(&["send", "Bob", &big]);
    assert_eq!(code(&out), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("limit"));
    assert_eq!(code(&a.cli(&["send", "Bob", "  "])), Some(5));
    // Far over it, on standard input (past what the local API takes at all): the same.
    let huge = "y".repeat(270_000);
    let out = tern_tests::support::tern_with_stdin(&a.home, &["send", "Bob", "-"], huge.as_bytes());
    assert_eq!(code(&out), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("270000 bytes, over the 32768-byte limit"),
        "{}",
        stderr(&out)
    );

    // A search query that is empty, or too long, is the user's to fix, not a storage fault.
    let terms = vec!["t"; 17].join(" ");
    for q in ["   ", &"q".repeat(513), &terms] {
        let out = a.cli(&["search", q]);
        assert_eq!(code(&out), Some(5), "{}", stderr(&out));
        assert!(!stderr(&out).contains("storage"), "{}", stderr(&out));
    }

    // A link for Bob's user id under another identity key: loud warning, sending blocked.
    let fake = identity_with_user_id(hex16(&b.user));
    let dev = DeviceKeys::generate().unwrap();
    let cert = dev.certify(&fake, "phone", 1).unwrap();
    let list = DeviceList::first(&fake, cert, 1).sign(&fake).unwrap();
    let kp = Keypair::ed25519_from_bytes(*dev.network_secret()).unwrap();
    let relay_addr: Multiaddr = relay.addr.parse().unwrap();
    let forged = ContactLink::create(&kp, "Bob", &[relay_addr], &list).unwrap();
    let out = a.cli(&["contact", "add", &forged]);
    assert_eq!(code(&out), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("WARNING"), "{}", stderr(&out));
    let out = a.cli(&["send", "Bob", "still there?"]);
    assert_eq!(code(&out), Some(6), "{}", stderr(&out));
    let contacts = a.json(&["contact", "list"]).unwrap();
    assert_eq!(contacts[0]["identity_change_pending"], true, "{contacts}");
    // Accepting the key lifts the block (and clears verification).
    let accepted = a.json(&["contact", "accept", "Bob"]).unwrap();
    assert_eq!(accepted["outcome"], "identity_changed", "{accepted}");
    let contacts = a.json(&["contact", "list"]).unwrap();
    assert_eq!(contacts[0]["identity_change_pending"], false);
    assert_eq!(contacts[0]["verified"], false);
}

#[test]
fn safety_numbers_match_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    let sa = a.json(&["safety-number", "Bob"]).unwrap();
    let sb = b.json(&["safety-number", "Alice"]).unwrap();
    assert_eq!(sa["digits"], sb["digits"]);
    assert_eq!(sa["verified"], false);
    // Alice scans Bob's QR code: it matches, Bob is verified.
    let v = a
        .json(&["verify", "Bob", "--scanned", sb["qr"].as_str().unwrap()])
        .unwrap();
    assert_eq!(v["verified"], true);
    // A wrong scan is refused.
    let out = b.cli(&["verify", "Alice", "--scanned", sb["qr"].as_str().unwrap()]);
    assert_eq!(code(&out), Some(6), "{}", stderr(&out));
}

#[test]
fn node_killed_mid_send_loses_and_doubles_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let mut a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    let home = a.home.clone();
    // Send from another thread while the node is killed under it.
    let sender = std::thread::spawn(move || {
        let mut ok = 0;
        for i in 0..40 {
            let out = tern_tests::support::tern(&home, &["send", "Bob", &format!("k{i}")]);
            if out.status.success() {
                ok += 1;
            } else {
                break;
            }
        }
        ok
    });
    wait_for("a few messages sent", WAIT, || {
        let h = a.json(&["history", "Bob", "--no-mark-read"]).ok()?;
        (h.as_array()?.len() >= 10).then_some(())
    })
    .unwrap();
    a.kill9();
    let acknowledged = sender.join().unwrap();
    a.restart().unwrap();
    // Every message the node stored before dying (at least those the CLI saw succeed)...
    let stored: Vec<String> = a
        .json(&["history", "Bob", "--limit", "500", "--no-mark-read"])
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        stored.len() >= acknowledged,
        "{} < {acknowledged}",
        stored.len()
    );
    // ...reaches Bob exactly once, in order.
    let got = wait_for("everything stored reaches bob", WAIT, || {
        let h: Vec<String> = b
            .json(&["history", "Alice", "--limit", "500", "--no-mark-read"])
            .ok()?
            .as_array()?
            .iter()
            .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
            .collect();
        (h.len() >= stored.len()).then_some(h)
    })
    .unwrap();
    assert_eq!(got, stored);
}

#[test]
fn presence_moves_online_away_offline_with_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let mut b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    let state = |n: &Node| -> Option<Value> {
        let v = n.json(&["presence", "Bob"]).ok()?;
        Some(v[0].clone())
    };
    wait_for("bob online", WAIT, || {
        state(&a).filter(|p| p["state"] == "online")
    })
    .unwrap();
    b.ok(&["status", "away"]).unwrap();
    wait_for("bob away", WAIT, || {
        state(&a).filter(|p| p["state"] == "away")
    })
    .unwrap();
    b.stop().unwrap();
    let p = wait_for("bob offline", WAIT, || {
        state(&a).filter(|p| p["state"] == "offline")
    })
    .unwrap();
    assert!(p["last_seen"].as_u64().is_some_and(|t| t > 0), "{p}");
}

/// A device that stops answering while its connection stays open (SIGSTOP; a phone that
/// lost its network without a word looks the same) is let go by its relay once its pings
/// go unanswered: the connection no longer holds one of the relay's slots (`max_connections`,
/// the per-IP limit) for as long as the dead connection would last, and its contact shows
/// it offline. Once it answers again it dials back and is shown online.
#[test]
fn a_device_that_stops_answering_is_let_go_and_comes_back() {
    // Pings every 15 s, each given 10 s, the second failure closes the connection.
    const LET_GO: std::time::Duration = std::time::Duration::from_secs(90);
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_metrics(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    let a = &a;
    let state = |want: &'static str| {
        move || -> Option<Value> {
            let v = a.json(&["presence", "Bob"]).ok()?;
            Some(v[0].clone()).filter(|p| p["state"] == want)
        }
    };
    let connections = || relay.metric("tern_relay_connections").ok();
    wait_for("bob online", WAIT, state("online")).unwrap();
    let before = wait_for("two connections", WAIT, || {
        connections().filter(|n| *n >= 2.0)
    })
    .unwrap();
    b.freeze().unwrap();
    wait_for("bob's connection let go", LET_GO, || {
        connections().filter(|n| *n < before)
    })
    .unwrap();
    wait_for("bob shown offline", LET_GO, state("offline")).unwrap();
    b.thaw().unwrap();
    wait_for("bob online again", LET_GO, state("online")).unwrap();
}

#[test]
fn api_requires_the_token_a_loopback_host_and_no_foreign_origin() {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, http::HeaderValue};
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.home.join("api.token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "api.token must be 0600");
    }
    let token = std::fs::read_to_string(a.home.join("api.token")).unwrap();
    let port = a.api.port();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let attempt = |headers: Vec<(&'static str, String)>| async move {
            let mut req = format!("ws://127.0.0.1:{port}/")
                .into_client_request()
                .unwrap();
            for (k, v) in headers {
                req.headers_mut()
                    .insert(k, HeaderValue::from_str(&v).unwrap());
            }
            tokio_tungstenite::connect_async(req).await.map(|_| ())
        };
        let bearer = format!("Bearer {}", token.trim());
        assert!(attempt(vec![]).await.is_err(), "no token accepted");
        assert!(
            attempt(vec![("authorization", "Bearer 00".into())])
                .await
                .is_err(),
            "wrong token accepted"
        );
        assert!(
            attempt(vec![
                ("authorization", bearer.clone()),
                ("host", format!("evil.example:{port}"))
            ])
            .await
            .is_err(),
            "foreign Host accepted (DNS rebinding)"
        );
        assert!(
            attempt(vec![
                ("authorization", bearer.clone()),
                ("origin", "http://evil.example".into())
            ])
            .await
            .is_err(),
            "foreign Origin accepted"
        );
        attempt(vec![
            ("authorization", bearer.clone()),
            ("origin", format!("http://127.0.0.1:{port}")),
        ])
        .await
        .expect("same-origin request with the token");
        let mut api = tern_node::api::client::ApiClient::connect(a.api, token.trim())
            .await
            .unwrap();
        let status = api.call("status", serde_json::json!({})).await.unwrap();
        assert_eq!(status["user_id"], a.user.as_str());
        let err = api
            .call("no.such.method", serde_json::json!({}))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("unknown method"), "{err}");
    });
}

/// Sends `request` (a raw HTTP/1.1 request) on a fresh connection to `api` and returns the
/// status code of the answer (0 if none came within 10 s).
fn http_status(api: std::net::SocketAddr, request: &str) -> u16 {
    use std::io::{Read, Write};
    let Ok(mut c) = std::net::TcpStream::connect(api) else {
        return 0;
    };
    let _ = c.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    if c.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    // The status line is in the first bytes; the rest is not needed.
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(2).any(|w| w == b"\r\n") {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&head)
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_foreign_host_or_origin_is_refused_with_403_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let token = std::fs::read_to_string(a.home.join("api.token")).unwrap();
    let token = token.trim();
    let port = a.api.port();
    let ours = format!("127.0.0.1:{port}");
    let ws = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let request = |line: &str, host: &str, extra: &str| {
        format!(
            "{line} HTTP/1.1\r\nHost: {host}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
    };
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let evil_origin = "Origin: http://evil.example\r\n";
    // The same requests with a loopback Host and no foreign Origin are let in: what follows
    // is refused for the Host or the Origin alone.
    assert_eq!(
        http_status(a.api, &request("GET /api", &ours, &format!("{bearer}{ws}"))),
        101,
        "the WebSocket upgrade with the token"
    );
    assert_eq!(http_status(a.api, &request("GET /", &ours, "")), 200);
    for (what, req) in [
        (
            "a WebSocket upgrade with Host: evil.example",
            request("GET /api", "evil.example", &format!("{bearer}{ws}")),
        ),
        (
            "a WebSocket upgrade with Host: evil.example:PORT",
            request(
                "GET /",
                &format!("evil.example:{port}"),
                &format!("{bearer}{ws}"),
            ),
        ),
        (
            "a WebSocket upgrade with a foreign Origin",
            request("GET /api", &ours, &format!("{bearer}{ws}{evil_origin}")),
        ),
        (
            "the page with Host: evil.example",
            request("GET /", "evil.example", ""),
        ),
        (
            "a session with a foreign Origin",
            request("POST /session", &ours, evil_origin),
        ),
        (
            "a session with no Origin",
            request("POST /session", &ours, ""),
        ),
        (
            "an upload with a foreign Origin",
            request(
                "POST /upload?name=x",
                &ours,
                &format!("{bearer}{evil_origin}"),
            ),
        ),
        (
            "a file with a foreign Origin",
            request("GET /files/00", &ours, &format!("{bearer}{evil_origin}")),
        ),
        (
            "a file with Host: evil.example",
            request("GET /files/00", "evil.example", &bearer),
        ),
    ] {
        assert_eq!(http_status(a.api, &req), 403, "{what}");
    }
}

#[test]
fn idle_connections_to_the_api_port_do_not_lock_the_cli_out() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    // 200 connections that send nothing (more than the 64 API sessions), held open.
    let idle: Vec<std::net::TcpStream> = (0..200)
        .map(|_| std::net::TcpStream::connect(a.api).unwrap())
        .collect();
    // And 20 that asked for one thing and stay open (keep-alive), sending nothing more.
    let port = a.api.port();
    let kept: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut c = std::net::TcpStream::connect(a.api).unwrap();
            c.write_all(format!("HEAD / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n").as_bytes())
                .unwrap();
            c
        })
        .collect();
    // The CLI still gets in at once, every time.
    for _ in 0..3 {
        let s = a.json(&["status"]).unwrap();
        assert_eq!(s["user_id"], a.user.as_str());
    }
    // And the idle ones are closed by the node after the header timeout (10 s): one that
    // never sent anything, and one that has its answer and sends no next request.
    let closed = |mut c: std::net::TcpStream| {
        c.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match c.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    };
    let first = idle.into_iter().next().unwrap();
    assert!(closed(first), "an idle connection is closed by the node");
    let first_kept = kept.into_iter().next().unwrap();
    assert!(
        closed(first_kept),
        "a kept-alive connection that sends no next request is closed by the node"
    );
}

#[test]
fn embedded_relays_work_and_keep_their_address_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = Node::init_and_start(dir.path(), "alice", None).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", None).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    a.ok(&["send", "Bob", "over bob's embedded relay"]).unwrap();
    wait_for("message at bob", WAIT, || {
        let h = b.json(&["history", "Alice", "--no-mark-read"]).ok()?;
        (h.as_array()?.len() == 1).then_some(())
    })
    .unwrap();
    // Alice restarts: her embedded relay comes back on the address her link gave Bob.
    a.restart().unwrap();
    b.ok(&["send", "Alice", "back over alice's relay"]).unwrap();
    let h = wait_for("reply at alice", WAIT, || {
        let h = a.json(&["history", "Bob", "--no-mark-read"]).ok()?;
        (h.as_array()?.len() == 2).then_some(h)
    })
    .unwrap();
    assert_eq!(h[1]["text"], "back over alice's relay");
}

/// History of `node` with `contact` (empty while the node does not answer).
fn history_of(node: &Node, contact: &str) -> Vec<Value> {
    node.json(&["history", contact, "--limit", "500", "--no-mark-read"])
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

#[test]
fn a_receipt_owed_by_a_receiver_killed_before_sending_it_goes_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    // Each has a home relay of their own, and no direct path: Bob's receipt can only reach
    // Alice through her relay.
    let mut alice_relay = Relay::start(&dir.path().join("relay-a"), "").unwrap();
    let bob_relay = Relay::start(&dir.path().join("relay-b"), "").unwrap();
    let a = Node::init_and_start_with(
        dir.path(),
        "alice",
        Some(&alice_relay.addr),
        &["--no-direct"],
    )
    .unwrap();
    let mut b =
        Node::init_and_start_with(dir.path(), "bob", Some(&bob_relay.addr), &["--no-direct"])
            .unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();

    // Alice's relay is gone: her message still reaches Bob's mailbox at his relay, but
    // Bob's delivered receipt cannot reach her.
    alice_relay.kill9();
    a.ok(&["send", "Bob", "receipt please"]).unwrap();
    wait_for("stored at bob", WAIT, || {
        let h = history_of(&b, "Alice");
        (h.len() == 1).then_some(())
    })
    .unwrap();
    let h = history_of(&a, "Bob");
    assert_eq!(
        h[0]["status"], "sent",
        "no receipt can have arrived: {h:#?}"
    );

    // Bob dies with the receipt undelivered; then Alice's relay comes back.
    b.kill9();
    alice_relay.restart_after_kill9("").unwrap();
    b.restart().unwrap();
    wait_for("the receipt reaches alice after bob restarts", WAIT, || {
        let h = history_of(&a, "Bob");
        (h.len() == 1 && h[0]["status"] == "delivered").then_some(())
    })
    .unwrap();
}

/// Bob's presence as Alice's node shows it, when it is `want`.
fn presence_is(a: &Node, who: &str, want: &str) -> Option<Value> {
    let v = a.json(&["presence", who]).ok()?;
    Some(v[0].clone()).filter(|p| p["state"] == want)
}

/// Whether `node` has its (one) relay connected, when it is `want`.
fn relay_connected_is(node: &Node, want: bool) -> Option<()> {
    let s = node.json(&["status"]).ok()?;
    (s["relays"][0]["connected"] == want).then_some(())
}

/// A relay that dies and comes back on its address while two contacts, not connected to
/// each other (`--no-direct`), stay up: while it is down neither is shown online (it alone
/// said so, and cannot tell when they leave); once both are back at it each is shown online
/// again, texts go through it both ways, and what the restarted relay sees afterwards (one
/// going offline, then online) reaches the other.
#[test]
fn presence_comes_back_after_a_relay_restart_and_keeps_following() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let no_direct = ["--no-direct"];
    let a = Node::init_and_start_with(dir.path(), "alice", Some(&relay.addr), &no_direct).unwrap();
    let mut b =
        Node::init_and_start_with(dir.path(), "bob", Some(&relay.addr), &no_direct).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    wait_for("bob online", WAIT, || presence_is(&a, "Bob", "online")).unwrap();
    wait_for("alice online", WAIT, || presence_is(&b, "Alice", "online")).unwrap();

    relay.kill9();
    wait_for("bob no longer shown online", WAIT, || {
        presence_is(&a, "Bob", "unknown")
    })
    .unwrap();
    relay.restart_after_kill9("").unwrap();
    wait_for("bob online after the restart", WAIT, || {
        presence_is(&a, "Bob", "online")
    })
    .unwrap();
    wait_for("alice online after the restart", WAIT, || {
        presence_is(&b, "Alice", "online")
    })
    .unwrap();
    // And mail goes through the restarted relay both ways.
    a.ok(&["send", "Bob", "to bob after the restart"]).unwrap();
    b.ok(&["send", "Alice", "to alice after the restart"])
        .unwrap();
    for (node, from, text) in [
        (&b, "Alice", "to bob after the restart"),
        (&a, "Bob", "to alice after the restart"),
    ] {
        wait_for(text, WAIT, || {
            let h = node.json(&["history", from]).ok()?;
            h.as_array()?
                .iter()
                .any(|m| m["own"] == false && m["text"] == text)
                .then_some(())
        })
        .unwrap();
    }

    b.stop().unwrap();
    let p = wait_for("bob offline, told by the restarted relay", WAIT, || {
        presence_is(&a, "Bob", "offline")
    })
    .unwrap();
    assert!(p["last_seen"].as_u64().is_some_and(|t| t > 0), "{p}");
    b.restart().unwrap();
    wait_for("bob online again", WAIT, || {
        presence_is(&a, "Bob", "online")
    })
    .unwrap();
}

/// Contacts connected to each other are shown online to each other while their relay is
/// down (the connection proves it), and offline once the connection goes with no relay to
/// say more.
#[test]
fn contacts_connected_to_each_other_stay_online_while_their_relay_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let mut b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    wait_for("bob online", WAIT, || presence_is(&a, "Bob", "online")).unwrap();
    wait_for("a direct connection", WAIT, || {
        let s = a.json(&["status"]).ok()?;
        (s["peers"][0]["direct"].as_u64()? > 0).then_some(())
    })
    .unwrap();

    relay.kill9();
    // Each, once it saw the relay go, still shows the other online (the relay's word went
    // with it in the same step, so this is no race).
    for (node, other) in [(&a, "Bob"), (&b, "Alice")] {
        wait_for("the relay seen down", WAIT, || {
            relay_connected_is(node, false)
        })
        .unwrap();
        assert!(
            presence_is(node, other, "online").is_some(),
            "{:?}",
            node.json(&["presence", other])
        );
    }
    a.ok(&["send", "Bob", "while the relay is down"]).unwrap();
    wait_for("the text at bob", WAIT, || {
        let h = b.json(&["history", "Alice"]).ok()?;
        (h.as_array()?.len() == 1).then_some(())
    })
    .unwrap();

    b.stop().unwrap();
    wait_for("bob no longer shown online", WAIT, || {
        presence_is(&a, "Bob", "unknown")
    })
    .unwrap();
}

/// `tern down` stops the running node as Ctrl-C would: it answers once the process has
/// ended (cleanly), after which nothing answers for the home; with no node running it says
/// so (exit 3); and the node starts again afterwards.
#[test]
fn down_stops_the_running_node_and_says_when_none_runs() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let mut a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let api = a.api;
    let out = a.cli_within(&["down"], WAIT).unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "stopped");
    // `down` waited for the process: it has ended already, with success.
    assert_eq!(a.exit_code().unwrap(), Some(0));
    for args in [&["status"][..], &["down"]] {
        let out = a.cli_within(args, WAIT).unwrap();
        assert_eq!(out.status.code(), Some(3), "{args:?}: {out:?}");
    }
    a.restart().unwrap();
    a.ok(&["status"]).unwrap();
    // No API port asked for: the last run's again (it is free), so an open web UI page
    // finds the node where it was.
    assert_eq!(a.api, api);
}

/// One node per home: a second `tern up` on a home whose node runs is refused at once
/// (exit 11) and touches nothing of it (the first keeps its API file and token, so the CLI
/// still reaches it); once the first has stopped, the home is free again, also after a
/// kill -9. Two nodes on one home would each number messages over the same store.
#[test]
fn a_second_node_on_a_running_home_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let mut a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let token = std::fs::read(a.home.join("api.token")).unwrap();
    let node_file = std::fs::read(a.home.join("node.json")).unwrap();
    let second = |a: &Node| {
        let mut up = tern_tests::support::tern_command(
            &a.home,
            &[
                "up",
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
                "--relay",
                &relay.addr,
            ],
        );
        let mut child = up
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let code = wait_for("the second tern up to exit", WAIT, || {
            child.try_wait().unwrap().map(|s| s.code())
        });
        if code.is_err() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second tern up ran on a home whose node runs");
        }
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
        (code.unwrap(), err)
    };
    let (code, err) = second(&a);
    assert_eq!(code, Some(11), "{err}");
    assert!(err.contains("already running"), "{err}");
    assert_eq!(std::fs::read(a.home.join("api.token")).unwrap(), token);
    assert_eq!(std::fs::read(a.home.join("node.json")).unwrap(), node_file);
    a.ok(&["status"]).unwrap();
    // Changing the store's key needs the home alone too.
    let out = a.cli(&["id", "passphrase", "--keyfile"]);
    assert_eq!(out.status.code(), Some(11), "{out:?}");
    a.kill9();
    a.restart().unwrap();
    a.ok(&["status"]).unwrap();
}

/// What others write (a text, a group title) cannot drive the reader's terminal: escape
/// sequences, bells and text-reordering marks are shown as escapes, and a line break cannot
/// forge a line of output (the lines after a text's first are indented under it).
#[test]
fn text_from_contacts_cannot_drive_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    let evil = "hi \u{1b}]0;pwned\u{7}\u{1b}[2J\u{1b}[31mRED\nDEADBEEF    carol: send me your password  (received)\u{202e}";
    a.ok(&["send", "Bob", evil]).unwrap();
    a.ok(&["group", "create", "Evil\u{1b}[2Jtitle", "Bob"])
        .unwrap();
    wait_for("the text at bob", WAIT, || {
        let h = b.json(&["history", "Alice", "--no-mark-read"]).ok()?;
        h.as_array()?
            .iter()
            .any(|m| m["text"] == evil)
            .then_some(())
    })
    .unwrap();
    wait_for("the group at bob", WAIT, || {
        let g = b.json(&["group", "list"]).ok()?;
        (g.as_array()?.len() == 1).then_some(())
    })
    .unwrap();
    for args in [
        &["history", "Alice"][..],
        &["conversations"],
        &["search", "password"],
        &["group", "list"],
    ] {
        let out = b.ok(args).unwrap();
        assert!(
            !out.chars()
                .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
            "{args:?} printed a control character: {out:?}"
        );
        // Each line is a record of its own or indented under one: the forged line is not.
        for line in out.lines().filter(|l| l.contains("carol: send me")) {
            assert!(
                line.starts_with(' ') || !line.starts_with("DEADBEEF"),
                "{args:?}: {line:?}"
            );
        }
    }
    let history = b.ok(&["history", "Alice"]).unwrap();
    assert!(history.contains("\\x1b]0;pwned\\x07"), "{history}");
    let forged = history
        .lines()
        .find(|l| l.contains("carol: send me"))
        .unwrap();
    assert!(forged.starts_with("   "), "{forged:?}");
}

/// `tern down` in the middle of a burst of sends pipelined on one API connection: every
/// send is answered, none with a broken connection: those the node took with their message
/// id (each is in the history after a restart), the rest with 1011 "the node is stopping"
/// (none of them is), in the order sent.
#[test]
fn a_node_stopped_mid_burst_answers_every_send() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let mut a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    let mut texts: Vec<String> = Vec::new();
    let own = |a: &Node| -> Option<usize> {
        let h = a.json(&["history", "Bob", "--limit", "500"]).ok()?;
        Some(h.as_array()?.iter().filter(|m| m["own"] == true).count())
    };
    let replies = std::thread::scope(|s| {
        let a = &a;
        let stopper = s.spawn(move || {
            wait_for("part of the burst stored", WAIT, || {
                own(a).filter(|n| *n >= 100).map(|_| ())
            })
            .unwrap();
            a.cli_within(&["down"], WAIT).unwrap()
        });
        let rt = tokio::runtime::Runtime::new().unwrap();
        // Batches of pipelined sends, one after another, until the node says it stops.
        let replies = rt.block_on(async {
            let mut api = a.api().await.unwrap();
            let mut replies = Vec::new();
            for batch in 0..100 {
                let these: Vec<String> = (0..200).map(|i| format!("t{batch:03}-{i:03}")).collect();
                let calls: Vec<(&str, serde_json::Value)> = these
                    .iter()
                    .map(|t| ("send", serde_json::json!({"contact": "Bob", "text": t})))
                    .collect();
                let answered = api
                    .call_many(&calls)
                    .await
                    .expect("every send answered before the connection closed");
                texts.extend(these);
                let stopping = answered.iter().any(Result::is_err);
                replies.extend(answered);
                if stopping {
                    break;
                }
            }
            replies
        });
        let down = stopper.join().unwrap();
        assert_eq!(down.status.code(), Some(0), "{down:?}");
        replies
    });
    let taken = replies.iter().take_while(|r| r.is_ok()).count();
    for r in &replies[taken..] {
        match r {
            Err(tern_node::api::client::ClientError::Rpc { code: 1011, .. }) => {}
            other => panic!("after {taken} taken: {other:?}"),
        }
    }
    assert!(taken >= 100 && taken < texts.len(), "{taken} taken");
    a.restart().unwrap();
    let stored: Vec<String> = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let mut api = a.api().await.unwrap();
            let mut all = Vec::new();
            let mut before: Option<String> = None;
            loop {
                let page = api
                    .call(
                        "history",
                        serde_json::json!({"contact": "Bob", "limit": 500, "before": before}),
                    )
                    .await
                    .unwrap();
                let page = page.as_array().unwrap().clone();
                if page.is_empty() {
                    break;
                }
                before = page[0]["id"].as_str().map(str::to_owned);
                let mut texts: Vec<String> = page
                    .iter()
                    .map(|m| m["text"].as_str().unwrap().to_owned())
                    .collect();
                texts.extend(all);
                all = texts;
            }
            all
        })
    };
    assert_eq!(
        stored,
        texts[..taken],
        "exactly the sends answered with an id"
    );
}

/// A node killed while a command waits for its answer (here `relay add`, checking an address
/// whose listener takes the connection and never says a word) leaves the CLI saying what
/// happened: the answer never came, and what was asked may or may not have been done; not a
/// bare WebSocket error.
#[test]
fn a_node_killed_during_a_command_is_said_to_have_gone() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(&dir.path().join("relay"), "").unwrap();
    let mut a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!(
        "/ip4/127.0.0.1/tcp/{}/p2p/{}",
        silent.local_addr().unwrap().port(),
        tern_relay::PeerId::random()
    );
    let (accepted_tx, accepted) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = accepted_tx.send(silent.accept().map(|(conn, _)| conn));
    });
    let cli = tern_tests::support::tern_command(&a.home, &["relay", "add", &addr])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(cli.wait_with_output());
    });
    // The node dials the address for the command, which waits for the check.
    let _conn = accepted
        .recv_timeout(WAIT)
        .expect("the node dials the address")
        .unwrap();
    a.kill9();
    let out = done
        .recv_timeout(WAIT)
        .expect("the CLI ends once the node is gone")
        .unwrap();
    assert_eq!(code(&out), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("ended before it answered"), "{err}");
    assert!(err.contains("may or may not have been done"), "{err}");
}
