//! `tern-bench --quick` runs each suite on tiny sizes and emits well-formed JSON rows, so the
//! harness cannot rot between benchmark runs. The figures themselves are not checked here:
//! timings belong to the benchmark, not to pass/fail tests. The relay suite needs the
//! `tern-relay` binary (`cargo build -p tern-relay --features server`); the test builds it
//! when it is missing.

use std::process::Command;

fn run_quick(suite: &str) -> Vec<serde_json::Value> {
    run_quick_with(suite, &[])
}

/// [`run_quick`] with extra environment variables.
fn run_quick_with(suite: &str, env: &[(&str, &std::ffi::OsStr)]) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args([suite, "--quick", "--json"])
        .envs(env.iter().copied())
        .output()
        .expect("tern-bench starts");
    assert!(
        out.status.success(),
        "tern-bench {suite} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8 output")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

#[test]
fn crypto_suite_reports_every_figure_with_its_baseline() {
    let rows = run_quick("crypto");
    for name in [
        "crypto.session_roundtrip",
        "crypto.group_encrypt",
        "crypto.group_decrypt",
        "crypto.media_encrypt",
        "crypto.media_decrypt",
    ] {
        assert_compared(&rows, name);
    }
}

/// `name` is in `rows` with a positive baseline, a value and ratio that are numbers and not
/// negative, a unit and a baseline name. (A value may be 0: some figures are the time a slow
/// link adds over loopback, which one quick sample on a loaded machine can show as none;
/// what the figures are is the benchmark's business, not this test's.)
fn assert_compared(rows: &[serde_json::Value], name: &str) {
    let row = rows
        .iter()
        .find(|r| r["bench"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {rows:?}"));
    for field in ["value", "baseline_value", "ratio"] {
        let v = row[field]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}.{field} not a number"));
        assert!(v.is_finite() && v >= 0.0, "{name}.{field} = {v}");
    }
    assert!(row["baseline_value"].as_f64() > Some(0.0), "{name}: {row}");
    assert!(row["unit"].is_string() && row["baseline"].is_string());
}

#[test]
fn relay_suite_reports_every_figure_with_its_baseline() {
    // The suite starts the relay binary from this target directory (built here if missing).
    let relay = tern_tests::support::bin("tern-relay");
    assert!(
        relay.exists(),
        "no tern-relay binary at {}",
        relay.display()
    );
    let rows = run_quick_with("relay", &[("TERN_RELAY_BIN", relay.as_os_str())]);
    let row = |name: &str| {
        rows.iter()
            .find(|r| r["bench"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {rows:?}"))
    };
    for name in [
        "relay.deposit_throughput",
        "relay.deposit_ack_p50",
        "relay.deposit_ack_p99",
        "relay.push_p50",
        "relay.push_p99",
        "relay.link_deposit_request_p50",
        "relay.link_deposit_stream_p50",
        "relay.link_first_stream_deposit_p50",
        "relay.flood_deposit_p50",
        "relay.flood_deposit_p99",
        "relay.flood_ip_limited_deposit_p50",
        "relay.flood_ip_limited_deposit_p99",
        "relay.pipelined_w4_throughput",
        "relay.pipelined_w4_vs_sqlite",
        "relay.pipelined_w4_ack_p99",
        "relay.pipelined_w64_throughput",
        "relay.pipelined_w64_ack_p99",
    ] {
        let r = row(name);
        for field in ["value", "baseline_value", "ratio"] {
            let v = r[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}.{field} not a number"));
            assert!(v.is_finite() && v > 0.0, "{name}.{field} = {v}");
        }
        assert!(r["unit"].is_string() && r["baseline"].is_string());
    }
    for prefix in ["relay.flood", "relay.flood_ip_limited"] {
        // Correctness, not timing: the suite fails its run otherwise, and says so here.
        assert_eq!(
            row(&format!("{prefix}_legit_refused"))["value"].as_f64(),
            Some(0.0)
        );
        let accepted = row(&format!("{prefix}_attacker_accepted"));
        let (took, share) = (
            accepted["value"].as_f64().unwrap_or(f64::NAN),
            accepted["baseline_value"].as_f64().unwrap_or(f64::NAN),
        );
        assert!(took >= 0.0 && took <= share, "{accepted}");
        for name in ["victim_mailbox", "victim_intro"] {
            let r = row(&format!("{prefix}_{name}"));
            assert!(
                r["value"].as_f64().is_some_and(f64::is_finite)
                    && r["baseline_value"].as_f64().is_some_and(|v| v > 0.0),
                "{r}"
            );
        }
        assert!(
            row(&format!("{prefix}_attack_rate"))["value"]
                .as_f64()
                .is_some_and(f64::is_finite)
        );
    }
}

#[test]
fn unknown_suite_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .arg("no-such-suite")
        .output()
        .expect("tern-bench starts");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown suite") && err.contains("crypto"),
        "{err}"
    );
}

#[test]
fn store_suite_reports_every_figure_with_its_baseline() {
    let rows = run_quick("store");
    for name in [
        "store.insert",
        "store.latest50_p50",
        "store.latest50_p99",
        "store.search_p50",
        "store.search_p95",
        "store.bytes_per_message",
    ] {
        let row = rows
            .iter()
            .find(|r| r["bench"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {rows:?}"));
        assert!(
            row["value"]
                .as_f64()
                .is_some_and(|v| v.is_finite() && v > 0.0),
            "{name}: {row}"
        );
        assert!(
            row["baseline_value"].as_f64().is_some(),
            "{name} has no baseline: {row}"
        );
    }
}

#[test]
fn relay_writer_suite_reports_every_figure_with_its_baseline() {
    let rows = run_quick("relay-writer");
    for name in [
        "relay.writer_throughput",
        "relay.writer_us_per_deposit",
        "relay.writer_ack_p50",
        "relay.writer_ack_p99",
    ] {
        assert_compared(&rows, name);
    }
    // CPU time is counted in clock ticks: a quick run may take none.
    let cpu = rows
        .iter()
        .find(|r| r["bench"] == "relay.writer_cpu_us_per_deposit")
        .unwrap_or_else(|| panic!("relay.writer_cpu_us_per_deposit missing from {rows:?}"));
    for field in ["value", "baseline_value"] {
        assert!(
            cpu[field]
                .as_f64()
                .is_some_and(|v| v.is_finite() && v >= 0.0),
            "relay.writer_cpu_us_per_deposit.{field}: {cpu}"
        );
    }
}

#[test]
fn group_suite_reports_every_figure_with_its_baseline() {
    let rows = run_quick("group");
    for name in [
        "group.last_recipient_p50",
        "group.last_recipient_p99",
        "group.sender_cpu_per_message",
        "group.relay_bytes_per_message",
    ] {
        let row = rows
            .iter()
            .find(|r| r["bench"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {rows:?}"));
        for field in ["value", "baseline_value"] {
            // CPU time is counted in clock ticks: a quick run may legitimately measure 0.
            let v = row[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}.{field} not a number"));
            assert!(v.is_finite() && v >= 0.0, "{name}.{field} = {v}");
        }
        assert!(row["unit"].is_string() && row["baseline"].is_string());
    }
    let bytes = rows
        .iter()
        .find(|r| r["bench"] == "group.relay_bytes_per_message")
        .and_then(|r| r["value"].as_f64());
    assert!(bytes.is_some_and(|b| b > 0.0), "{rows:?}");
}

#[test]
fn devices_suite_reports_every_figure_with_its_baseline() {
    let rows = run_quick("devices");
    for name in [
        "devices.history_move",
        "devices.first_encrypt_p50",
        "devices.first_encrypt_p99",
    ] {
        assert_compared(&rows, name);
    }
}

#[test]
fn paths_suite_reports_every_figure_with_its_baseline() {
    // Each figure is the time a slow link adds to a path, against the link's round trip.
    let rows = run_quick("paths");
    for name in [
        "paths.first_message",
        "paths.contact_add",
        "paths.catch_up",
        "paths.send_after_start",
        "paths.file",
        "paths.group_first",
        "paths.second_text",
        "paths.device_link",
    ] {
        assert_compared(&rows, name);
    }
}

#[test]
fn media_suite_reports_every_figure_with_its_baseline() {
    let rows = run_quick("media");
    for name in [
        "media.end_to_end",
        "media.end_to_end_vs_tcp",
        "media.end_to_end_vs_chacha",
        "media.encrypt",
        "media.manifest",
        "media.upload",
        "media.download",
        "media.verify",
        "media.decrypt",
        "media.baseline_libp2p",
        "media.resume_resent",
    ] {
        let row = rows
            .iter()
            .find(|r| r["bench"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {rows:?}"));
        // A resumed upload may legitimately resend nothing.
        let min = if name == "media.resume_resent" {
            0.0
        } else {
            f64::MIN_POSITIVE
        };
        let v = row["value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name}.value not a number"));
        assert!(v.is_finite() && v >= min, "{name}.value = {v}");
        let base = row["baseline_value"]
            .as_f64()
            .unwrap_or_else(|| panic!("{name} has no baseline: {row}"));
        assert!(
            base.is_finite() && base > 0.0,
            "{name}.baseline_value = {base}"
        );
        assert!(
            row["ratio"].as_f64().is_some(),
            "{name} has no ratio: {row}"
        );
        assert!(row["unit"].is_string() && row["baseline"].is_string());
    }
    for row in rows
        .iter()
        .filter(|r| r["bench"].as_str().is_some_and(|b| b.starts_with("media.")))
    {
        assert!(
            row["baseline"].is_string(),
            "a media row without its baseline: {row}"
        );
    }
}
