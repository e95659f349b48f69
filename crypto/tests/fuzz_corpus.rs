//! Replays the committed fuzz corpus (`crypto/fuzz/corpus/<target>/*`) through every decoder, so
//! each `cargo test` runs what the fuzzers found interesting. `write_seeds` (ignored) regenerates
//! the valid seed inputs: `cargo test -p tern-crypto --test fuzz_corpus -- --ignored`.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use tern_crypto::fuzzing::{FUZZ_KEY, TARGETS};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
}

#[test]
fn corpus_replays_through_every_decoder() {
    let mut total = 0;
    for (name, run) in TARGETS {
        let dir = corpus_dir().join(name);
        let entries: Vec<_> = fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus for {name} missing at {}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        assert!(!entries.is_empty(), "corpus for {name} is empty");
        for path in entries {
            let data = fs::read(&path).unwrap();
            run(&data);
            // Every prefix too: truncation is the most common malformation.
            for cut in [0, 1, 2, data.len() / 2] {
                run(&data[..cut.min(data.len())]);
            }
            total += 1;
        }
    }
    assert!(total >= TARGETS.len());
}

#[test]
#[ignore = "regenerates the seed corpus; run by hand"]
fn write_seeds() {
    use tern_crypto::group::{GroupId, OutboundSenderKey};
    use tern_crypto::media::{self, MediaKey};
    use tern_crypto::safety::SafetyNumber;

    let mut alice = common::Device::new("alice");
    let mut bob = common::Device::new("bob");
    let mut a = alice.sessions_with(&bob);
    a.start(&alice.keys, &bob.claim()).unwrap();
    let first = a.encrypt(b"seed").unwrap();
    let mut b = bob.sessions_with(&alice);
    b.decrypt(&mut bob.keys, &first).unwrap();
    let normal = {
        let r = b.encrypt(b"reply").unwrap();
        a.decrypt(&mut alice.keys, &r).unwrap();
        a.encrypt(b"normal").unwrap()
    };
    let mut out = OutboundSenderKey::new(GroupId::random().unwrap(), alice.id(), 0);
    let group = out.encrypt(b"group seed").unwrap();
    let mut media_ct = Vec::new();
    media::encrypt_stream_with(
        &MediaKey::from_bytes(FUZZ_KEY),
        64,
        &b"media seed spanning a few chunks of sixty-four bytes each..."[..],
        &mut media_ct,
    )
    .unwrap();
    let safety = SafetyNumber::compute(
        &alice.identity.user_id(),
        &alice.identity.public(),
        &bob.identity.user_id(),
        &bob.identity.public(),
    );
    let claim = bob.bundle.claim(bob.bundle.fallback).to_bytes().unwrap();
    let seeds: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "device_certificate",
            "valid",
            bob.bundle.certificate.to_bytes().unwrap(),
        ),
        (
            "device_list",
            "valid",
            bob.list.sign(&bob.identity).unwrap().as_bytes().to_vec(),
        ),
        ("prekey_bundle", "valid", bob.bundle.to_bytes().unwrap()),
        ("claimed_prekey", "valid", claim),
        ("pairwise_message", "prekey", first),
        ("pairwise_message", "normal", normal),
        ("group_message", "valid", group),
        (
            "sender_key_distribution",
            "valid",
            out.distribution(alice.identity.user_id())
                .to_bytes()
                .unwrap()
                .to_vec(),
        ),
        ("pickles", "peer_sessions", a.pickle().unwrap().to_vec()),
        ("pickles", "outbound", out.pickle().unwrap().to_vec()),
        ("sealed", "valid", sealed_seed()),
        ("media", "valid", media_ct),
        ("safety_qr", "valid", safety.qr_payload().to_vec()),
        ("relay_record", "valid", relay_record_seed(&bob)),
    ];
    for (target, name, bytes) in seeds {
        let dir = corpus_dir().join(target);
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), bytes).unwrap();
    }
}

fn relay_record_seed(bob: &common::Device) -> Vec<u8> {
    tern_crypto::relay_record::RelayRecord {
        user_id: bob.identity.user_id(),
        identity_key: bob.identity.public(),
        version: 1,
        issued_at: 10,
        relays: vec![
            "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWLRPJAA5o6u8Rp9Zdd5NvMbJLYGFt5LdYcCNGwXFPsJPh"
                .into(),
        ],
        device_list: bob.list.sign(&bob.identity).unwrap(),
    }
    .sign(&bob.identity)
    .unwrap()
    .as_bytes()
    .to_vec()
}

fn sealed_seed() -> Vec<u8> {
    tern_crypto::sealed::seal(
        &tern_crypto::sealed::Secret32::new(FUZZ_KEY),
        b"fuzz",
        b"sealed seed",
    )
    .unwrap()
}
