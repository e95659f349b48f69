//! Push wake-ups: allow-listed endpoints, no content, debounced; HTTPS with an operator's root.

use super::*;

/// A local HTTP receiver standing in for a push gateway: records each POST.
async fn push_receiver() -> (
    u16,
    mpsc::UnboundedReceiver<(std::time::Instant, String, String)>,
) {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await?.to_bytes();
                            let _ = tx.send((
                                std::time::Instant::now(),
                                path,
                                String::from_utf8_lossy(&body).into_owned(),
                            ));
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (port, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_is_allow_listed_content_free_and_debounced() {
    let (port, mut posts) = push_receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &format!(
            "[push]\nallowed_prefixes = [\"http://127.0.0.1:{port}/push/\"]\ndebounce_secs = 2\n"
        ),
    );
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, _) = connect(&relay.tcp).await;
    let b = bob.local_peer_id();
    for bad in [
        format!("http://127.0.0.1:{port}/admin"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        format!("http://127.0.0.1:{}/push/x", port + 1),
    ] {
        assert_eq!(
            rejected(bob.register_push(Some(bad)).await.unwrap_err()),
            ErrorCode::NotAllowed
        );
    }
    bob.register_push(Some(format!("http://127.0.0.1:{port}/push/bob")))
        .await
        .unwrap();
    drop(bob);
    eventually("bob offline", || async {
        (relay.metric("tern_relay_connections").await == 1.0).then_some(())
    })
    .await;

    for i in 0..5u8 {
        alice.deposit(vec![b], None, vec![i; 100]).await.unwrap();
    }
    let (t1, path, body) = tokio::time::timeout(WAIT, posts.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(path, "/push/bob");
    let first: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(first["v"], 1);
    assert_eq!(first["type"], "wakeup");
    assert!(first["unread"].as_u64().unwrap() >= 1);
    assert_eq!(
        first.as_object().unwrap().len(),
        3,
        "nothing but version, type and count"
    );
    // The rest of the burst is coalesced into one trailing wake-up with the final count,
    // no sooner than the debounce interval.
    let (t2, _, body) = tokio::time::timeout(WAIT, posts.recv())
        .await
        .unwrap()
        .unwrap();
    let second: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(second["unread"], 5);
    assert!(
        t2 - t1 >= std::time::Duration::from_millis(1900),
        "{:?}",
        t2 - t1
    );
    assert!(posts.try_recv().is_err());
    // The relay counts a wake-up once the gateway has answered it.
    eventually("both wake-ups counted", || async {
        (relay.metric("tern_relay_push_sent_total").await == 2.0).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_over_https_with_operator_root() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    // A local HTTPS push gateway with a self-signed certificate the operator trusts.
    let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca = dir.path().join("gateway-ca.pem");
    std::fs::write(&ca, key.cert.pem()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.key_pair.serialize_der().into()),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, mut posts) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(stream) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let tx = tx.clone();
                        async move {
                            use http_body_util::BodyExt;
                            let body = req.into_body().collect().await?.to_bytes();
                            let _ = tx.send(String::from_utf8_lossy(&body).into_owned());
                            Ok::<_, hyper::Error>(hyper::Response::new(http_body_util::Full::new(
                                bytes::Bytes::new(),
                            )))
                        }
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });

    let relay = Relay::start(
        dir.path(),
        &format!(
            "[push]\nallowed_prefixes = [\"https://127.0.0.1:{port}/push/\"]\nextra_root_certs = {:?}\n",
            ca.display().to_string()
        ),
    );
    let (alice, _) = connect(&relay.tcp).await;
    let (bob, _) = connect(&relay.tcp).await;
    let b = bob.local_peer_id();
    bob.register_push(Some(format!("https://127.0.0.1:{port}/push/bob")))
        .await
        .unwrap();
    drop(bob);
    alice.deposit(vec![b], None, vec![1; 10]).await.unwrap();
    let body = tokio::time::timeout(WAIT, posts.recv())
        .await
        .unwrap()
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["unread"], 1);
}
