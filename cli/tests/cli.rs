//! The `tern` binary without a running node: init, refusing to overwrite, clear messages and
//! exit codes when no node runs. (Tests with running nodes live in `tests/tests/`.)

use std::process::Command;

fn tern(home: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("TERN_HOME")
        .output()
        .expect("tern runs")
}

#[test]
fn init_refuses_to_overwrite_and_commands_say_no_node_runs() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    let out = tern(&home, &["init", "--name", "Ada", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["user_id"].as_str().unwrap().len(), 32);
    let before = std::fs::read(home.join("tern.db")).unwrap();

    let again = tern(&home, &["init"]);
    assert_eq!(again.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read(home.join("tern.db")).unwrap(), before);

    #[cfg(unix)]
    for f in ["store.key", "seal.key"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(home.join(f))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{f} is readable by others");
    }

    let send = tern(&home, &["send", "bob", "hi"]);
    assert_eq!(send.status.code(), Some(3));
    let err = String::from_utf8_lossy(&send.stderr);
    assert!(
        err.contains("no Tern node is running") && err.contains("up"),
        "{err}"
    );

    let usage = tern(&home, &["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
}

/// On a fresh home, `tern up` creates the identity itself and comes up (with its embedded
/// relay), so the README's one command runs Tern on a new machine.
#[test]
fn first_up_creates_an_identity_and_comes_up() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::sync::mpsc;
    use std::time::Duration;

    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("fresh");
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .arg("--home")
        .arg(&home)
        .args([
            "up",
            "--api",
            "127.0.0.1:0",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .env_remove("TERN_HOME")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("tern up starts");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut child = Kill(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let ready = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("tern up printed its ready line within 60 s");
        if line.starts_with("ready ") {
            break line;
        }
    };
    assert!(ready.contains("api=127.0.0.1:"), "{ready}");
    assert!(ready.contains("relay_connected=true"), "{ready}");
    // The identity exists now: init refuses to overwrite it, and a second up reuses it.
    let again = tern(&home, &["init"]);
    assert_eq!(again.status.code(), Some(8));
    let _ = child.0.kill();
}

/// Group commands: usage errors exit 2 before anything runs; well-formed ones say no node runs
/// (exit 3) rather than failing later.
#[test]
fn group_commands_check_their_arguments_and_need_a_node() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    assert!(tern(&home, &["init", "--name", "Ada"]).status.success());
    for args in [
        &["group"][..],
        &["group", "create"],
        &["group", "add", "Team"],
        &["group", "remove", "Team"],
        &["group", "send", "Team"],
        &["group", "history", "Team", "--limit", "x"],
    ] {
        let out = tern(&home, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    for args in [
        &["group", "create", "Team", "Bob"][..],
        &["group", "list", "--json"],
        &["group", "info", "Team"],
        &["group", "send", "Team", "hi"],
        &["group", "history", "Team", "--limit", "5"],
    ] {
        let out = tern(&home, args);
        assert_eq!(
            out.status.code(),
            Some(3),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
