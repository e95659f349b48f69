//! Replays the committed fuzz corpus (`relay/fuzz/corpus/<target>/*`) through every
//! decoder on stable Rust, with the same checks as the fuzz targets, so CI exercises
//! what fuzzing found. `cargo test -p tern-relay --features server --test fuzz_corpus --
//! --ignored` rewrites the hand-made seeds.

use std::path::{Path, PathBuf};

use serde_bytes::ByteBuf;
use tern_relay::{
    PeerId, blob,
    server::Config,
    wire::{ErrorCode, Rejection, directory, mailbox, presence, stream},
};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
}

/// The decoder and property check for each fuzz target, by target name.
fn check(target: &str, data: &[u8]) {
    macro_rules! round_trip {
        ($ty:ty) => {
            if let Ok(v) = <$ty>::decode(data)
                && let Ok(bytes) = v.encode()
            {
                assert_eq!(<$ty>::decode(&bytes).unwrap(), v);
            }
        };
    }
    match target {
        "mailbox_request" => round_trip!(mailbox::Request),
        "mailbox_response" => round_trip!(mailbox::Response),
        "presence_request" => round_trip!(presence::Request),
        "presence_response" => round_trip!(presence::Response),
        "directory_request" => round_trip!(directory::Request),
        "directory_response" => round_trip!(directory::Response),
        "blob_frame" => {
            for max in [
                blob::MAX_CONTROL_FRAME_BYTES,
                blob::MAX_MANIFEST_FRAME_BYTES,
                blob::MAX_FRAME_BYTES,
            ] {
                if let Ok(v) = blob::Request::decode(data, max)
                    && let Ok(bytes) = v.encode()
                {
                    assert_eq!(blob::Request::decode(&bytes, max).unwrap(), v);
                }
                if let Ok(v) = blob::Response::decode(data, max)
                    && let Ok(bytes) = v.encode()
                {
                    assert_eq!(blob::Response::decode(&bytes, max).unwrap(), v);
                }
            }
            let mut r = futures::io::Cursor::new(data);
            futures::executor::block_on(async {
                while let Ok(Some(frame)) =
                    stream::read_frame(&mut r, blob::MAX_CONTROL_FRAME_BYTES).await
                {
                    assert!(frame.len() <= blob::MAX_CONTROL_FRAME_BYTES);
                    let _ = blob::Request::decode(&frame, blob::MAX_CONTROL_FRAME_BYTES);
                }
            });
        }
        "config_toml" => {
            if let Ok(text) = std::str::from_utf8(data)
                && let Ok(cfg) = Config::from_toml(text)
            {
                let _ = cfg.validate();
            }
        }
        other => panic!("corpus directory {other} has no decoder; add it here and in fuzz/"),
    }
}

const TARGETS: [&str; 8] = [
    "blob_frame",
    "directory_request",
    "directory_response",
    "mailbox_request",
    "mailbox_response",
    "presence_request",
    "presence_response",
    "config_toml",
];

#[test]
fn corpus_replays_through_every_decoder() {
    for target in TARGETS {
        let dir = corpus_dir().join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            check(target, &data);
            n += 1;
        }
        assert!(n > 0, "empty corpus for {target}");
    }
}

#[test]
fn seeds_decode_as_expected() {
    // The valid seeds really are valid (so the corpus reaches past the version check).
    for (target, name) in [
        ("mailbox_request", "deposit"),
        ("mailbox_response", "messages"),
        ("presence_request", "subscribe"),
        ("presence_response", "presence"),
        ("directory_request", "claim"),
        ("directory_response", "prekey"),
        ("blob_frame", "create"),
        ("blob_frame", "info"),
    ] {
        let data = std::fs::read(corpus_dir().join(target).join(name)).unwrap();
        match target {
            "mailbox_request" => assert!(mailbox::Request::decode(&data).is_ok()),
            "mailbox_response" => assert!(mailbox::Response::decode(&data).is_ok()),
            "presence_request" => assert!(presence::Request::decode(&data).is_ok()),
            "directory_request" => assert!(directory::Request::decode(&data).is_ok()),
            "directory_response" => assert!(directory::Response::decode(&data).is_ok()),
            "blob_frame" if name == "create" => {
                assert!(blob::Request::decode(&data, blob::MAX_MANIFEST_FRAME_BYTES).is_ok())
            }
            "blob_frame" => {
                assert!(blob::Response::decode(&data, blob::MAX_MANIFEST_FRAME_BYTES).is_ok())
            }
            _ => assert!(presence::Response::decode(&data).is_ok()),
        }
    }
}

/// A named seed file.
type Seed = (&'static str, Vec<u8>);

fn invalid_variants(valid: &[u8]) -> Vec<Seed> {
    let mut v2 = valid.to_vec();
    v2[0] = 2;
    let mut trailing = valid.to_vec();
    trailing.push(0);
    vec![
        ("empty", vec![]),
        ("version-only", vec![1]),
        ("version-2", v2),
        ("truncated", valid[..valid.len() / 2].to_vec()),
        ("trailing", trailing),
        (
            "deep-nesting",
            std::iter::once(1)
                .chain(std::iter::repeat_n(0x81, 2000))
                .collect(),
        ),
        (
            "huge-length",
            vec![1, 0x5b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
    ]
}

#[test]
#[ignore = "rewrites the hand-made seed corpus"]
fn regenerate_seeds() {
    let p = PeerId::random();
    let env = mailbox::Envelope {
        id: 7,
        sender: p,
        deposited_ms: 1_700_000_000_000,
        ciphertext: ByteBuf::from(vec![0x42; 64]),
        intro: true,
    };
    let entry = presence::Entry {
        peer: p,
        state: presence::State::Offline,
        last_seen_ms: Some(1_700_000_000_000),
    };
    let sets: Vec<(&str, Vec<Seed>)> = vec![
        (
            "mailbox_request",
            vec![
                (
                    "deposit",
                    mailbox::Request::Deposit {
                        recipients: vec![p, PeerId::random()],
                        ttl_secs: Some(60),
                        ciphertext: ByteBuf::from(vec![1; 32]),
                        tokens: vec![Some(serde_bytes::ByteArray::new([2; 32])), None],
                        follows: None,
                    }
                    .encode()
                    .unwrap(),
                ),
                (
                    "fetch",
                    mailbox::Request::Fetch {
                        after: 3,
                        limit: 50,
                    }
                    .encode()
                    .unwrap(),
                ),
                (
                    "ack",
                    mailbox::Request::Ack { ids: vec![1, 2, 3] }
                        .encode()
                        .unwrap(),
                ),
                (
                    "listen",
                    mailbox::Request::Listen { enabled: true }.encode().unwrap(),
                ),
                (
                    "register-push",
                    mailbox::Request::RegisterPush {
                        url: Some("http://127.0.0.1:9/push/x".into()),
                    }
                    .encode()
                    .unwrap(),
                ),
                (
                    "deliver",
                    mailbox::Request::Deliver {
                        messages: vec![env.clone()],
                    }
                    .encode()
                    .unwrap(),
                ),
            ],
        ),
        (
            "mailbox_response",
            vec![
                (
                    "messages",
                    mailbox::Response::Messages {
                        messages: vec![env],
                        more: true,
                    }
                    .encode()
                    .unwrap(),
                ),
                (
                    "deposited",
                    mailbox::Response::Deposited {
                        message: 9,
                        recipients: 2,
                        refused: vec![mailbox::Refusal {
                            peer: p,
                            code: tern_relay::wire::ErrorCode::NoGrant,
                        }],
                    }
                    .encode()
                    .unwrap(),
                ),
                (
                    "acked",
                    mailbox::Response::Acked { removed: 2 }.encode().unwrap(),
                ),
                (
                    "error",
                    mailbox::Response::Error(Rejection {
                        code: ErrorCode::RateLimited,
                        retry_after_ms: Some(250),
                    })
                    .encode()
                    .unwrap(),
                ),
            ],
        ),
        (
            "presence_request",
            vec![
                (
                    "subscribe",
                    presence::Request::Subscribe {
                        peers: vec![p, PeerId::random()],
                    }
                    .encode()
                    .unwrap(),
                ),
                (
                    "heartbeat",
                    presence::Request::Heartbeat {
                        status: presence::Status::Away,
                    }
                    .encode()
                    .unwrap(),
                ),
                (
                    "allow",
                    presence::Request::SetAllowList { peers: vec![p] }
                        .encode()
                        .unwrap(),
                ),
                (
                    "query",
                    presence::Request::Query { peers: vec![p] }
                        .encode()
                        .unwrap(),
                ),
                (
                    "update",
                    presence::Request::Update {
                        entries: vec![entry.clone()],
                    }
                    .encode()
                    .unwrap(),
                ),
            ],
        ),
        (
            "presence_response",
            vec![
                (
                    "presence",
                    presence::Response::Presence {
                        entries: vec![entry],
                    }
                    .encode()
                    .unwrap(),
                ),
                ("ok", presence::Response::Ok.encode().unwrap()),
            ],
        ),
    ];
    let sets = sets.into_iter().chain([
        (
            "directory_request",
            vec![
                (
                    "claim",
                    directory::Request::ClaimPrekey {
                        user: ByteBuf::from(vec![7; 16]),
                        device: p,
                    }
                    .encode()
                    .unwrap(),
                ),
                (
                    "fetch",
                    directory::Request::FetchDeviceList {
                        user: ByteBuf::from(vec![7; 16]),
                    }
                    .encode()
                    .unwrap(),
                ),
                (
                    "publish-list",
                    directory::Request::PublishDeviceList {
                        list: ByteBuf::from(vec![1; 40]),
                    }
                    .encode()
                    .unwrap(),
                ),
                (
                    "publish-prekeys",
                    directory::Request::PublishPrekeys {
                        bundle: ByteBuf::from(vec![2; 40]),
                    }
                    .encode()
                    .unwrap(),
                ),
            ],
        ),
        (
            "directory_response",
            vec![
                (
                    "prekey",
                    directory::Response::Prekey {
                        claim: ByteBuf::from(vec![3; 40]),
                        fallback: true,
                    }
                    .encode()
                    .unwrap(),
                ),
                (
                    "published",
                    directory::Response::Published { one_time_keys: 3 }
                        .encode()
                        .unwrap(),
                ),
                (
                    "list",
                    directory::Response::DeviceList {
                        list: ByteBuf::from(vec![4; 40]),
                    }
                    .encode()
                    .unwrap(),
                ),
            ],
        ),
    ]);
    let manifest = blob::Manifest {
        size: 5000,
        chunk_size: 2048,
        hashes: vec![[0x11; 32], [0x22; 32], [0x33; 32]],
    };
    let mut stream_of_frames = Vec::new();
    for f in [
        blob::Request::Get {
            blob: manifest.id(),
            read_cap: [5; 32],
            from: 1,
            to: Some(3),
        }
        .encode()
        .unwrap(),
        blob::Request::Delete { blob: [6; 32] }.encode().unwrap(),
    ] {
        stream_of_frames.extend_from_slice(&(f.len() as u32).to_be_bytes());
        stream_of_frames.extend_from_slice(&f);
    }
    stream_of_frames.extend_from_slice(&u32::MAX.to_be_bytes());
    let sets = sets.chain([(
        "blob_frame",
        vec![
            (
                "create",
                blob::Request::Create {
                    manifest: manifest.clone(),
                    read_cap_hash: blob::read_cap_hash(&[5; 32]),
                    ttl_secs: Some(3600),
                }
                .encode()
                .unwrap(),
            ),
            (
                "info",
                blob::Response::Info {
                    manifest,
                    expires_at_ms: 1_700_000_000_000,
                }
                .encode()
                .unwrap(),
            ),
            (
                "chunk",
                blob::Request::Chunk {
                    index: 2,
                    data: ByteBuf::from(vec![9; 904]),
                }
                .encode()
                .unwrap(),
            ),
            (
                "error",
                blob::Response::error(ErrorCode::HashMismatch, "chunk mismatch", None)
                    .encode()
                    .unwrap(),
            ),
            ("stream", stream_of_frames),
        ],
    )]);
    for (target, seeds) in sets {
        let dir = corpus_dir().join(target);
        std::fs::create_dir_all(&dir).unwrap();
        let first = seeds[0].1.clone();
        for (name, bytes) in seeds.into_iter().chain(invalid_variants(&first)) {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let dir = corpus_dir().join("config_toml");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("relay.toml"),
        dir.join("example"),
    )
    .unwrap();
    std::fs::write(
        dir.join("bad-prefix"),
        "[push]\nallowed_prefixes = [\"file:///\"]\n",
    )
    .unwrap();
    std::fs::write(dir.join("unknown-field"), "[mailbox]\nmax_mesages = 3\n").unwrap();
    std::fs::write(dir.join("nan"), "[rate]\nrequests_per_sec = nan\n").unwrap();
}
