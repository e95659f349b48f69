//! Files the web UI uploaded for sending (`uploads/`) that no transfer takes are swept once
//! they are old; one a transfer waits to stage, and a fresh one, stay. A transfer that
//! pauses keeps how far it got.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use super::Harness;
use crate::consts::UPLOAD_KEEP;

/// An upload directory `name` under `uploads` holding one file; `old`: last changed longer
/// ago than [`UPLOAD_KEEP`]. Returns the file.
fn upload(uploads: &Path, name: &str, old: bool) -> PathBuf {
    let dir = uploads.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("photo.jpg");
    std::fs::write(&file, b"not sent yet").unwrap();
    if old {
        let then = SystemTime::now() - UPLOAD_KEEP - Duration::from_secs(60);
        std::fs::File::open(&dir)
            .unwrap()
            .set_modified(then)
            .unwrap();
    }
    file
}

#[tokio::test]
async fn uploads_no_transfer_takes_are_swept_once_old() {
    let mut alice = Harness::named("alice");
    let bob = Harness::named("bob");
    alice.add(&bob).await;
    let uploads = alice.engine.me.home.dir().join("uploads");
    let refused = upload(&uploads, "refused", true);
    let fresh = upload(&uploads, "fresh", false);
    let taken = upload(&uploads, "taken", true);
    alice
        .engine
        .file_send(
            Some(&bob.engine.me.user_hex),
            None,
            taken.to_str().unwrap(),
            String::new(),
            crate::types::Prepare::Scaled,
        )
        .unwrap();

    alice.engine.sweep_uploads();
    assert!(
        !refused.parent().unwrap().exists(),
        "an old upload nobody took"
    );
    assert!(fresh.exists(), "its file.send may be on its way");
    assert!(taken.exists(), "a transfer waits to stage it");
}

/// A transfer that stops part way (the relay went down) and waits to go on shows how far it
/// got, in the list and after, rather than nothing: what its task reached is kept.
#[tokio::test]
async fn a_paused_transfer_keeps_how_far_it_got() {
    use crate::engine::media::MediaEvent;
    let mut alice = Harness::named("alice");
    let bob = Harness::named("bob");
    alice.add(&bob).await;
    let file = upload(&alice.engine.me.home.dir().join("uploads"), "big", false);
    let sent = alice
        .engine
        .file_send(
            Some(&bob.engine.me.user_hex),
            None,
            file.to_str().unwrap(),
            String::new(),
            crate::types::Prepare::Original,
        )
        .unwrap();
    let id = crate::engine::parse_message_id(&sent.id).unwrap();
    let listed = |h: &Harness| {
        h.engine
            .transfers()
            .unwrap()
            .into_iter()
            .find(|t| t.id == sent.id)
            .unwrap()
    };
    alice.engine.on_media(MediaEvent::Progress {
        id,
        state: "uploading",
        bytes: 4096,
        total: 8192,
    });
    alice.engine.on_media(MediaEvent::Failed {
        id,
        code: "network",
        message: "the relay went away".into(),
        retry: true,
    });
    let paused = listed(&alice);
    assert_eq!((paused.state.as_str(), paused.bytes), ("paused", 4096));
}
