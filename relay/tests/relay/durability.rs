//! What survives: SIGKILL and restarts, a full disk and the disk reserve, and a private data directory.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_keeps_every_acknowledged_deposit() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), "");
    let bob_key = libp2p_key();
    let bob_id = bob_key.public().to_peer_id();
    let acked = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
    let mut senders = Vec::new();
    for s in 0..4u32 {
        let (c, _) = connect(&relay.tcp).await;
        let acked = acked.clone();
        senders.push(tokio::spawn(async move {
            for i in 0..1000u32 {
                let body = format!("sender {s} message {i}").into_bytes();
                match c.deposit(vec![bob_id], None, body.clone()).await {
                    Ok(_) => acked.lock().unwrap().push(body),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill the relay while deposits are in flight, right after 300 were acknowledged.
    eventually("300 acknowledged deposits", || async {
        (acked.lock().unwrap().len() >= 300).then_some(())
    })
    .await;
    relay.kill9();
    for s in senders {
        tokio::time::timeout(WAIT, s).await.unwrap().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 300);

    let relay = Relay::start(dir.path(), "");
    let (bob, _) = Client::connect(bob_key, relay.tcp.clone(), client::Config::default())
        .await
        .unwrap();
    let stored: std::collections::HashSet<Vec<u8>> = fetch_all(&bob)
        .await
        .into_iter()
        .map(|e| e.ciphertext.into_vec())
        .collect();
    let lost: Vec<_> = acked.iter().filter(|b| !stored.contains(*b)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged deposits lost",
        lost.len(),
        acked.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_identity_mail_allow_lists_and_last_seen() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), "");
    let relay_id = relay.tcp.iter().last().map(|p| p.to_string());
    let (bob_key, alice_key) = (libp2p_key(), libp2p_key());
    let (alice, _) = Client::connect(
        alice_key.clone(),
        relay.tcp.clone(),
        client::Config::default(),
    )
    .await
    .unwrap();
    let (bob, _) = Client::connect(
        bob_key.clone(),
        relay.tcp.clone(),
        client::Config::default(),
    )
    .await
    .unwrap();
    alice
        .set_allow_list(vec![bob.local_peer_id()])
        .await
        .unwrap();
    alice
        .deposit(vec![bob.local_peer_id()], None, b"kept".to_vec())
        .await
        .unwrap();
    let (status, body) = relay.http_get("/health").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert!(relay.terminate().success(), "SIGTERM exits cleanly");
    drop((alice, bob));

    let relay = Relay::start(dir.path(), "");
    assert_eq!(
        relay.tcp.iter().last().map(|p| p.to_string()),
        relay_id,
        "same peer id after restart"
    );
    let (bob, _) = Client::connect(bob_key, relay.tcp.clone(), client::Config::default())
        .await
        .unwrap();
    let page = bob.fetch(0, 10).await.unwrap().0;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0].ciphertext.as_ref(), b"kept");
    let seen = bob
        .query(vec![alice_key.public().to_peer_id()])
        .await
        .unwrap();
    assert_eq!(
        seen[0].state,
        State::Offline,
        "allow-list and last seen survived"
    );
    assert!(seen[0].last_seen_ms.is_some());
    assert_eq!(relay.metric("tern_relay_mailbox_messages").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_storage_fails_deposits_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), "[storage]\nmax_database_bytes = 524288\n");
    let (alice, _) = connect(&relay.tcp).await;
    let bob_key = libp2p_key();
    let bob_id = bob_key.public().to_peer_id();
    let mut acked = Vec::new();
    let mut full = false;
    for i in 0..200u32 {
        let mut body = vec![0u8; 16 * 1024];
        body[..4].copy_from_slice(&i.to_be_bytes());
        match alice.deposit(vec![bob_id], None, body.clone()).await {
            Ok(_) => acked.push(body),
            Err(e) => {
                assert_eq!(rejected(e), ErrorCode::StorageFull);
                full = true;
                break;
            }
        }
    }
    assert!(full, "the size limit was reached");
    assert!(acked.len() >= 5);
    relay.kill9();
    let relay = Relay::start(dir.path(), "[storage]\nmax_database_bytes = 524288\n");
    let (bob, _) = Client::connect(bob_key, relay.tcp.clone(), client::Config::default())
        .await
        .unwrap();
    let stored: Vec<Vec<u8>> = fetch_all(&bob)
        .await
        .into_iter()
        .map(|e| e.ciphertext.into_vec())
        .collect();
    assert_eq!(stored, acked);
}

/// The data directory holds who writes to whom, allow-lists, last-seen times and push URLs:
/// only the relay's user may read it.
#[cfg(unix)]
#[test]
fn the_data_directory_and_database_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let relay = Relay::start(tmp.path(), "");
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let data = relay.data.join("db");
    assert_eq!(mode(&data), 0o700, "data directory");
    let db = data.join(tern_relay::server::storage::DB_FILE);
    assert_eq!(mode(&db), 0o600, "database");
    for extra in ["sqlite3-wal", "sqlite3-shm"] {
        let f = db.with_extension(extra);
        if f.exists() {
            assert_eq!(mode(&f), 0o600, "{extra}");
        }
    }
}

/// Below the disk reserve the relay takes nothing new (deposits, registrations) but still
/// serves what it holds, so mailboxes drain; with room again it takes mail as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn below_the_disk_reserve_nothing_new_is_taken_and_mail_drains() {
    let dir = tempfile::tempdir().unwrap();
    let bob_key = libp2p_key();
    let bob_of = |relay: &Relay| {
        Client::connect(
            bob_key.clone(),
            relay.tcp.clone(),
            client::Config::default(),
        )
    };
    let mut relay = Relay::start(dir.path(), "");
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, _) = bob_of(&relay).await.unwrap();
    let b = bob.local_peer_id();
    alice
        .deposit(vec![b], None, b"before".to_vec())
        .await
        .unwrap();
    drop((alice, bob));
    assert!(relay.terminate().success());

    // A reserve no disk has: every write that grows the database is refused.
    let mut relay = Relay::start(
        dir.path(),
        "[storage]\nreserve_bytes = 18000000000000000000\n",
    );
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, _) = bob_of(&relay).await.unwrap();
    let e = alice
        .deposit(vec![b], None, b"refused".to_vec())
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::StorageFull);
    let e = bob
        .set_allow_list(vec![alice.local_peer_id()])
        .await
        .unwrap_err();
    assert_eq!(rejected(e), ErrorCode::StorageFull);
    // What is held still comes out and is acknowledged.
    let mail = fetch_all(&bob).await;
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].ciphertext.as_ref(), b"before");
    assert_eq!(bob.ack(vec![mail[0].id]).await.unwrap(), 1);
    drop((alice, bob));
    assert!(relay.terminate().success());

    let relay = Relay::start(dir.path(), "");
    let (alice, _) = connect(&relay.tcp).await;
    alice
        .deposit(vec![b], None, b"after".to_vec())
        .await
        .unwrap();
}

/// Runs `tern-relay` with `config` (TOML) and returns its exit code and stderr, once it has
/// exited (at most [`WAIT`]: one that keeps running fails the test).
fn refused_start(dir: &std::path::Path, config: &str) -> (Option<i32>, String) {
    let cfg = dir.join("second.toml");
    std::fs::write(&cfg, config).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_tern-relay"))
        .arg("--config")
        .arg(&cfg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a second relay started with {config}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status.code(), err)
}

/// One relay per TCP port and per data directory: a second one on either is refused at
/// start with a clear error (libp2p binds with `SO_REUSEPORT`, so without the check the
/// kernel would share the port's connections between two relays of different identities).
#[test]
fn a_second_relay_on_the_same_port_or_data_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Relay::start(dir.path(), "");
    let port = first
        .tcp
        .iter()
        .find_map(|p| match p {
            tern_relay::libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let other = dir.path().join("other");
    let (code, err) = refused_start(
        dir.path(),
        &format!(
            "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/{port}\"]\n",
            other.display().to_string()
        ),
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("address in use"), "{err}");
    let (code, err) = refused_start(
        dir.path(),
        &format!(
            "data_dir = {:?}\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n",
            first.data.join("db").display().to_string()
        ),
    );
    assert_ne!(code, Some(0));
    assert!(err.contains("another tern-relay is using"), "{err}");
}
