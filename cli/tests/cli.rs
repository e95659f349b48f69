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

    let empty = dir.path().join("empty");
    let up = tern(&empty, &["up"]);
    assert_eq!(up.status.code(), Some(8));
    assert!(String::from_utf8_lossy(&up.stderr).contains("tern --home"));

    let usage = tern(&home, &["frobnicate"]);
    assert_eq!(usage.status.code(), Some(2));
}
