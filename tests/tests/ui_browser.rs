//! The web UI in a real browser: runs the Node.js tests in `ui-tests/` (`node --test`, with
//! playwright-core driving Debian's headless Chromium) against the debug `tern` and
//! `tern-relay` binaries, and fails when they fail. They start their own relay and nodes on
//! 127.0.0.1; see `ui-tests/harness.mjs`.
//!
//! Nothing is skipped: without Node.js 20+, `/usr/bin/chromium` or `ui-tests/node_modules`,
//! this test fails and says to run `.ci/run`, which installs them.

use std::{
    io::{BufRead, BufReader, Read, Write},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tern_tests::support::{POLL, bin};

/// Longest run of the whole browser suite (it seeds a 10,000-message chat and measures).
const SUITE_TIMEOUT: Duration = Duration::from_secs(15 * 60);
/// How long the suite gets to clean up after SIGTERM before its process group is killed.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// Lines of the suite's output that carry measurements; shown even when the test passes.
const MEASURE_PREFIX: &str = "ui-measure |";
/// What to do when something the suite needs is missing.
const SETUP_HINT: &str = "run .ci/run, which installs them (or: apt-get install chromium, \
                          and `npm ci` in ui-tests/)";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Fails with a clear message unless Node.js 20+, the browser and the npm packages are here.
fn check_prerequisites(ui: &Path, chromium: &Path) {
    let version = Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let Some(version) = version else {
        panic!("the browser tests need Node.js (`node` is not on PATH): {SETUP_HINT}");
    };
    let major: u32 = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        major >= 20,
        "the browser tests need Node.js 20 or newer, found {version}: {SETUP_HINT}"
    );
    assert!(
        chromium.exists(),
        "the browser tests need Chromium at {}: {SETUP_HINT}",
        chromium.display()
    );
    for package in ["playwright-core", "ws"] {
        assert!(
            ui.join("node_modules")
                .join(package)
                .join("package.json")
                .exists(),
            "the browser tests need ui-tests/node_modules/{package}: {SETUP_HINT}"
        );
    }
}

/// Collects a child's output stream into `into`, line by line.
fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<Vec<String>>>) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if let Ok(mut lines) = into.lock() {
                lines.push(line);
            }
        }
    })
}

/// Signals the suite's whole process group (node, its test processes, the nodes and relays
/// they started; the browser exits when its DevTools pipe closes).
fn signal_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
}

/// Waits for the suite within [`SUITE_TIMEOUT`]; on timeout terminates it (SIGTERM, then
/// SIGKILL to the group). Returns whether it exited 0, and why not.
fn wait_suite(child: &mut Child) -> Result<(), String> {
    let deadline = Instant::now() + SUITE_TIMEOUT;
    let result = loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break Ok(()),
            Ok(Some(status)) => break Err(format!("node --test exited {status}")),
            Ok(None) if Instant::now() > deadline => {
                signal_group(child, "-TERM");
                let grace = Instant::now() + TERM_GRACE;
                while Instant::now() < grace && matches!(child.try_wait(), Ok(None)) {
                    std::thread::sleep(POLL);
                }
                break Err(format!("the browser tests took over {SUITE_TIMEOUT:?}"));
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => break Err(format!("cannot wait for node --test: {e}")),
        }
    };
    // Whatever is left of the group (a child that outlived its parent) goes too.
    signal_group(child, "-KILL");
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[test]
fn web_ui_in_a_real_browser() {
    let root = workspace();
    let ui = root.join("ui-tests");
    let chromium = std::env::var_os("TERN_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    check_prerequisites(&ui, &chromium);

    let tern = bin("tern");
    let relay = bin("tern-relay");
    for b in [&tern, &relay] {
        assert!(b.exists(), "no binary at {}", b.display());
    }
    // target/<profile>/tern → target/
    let target = tern
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| root.join("target"));
    let screenshots = target.join("ui-screenshots");
    if let Err(e) = std::fs::create_dir_all(&screenshots) {
        panic!("cannot create {}: {e}", screenshots.display());
    }

    let mut files: Vec<PathBuf> = std::fs::read_dir(&ui)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", ui.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.mjs in {}", ui.display());

    // Files one at a time: each starts its own relay, nodes and browser on a 2-core machine.
    let mut child = Command::new("node")
        .args(["--test", "--test-concurrency=1", "--test-reporter=spec"])
        .args(&files)
        .current_dir(&ui)
        .env_remove("TERN_HOME")
        .env("TERN_BIN", &tern)
        .env("TERN_RELAY_BIN", &relay)
        .env("TERN_CHROMIUM", &chromium)
        .env("TERN_UI_SCREENSHOTS", &screenshots)
        .env("TERN_UI_REPORT", target.join("ui-measurements.txt"))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so a timeout can end everything it started.
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run node --test: {e}: {SETUP_HINT}"));

    let out = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child.stdout.take().map(|s| collect(s, out.clone())),
        child.stderr.take().map(|s| collect(s, out.clone())),
    ];
    let result = wait_suite(&mut child);
    for r in readers.into_iter().flatten() {
        let _ = r.join();
    }
    let lines = out.lock().map(|l| l.clone()).unwrap_or_default();

    // The measurements are a report, not a verdict: shown even when the test passes (written
    // to stderr directly, past the test harness's capture).
    let measured: Vec<&String> = lines
        .iter()
        .filter(|l| l.trim_start().starts_with(MEASURE_PREFIX))
        .collect();
    if !measured.is_empty() {
        let mut err = std::io::stderr().lock();
        let _ = writeln!(err, "\nweb UI measurements (report only):");
        for l in measured {
            let _ = writeln!(
                err,
                "  {}",
                l.trim_start().trim_start_matches(MEASURE_PREFIX)
            );
        }
    }
    println!("{}", lines.join("\n"));
    if let Err(why) = result {
        panic!("the browser tests failed ({why}); their output is above");
    }
}
