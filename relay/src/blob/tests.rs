use super::*;

fn manifest_of(bytes: &[u8], chunk_size: u32) -> Manifest {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blob");
    std::fs::write(&path, bytes).unwrap();
    Manifest::of_file(&path, chunk_size).unwrap()
}

#[test]
fn manifest_of_file_cuts_chunks_and_id_is_stable() {
    let data: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let m = manifest_of(&data, 2048);
    assert_eq!(m.size, 5000);
    assert_eq!(m.chunks(), 3);
    assert_eq!(
        (m.chunk_len(0), m.chunk_len(2), m.chunk_len(3)),
        (2048, 904, 0)
    );
    assert_eq!(m.hashes[2], chunk_hash(&data[4096..]));
    m.check(5000).unwrap();
    // The id is a pure function of the manifest, and pinned: nodes and relays of different
    // builds must agree on it.
    assert_eq!(m.id(), manifest_of(&data, 2048).id());
    let empty = manifest_of(&[], 1024);
    assert_eq!(empty.chunks(), 0);
    empty.check(0).unwrap();
    let hex = tern_crypto::hex::encode(&empty.id());
    assert_eq!(hex, PINNED_EMPTY_ID);
    // Cutting the same bytes differently is another blob.
    assert_ne!(m.id(), manifest_of(&data, 1024).id());
    // An exact multiple of the chunk size has no short last chunk.
    let even = manifest_of(&[7u8; 4096], 1024);
    assert_eq!((even.chunks(), even.chunk_len(3)), (4, 1024));
}

/// SHA-256("tern blob id v1\0" || size 0 (u64 BE) || chunk size 1024 (u32 BE) || 0 hashes (u64 BE)).
const PINNED_EMPTY_ID: &str = "730681447d5b04166bc87431dd376e1f75d33718d255fa36d0aed3a04f429390";

#[test]
fn check_refuses_inconsistent_manifests() {
    let m = manifest_of(&[1u8; 3000], 1024);
    assert_eq!(
        m.check(2999),
        Err(ManifestError::TooLarge {
            size: 3000,
            max: 2999
        })
    );
    assert_eq!(m.check(2999).unwrap_err().code(), ErrorCode::TooLarge);
    let mut short = m.clone();
    short.hashes.pop();
    assert!(matches!(
        short.check(u64::MAX),
        Err(ManifestError::ChunkCount {
            expected: 3,
            found: 2
        })
    ));
    let mut long = m.clone();
    long.hashes.push([0; 32]);
    assert!(long.check(u64::MAX).is_err());
    for cs in [0, MIN_CHUNK_BYTES - 1, MAX_CHUNK_BYTES + 1] {
        let bad = Manifest {
            chunk_size: cs,
            ..m.clone()
        };
        assert_eq!(bad.check(u64::MAX), Err(ManifestError::ChunkSize(cs)));
    }
    // More chunks than the wire carries.
    let huge = Manifest {
        size: u64::from(MAX_CHUNKS) * 1024 + 1,
        chunk_size: 1024,
        hashes: vec![[0; 32]; MAX_CHUNKS as usize + 1],
    };
    assert!(matches!(
        huge.check(u64::MAX),
        Err(ManifestError::TooLarge { .. })
    ));
}

#[test]
fn read_cap_hash_and_constant_time_check() {
    let cap = [9u8; 32];
    let h = read_cap_hash(&cap);
    assert_ne!(h, cap);
    assert!(read_cap_matches(&cap, &h));
    assert!(!read_cap_matches(&[8u8; 32], &h));
}

#[test]
fn frames_round_trip_within_their_caps() {
    let largest = Manifest {
        size: u64::from(MAX_CHUNKS) * u64::from(CHUNK_BYTES),
        chunk_size: CHUNK_BYTES,
        hashes: vec![[0xff; 32]; MAX_CHUNKS as usize],
    };
    let create = Request::Create {
        manifest: largest.clone(),
        read_cap_hash: [1; 32],
        ttl_secs: Some(u32::MAX),
    };
    let bytes = create.encode().unwrap();
    assert!(bytes.len() <= MAX_MANIFEST_FRAME_BYTES, "{}", bytes.len());
    assert_eq!(
        Request::decode(&bytes, MAX_MANIFEST_FRAME_BYTES).unwrap(),
        create
    );
    let info = Response::Info {
        manifest: largest,
        expires_at_ms: u64::MAX,
    };
    let bytes = info.encode().unwrap();
    assert!(bytes.len() <= MAX_MANIFEST_FRAME_BYTES);
    // The reader's cap is the one for the frame it expects next.
    assert!(matches!(
        Response::decode(&bytes, MAX_CONTROL_FRAME_BYTES),
        Err(DecodeError::TooLarge { .. })
    ));

    let chunk = Request::Chunk {
        index: u32::MAX,
        data: ByteBuf::from(vec![0u8; MAX_CHUNK_BYTES as usize]),
    };
    let bytes = chunk.encode().unwrap();
    assert!(bytes.len() <= data_frame_cap(MAX_CHUNK_BYTES));
    assert!(bytes.len() <= MAX_FRAME_BYTES);
    assert_eq!(
        Request::decode(&bytes, data_frame_cap(MAX_CHUNK_BYTES)).unwrap(),
        chunk
    );
    assert!(Request::decode(&bytes, data_frame_cap(CHUNK_BYTES)).is_err());

    for small in [
        Request::Get {
            blob: [2; 32],
            read_cap: [3; 32],
            from: u32::MAX,
            to: Some(u32::MAX),
        },
        Request::Delete { blob: [4; 32] },
    ] {
        let bytes = small.encode().unwrap();
        assert!(bytes.len() <= MAX_CONTROL_FRAME_BYTES);
        assert_eq!(
            Request::decode(&bytes, MAX_CONTROL_FRAME_BYTES).unwrap(),
            small
        );
    }
    let long_message = "é".repeat(MAX_ERROR_MESSAGE_BYTES);
    for small in [
        Response::Created {
            have: u32::MAX,
            complete: true,
            expires_at_ms: u64::MAX,
        },
        Response::Ack { have: u32::MAX },
        Response::Complete {
            expires_at_ms: u64::MAX,
        },
        Response::End,
        Response::Deleted,
        Response::error(ErrorCode::Other(u16::MAX), &long_message, Some(u64::MAX)),
    ] {
        let bytes = small.encode().unwrap();
        assert!(bytes.len() <= MAX_CONTROL_FRAME_BYTES, "{small:?}");
        assert_eq!(
            Response::decode(&bytes, MAX_CONTROL_FRAME_BYTES).unwrap(),
            small
        );
    }
}

#[test]
fn malformed_frames_are_errors() {
    // A blob id of the wrong length, a hash list not a multiple of 32, unknown variants.
    let bad_id = crate::wire::encode(
        "t",
        &serde_json_like::Delete {
            Delete: serde_json_like::Blob {
                blob: ByteBuf::from(vec![0u8; 31]),
            },
        },
        1000,
    )
    .unwrap();
    assert!(Request::decode(&bad_id, MAX_CONTROL_FRAME_BYTES).is_err());
    let bad_hashes = Manifest {
        size: 0,
        chunk_size: 1024,
        hashes: vec![],
    };
    let mut frame = Response::Info {
        manifest: bad_hashes,
        expires_at_ms: 0,
    }
    .encode()
    .unwrap();
    frame.push(0);
    assert!(Response::decode(&frame, MAX_MANIFEST_FRAME_BYTES).is_err());
    assert!(Request::decode(&[], 10).is_err());
    assert!(Request::decode(&[2, 0], 10).is_err());
}

/// A hand-built frame shape, to put bytes on the wire the typed encoder would refuse.
#[allow(non_snake_case)]
mod serde_json_like {
    use serde::Serialize;
    use serde_bytes::ByteBuf;

    #[derive(Serialize)]
    pub struct Blob {
        pub blob: ByteBuf,
    }

    #[derive(Serialize)]
    pub struct Delete {
        pub Delete: Blob,
    }
}
