//! Strangers against a device's mailbox: many fresh identities flood it as hard as the relay
//! lets them, while the device is offline. Its contact's burst must still be taken whole
//! (nothing refused, nothing lost, in order); the junk must stay inside the small
//! introductions share, and the device, once back, must move it out of the relay rather than
//! leave it pinning the mailbox.

use std::time::Duration;
use tern_relay::rpc::Requests as _;

use serde_json::{Value, json};
use tern_relay::client::{Client, Config, Keypair};
use tern_relay::wire::ErrorCode;
use tern_tests::support::{
    Node, Relay, link_pair, refusal, wait_for, wait_mailbox_closed, wait_outbox_empty,
};

/// Longest a burst may take to drain or arrive (a 2-core CI machine, debug build).
const WAIT: Duration = Duration::from_secs(180);
/// Strangers, each a fresh identity.
const STRANGERS: usize = 100;
/// Junk messages each stranger tries to deposit.
const TRIES: usize = 12;
/// The relay's limits for this test: a small introductions share so the flood fills it (at
/// once: the share's rate is raised past the flood).
const LIMITS: &str = "[mailbox]\nmax_messages = 2000\nintro_max_messages = 300\n\
                      intro_per_sender = 10\nintro_burst = 10000.0\n\
                      [rate]\ndeposits_per_sec = 1000.0\ndeposits_burst = 2000.0\n";

fn texts_from(node: &Node, contact: &str) -> Vec<String> {
    let h = node
        .json(&["history", contact, "--limit", "500"])
        .unwrap_or(Value::Null);
    h.as_array()
        .map(|a| {
            a.iter()
                .filter(|m| m["own"] == json!(false))
                .map(|m| m["text"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn strangers_flooding_a_mailbox_cannot_shut_out_a_contact() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_with_metrics(&dir.path().join("relay"), LIMITS).unwrap();
    let a = Node::init_and_start(dir.path(), "alice", Some(&relay.addr)).unwrap();
    let mut b = Node::init_and_start(dir.path(), "bob", Some(&relay.addr)).unwrap();
    link_pair(&a, &b, "Alice", "Bob").unwrap();
    let victim: tern_relay::PeerId = b.device.parse().unwrap();
    let addr: tern_relay::Multiaddr = relay.addr.parse().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Bob's node closes his mailbox (registers its grants) once it is up: a wrong token is
    // then refused rather than taken.
    wait_mailbox_closed(
        &rt,
        &relay.addr,
        victim,
        "the mailbox closed to strangers",
        WAIT,
    )
    .unwrap();
    b.stop().unwrap();

    // The flood: every stranger deposits until the relay says no.
    let accepted: Vec<usize> = rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..STRANGERS {
            let addr = addr.clone();
            tasks.push(tokio::spawn(async move {
                let (c, _events) =
                    Client::connect(Keypair::generate_ed25519(), addr, Config::default())
                        .await
                        .unwrap();
                let mut took = 0;
                for n in 0..TRIES {
                    let junk = vec![(i * 31 + n) as u8; 1024];
                    match c.deposit(vec![victim], None, junk).await {
                        Ok((_, refused)) if refused.is_empty() => took += 1,
                        Ok((_, refused)) => panic!("a partial refusal for one recipient: {refused:?}"),
                        Err(e) => {
                            let code = refusal(e);
                            assert!(
                                matches!(code, ErrorCode::IntroFull | ErrorCode::RateLimited),
                                "a stranger is refused as an introduction over its share, not {code:?}"
                            );
                        }
                    }
                }
                took
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let total: usize = accepted.iter().sum();
    assert!(
        accepted.iter().all(|&n| n <= 10),
        "no stranger gets past its part of the introductions share: {accepted:?}"
    );
    assert!(
        total <= 300,
        "the introductions share holds at most 300, took {total}"
    );
    assert!(total >= 250, "the flood filled the share ({total})");

    // Alice's burst is taken whole: she deposits as Bob's contact, outside that share.
    let sent: Vec<String> = (0..300)
        .map(|i| format!("through the flood {i:03}"))
        .collect();
    rt.block_on(async {
        let mut api = a.api().await.unwrap();
        let calls: Vec<(&str, Value)> = sent
            .iter()
            .map(|t| ("send", json!({"contact": "Bob", "text": t})))
            .collect();
        let replies = tokio::time::timeout(WAIT, api.call_many(&calls))
            .await
            .expect("alice's node answers every send in time")
            .unwrap();
        assert!(replies.iter().all(Result::is_ok));
    });
    wait_outbox_empty(&a, WAIT).unwrap();
    let refused = |reason: &str| {
        relay
            .metric(&format!("tern_relay_rejects_total{{reason=\"{reason}\"}}"))
            .unwrap_or(0.0)
    };
    assert_eq!(refused("quota_count"), 0.0, "no deposit met a full mailbox");
    assert_eq!(refused("share_full"), 0.0);

    // Bob comes back: everything from Alice, once and in order; the junk leaves the relay.
    b.restart().unwrap();
    let got = wait_for("alice's burst at bob", WAIT, || {
        let got = texts_from(&b, "Alice");
        (got.len() >= sent.len()).then_some(got)
    })
    .unwrap();
    assert_eq!(got, sent);
    wait_for("bob's mailbox emptied of junk", WAIT, || {
        let left = relay.metric("tern_relay_mailbox_messages").ok()?;
        (left == 0.0).then_some(())
    })
    .unwrap();
    // Bob's status shows his mailbox at the relay with its limits.
    let mailbox = wait_for("bob's mailbox in his status", WAIT, || {
        let st = b.json(&["status"]).ok()?;
        let m = st["relays"][0]["mailbox"].clone();
        // Grants for Alice and for Bob's own user.
        (m["grants"].as_u64() >= Some(2)).then_some(m)
    })
    .unwrap();
    assert_eq!(mailbox["max_messages"], 2000, "{mailbox}");
    assert_eq!(mailbox["intro_max_messages"], 300, "{mailbox}");
    let text = b.ok(&["status"]).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with("mailbox ") && l.contains(" of 2000 messages")),
        "{text}"
    );
    // The junk is kept apart on Bob's node (bounded), not shown anywhere.
    let conversations = b.json(&["conversations"]).unwrap_or(Value::Null);
    assert_eq!(
        conversations.as_array().map(Vec::len),
        Some(1),
        "only Alice's conversation: {conversations}"
    );
}
