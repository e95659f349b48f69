//! Groups at their size limit: one real `tern up` node and hundreds of simulated member
//! devices (`tern_tests::sim`: real identities, device keys, Olm and Megolm, each on its own
//! Noise connection to a real `tern-relay`).
//!
//! - A group of 500 (the node's user and 499 sims): one group message reaches every one of
//!   the 499, decrypted with the sender key the node distributed over Olm.
//! - A 501st member is refused (API error 1014, the CLI exits non-zero), and so is creating
//!   a group of 501.
//!
//! Every wait is bounded; no timing is asserted (that is the `group` benchmark's job).

use std::time::Duration;

use serde_json::{Value, json};
use tern_node::api::client::{ApiClient, ClientError};
use tern_tests::{
    sim::SimFleet,
    support::{Node, Relay, WAIT},
};

/// Members besides the node's own user in the full group.
const MEMBERS: usize = 499;
/// The most members a group has (the node's limit).
const MAX_MEMBERS: usize = 500;
/// The node's API error code for a full group.
const GROUP_FULL: i64 = 1014;
/// Longest wait for a group message to reach every sim (a debug build on a small machine).
const REACH_ALL: Duration = Duration::from_secs(300);
/// Longest wait for one API call that touches every member (creating the group).
const BIG_CALL: Duration = Duration::from_secs(300);

/// The relay's per-peer and per-IP limits are raised: one node adding hundreds of contacts
/// and encrypting for hundreds of devices at once, with every member on 127.0.0.1, is what
/// this test exercises, not the limiter.
const RELAY_CONFIG: &str = "[rate]\nrequests_per_sec = 1000000.0\nrequests_burst = 1000000.0\ndeposits_per_sec = 1000000.0\ndeposits_burst = 1000000.0\nip_requests_per_sec = 1000000.0\nip_requests_burst = 1000000.0\n[connections]\nmax_per_ip = 10000\nip_connections_per_sec = 1000000.0\nip_connections_burst = 1000000.0\n";

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

/// Adds every link as a contact named `{prefix}{i}` through the API.
async fn add_contacts(api: &mut ApiClient, links: &[String], prefix: &str) -> anyhow::Result<()> {
    for (i, link) in links.iter().enumerate() {
        api.call(
            "contact.add",
            json!({"link": link, "name": format!("{prefix}{i}")}),
        )
        .await?;
    }
    Ok(())
}

async fn call_bounded(
    api: &mut ApiClient,
    method: &str,
    params: Value,
    timeout: Duration,
) -> anyhow::Result<Result<Value, ClientError>> {
    tokio::time::timeout(timeout, api.call(method, params))
        .await
        .map_err(|_| anyhow::anyhow!("{method} did not answer within {timeout:?}"))
}

#[test]
fn sims_decrypt_direct_messages_from_a_node() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), RELAY_CONFIG)?;
    let node = Node::init_and_start(dir.path(), "owner", Some(&relay.addr))?;
    let link = node.link()?;
    runtime()?.block_on(async {
        let fleet = SimFleet::start(&relay.addr, 5, "sim").await?;
        fleet.trust(&link)?;
        let mut api = node.api().await?;
        add_contacts(&mut api, &fleet.links(), "sim").await?;
        for i in 0..fleet.sims.len() {
            api.call(
                "send",
                json!({"contact": format!("sim{i}"), "text": format!("hello sim {i}")}),
            )
            .await?;
        }
        for (i, sim) in fleet.sims.iter().enumerate() {
            let text = format!("hello sim {i}");
            fleet.tally.wait(&text, 1, WAIT).await?;
            let got = sim.received();
            assert_eq!(got.len(), 1, "sim {i} got {got:?}");
            assert_eq!(got[0].text, text);
            assert_eq!(got[0].group, None);
            assert_eq!(got[0].sender_device.to_string(), node.device);
        }
        assert_eq!(fleet.stats().failures, 0, "{:?}", fleet.stats());
        anyhow::Ok(())
    })
}

#[test]
fn group_of_500_reaches_every_member_and_refuses_a_501st() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start(&dir.path().join("relay"), RELAY_CONFIG)?;
    let node = Node::init_and_start(dir.path(), "owner", Some(&relay.addr))?;
    let link = node.link()?;
    let rt = runtime()?;
    // 499 members and one more contact for the refused 501st.
    let fleet = rt.block_on(SimFleet::start(&relay.addr, MEMBERS + 1, "member"))?;
    fleet.trust(&link)?;
    let users: Vec<String> = fleet.sims.iter().map(|s| s.user.to_string()).collect();
    let group = rt.block_on(async {
        let mut api = node.api().await?;
        add_contacts(&mut api, &fleet.links(), "member").await?;
        let info = call_bounded(
            &mut api,
            "group_create",
            json!({"title": "Everyone", "members": &users[..MEMBERS]}),
            BIG_CALL,
        )
        .await??;
        assert_eq!(
            info["members"].as_array().map(Vec::len),
            Some(MAX_MEMBERS),
            "{info}"
        );
        let group = info["id"].as_str().unwrap_or_default().to_owned();

        let text = "to all five hundred";
        call_bounded(
            &mut api,
            "group_send",
            json!({"group": group, "text": text}),
            BIG_CALL,
        )
        .await??;
        fleet.tally.wait(text, MEMBERS, REACH_ALL).await?;
        for (i, sim) in fleet.sims[..MEMBERS].iter().enumerate() {
            let got: Vec<_> = sim
                .received()
                .into_iter()
                .filter(|r| r.text == text)
                .collect();
            assert_eq!(got.len(), 1, "member {i}: {got:?}");
            assert_eq!(got[0].group.as_deref(), Some(group.as_str()));
            assert_eq!(got[0].sender_device.to_string(), node.device);
        }
        // The contact outside the group has nothing.
        assert!(fleet.sims[MEMBERS].received().is_empty());

        // A 501st member is refused...
        let extra = &users[MEMBERS];
        match call_bounded(
            &mut api,
            "group_add",
            json!({"group": group, "members": [extra]}),
            WAIT,
        )
        .await?
        {
            Err(ClientError::Rpc { code, .. }) => assert_eq!(code, GROUP_FULL),
            other => panic!("adding a 501st member: {other:?}"),
        }
        // ...and so is a new group of 501 (the user and 500 contacts).
        match call_bounded(
            &mut api,
            "group_create",
            json!({"title": "Too many", "members": &users}),
            BIG_CALL,
        )
        .await?
        {
            Err(ClientError::Rpc { code, .. }) => assert_eq!(code, GROUP_FULL),
            other => panic!("creating a group of 501: {other:?}"),
        }
        let info = api.call("group_info", json!({"group": group})).await?;
        assert_eq!(info["members"].as_array().map(Vec::len), Some(MAX_MEMBERS));
        anyhow::Ok(group)
    })?;
    // The CLI says why.
    let out = node.cli(&["group", "add", &group, &users[MEMBERS]]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "tern group add of a 501st member succeeded"
    );
    assert!(err.contains("at most 500"), "{err}");
    assert_eq!(fleet.stats().failures, 0, "{:?}", fleet.stats());
    drop(fleet);
    Ok(())
}
