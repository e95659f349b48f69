//! `tern-bench --quick` runs each suite on tiny sizes and emits well-formed JSON rows, so the
//! harness cannot rot between benchmark runs. The figures themselves are not checked here:
//! timings belong to the benchmark, not to pass/fail tests.

use std::process::Command;

fn run_quick(suite: &str) -> Vec<serde_json::Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_tern-bench"))
        .args([suite, "--quick", "--json"])
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
        let row = rows
            .iter()
            .find(|r| r["bench"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {rows:?}"));
        for field in ["value", "baseline_value", "ratio"] {
            let v = row[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}.{field} not a number"));
            assert!(v.is_finite() && v > 0.0, "{name}.{field} = {v}");
        }
        assert!(row["unit"].is_string() && row["baseline"].is_string());
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
        let row = rows
            .iter()
            .find(|r| r["bench"] == name)
            .unwrap_or_else(|| panic!("{name} missing from {rows:?}"));
        for field in ["value", "baseline_value", "ratio"] {
            let v = row[field]
                .as_f64()
                .unwrap_or_else(|| panic!("{name}.{field} not a number"));
            assert!(v.is_finite() && v > 0.0, "{name}.{field} = {v}");
        }
        assert!(row["unit"].is_string() && row["baseline"].is_string());
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
