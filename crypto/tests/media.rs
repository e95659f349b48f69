//! The media cipher: round trips at every size boundary, and detection of truncation,
//! reordering, dropped chunks, tampering, a wrong key and a bad header.

use std::io::Cursor;

use proptest::prelude::*;
use tern_crypto::media::{
    self, MEDIA_HEADER_LEN, MEDIA_TAG_LEN, MediaCipher, MediaError, MediaKey,
};

const CS: usize = 1024;

fn encrypt(key: &MediaKey, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let summary = media::encrypt_stream_with(key, CS, Cursor::new(data), &mut out).unwrap();
    assert_eq!(summary.ciphertext_len, out.len() as u64);
    assert_eq!(
        out.len() as u64,
        media::ciphertext_len(data.len() as u64, CS)
    );
    out
}

fn decrypt(key: &MediaKey, data: &[u8]) -> Result<Vec<u8>, MediaError> {
    let mut out = Vec::new();
    media::decrypt_stream(key, Cursor::new(data), &mut out)?;
    Ok(out)
}

fn frames(ct: &[u8]) -> Vec<&[u8]> {
    ct[MEDIA_HEADER_LEN..].chunks(CS + MEDIA_TAG_LEN).collect()
}

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn round_trips_at_boundaries() {
    let key = MediaKey::generate().unwrap();
    for len in [0, 1, CS - 1, CS, CS + 1, 3 * CS, 3 * CS + 17] {
        let d = data(len);
        let ct = encrypt(&key, &d);
        assert_eq!(decrypt(&key, &ct).unwrap(), d, "len {len}");
    }
}

#[test]
fn truncation_at_chunk_boundary_detected() {
    let key = MediaKey::generate().unwrap();
    let ct = encrypt(&key, &data(3 * CS));
    let cut = MEDIA_HEADER_LEN + 2 * (CS + MEDIA_TAG_LEN);
    assert!(matches!(
        decrypt(&key, &ct[..cut]),
        Err(MediaError::Tampered(1))
    ));
    // Mid-chunk, and down to the header alone.
    assert!(decrypt(&key, &ct[..cut + 10]).is_err());
    assert!(matches!(
        decrypt(&key, &ct[..MEDIA_HEADER_LEN]),
        Err(MediaError::Truncated)
    ));
    assert!(matches!(
        decrypt(&key, &ct[..5]),
        Err(MediaError::Truncated)
    ));
}

#[test]
fn reordered_and_dropped_chunks_detected() {
    let key = MediaKey::generate().unwrap();
    let ct = encrypt(&key, &data(4 * CS + 5));
    let header = &ct[..MEDIA_HEADER_LEN];
    let f = frames(&ct);
    let swapped: Vec<u8> = [header, f[1], f[0], f[2], f[3], f[4]].concat();
    assert!(matches!(
        decrypt(&key, &swapped),
        Err(MediaError::Tampered(0))
    ));
    let dropped: Vec<u8> = [header, f[0], f[2], f[3], f[4]].concat();
    assert!(matches!(
        decrypt(&key, &dropped),
        Err(MediaError::Tampered(1))
    ));
    // Two files under one key: a chunk from another file does not fit (other nonce prefix).
    let other = encrypt(&key, &data(4 * CS + 5));
    let g = frames(&other);
    let spliced: Vec<u8> = [header, f[0], g[1], f[2], f[3], f[4]].concat();
    assert!(matches!(
        decrypt(&key, &spliced),
        Err(MediaError::Tampered(1))
    ));
}

#[test]
fn tampering_wrong_key_and_bad_header() {
    let key = MediaKey::generate().unwrap();
    let ct = encrypt(&key, &data(2 * CS + 3));
    for i in (0..ct.len()).step_by(13) {
        let mut bad = ct.clone();
        bad[i] ^= 0x20;
        assert!(decrypt(&key, &bad).is_err(), "flip at {i} accepted");
    }
    let other = MediaKey::generate().unwrap();
    assert!(matches!(decrypt(&other, &ct), Err(MediaError::Tampered(0))));
    let mut v = ct.clone();
    v[0] = 9;
    assert!(matches!(
        decrypt(&key, &v),
        Err(MediaError::UnknownVersion(9))
    ));
    let mut huge = ct.clone();
    huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        decrypt(&key, &huge),
        Err(MediaError::BadChunkSize(_))
    ));
    assert!(matches!(
        MediaCipher::new(&key, 0),
        Err(MediaError::BadChunkSize(0))
    ));
}

#[test]
fn appended_chunk_detected() {
    let key = MediaKey::generate().unwrap();
    let ct = encrypt(&key, &data(2 * CS));
    let f = frames(&ct);
    let mut extended = ct.clone();
    extended.extend_from_slice(f[0]);
    assert!(decrypt(&key, &extended).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn round_trip_any(d in prop::collection::vec(any::<u8>(), 0..5 * CS)) {
        let key = MediaKey::generate().unwrap();
        let ct = encrypt(&key, &d);
        prop_assert_eq!(decrypt(&key, &ct).unwrap(), d);
    }

    #[test]
    fn any_cut_is_detected(len in 1..5 * CS, cut in any::<usize>()) {
        let key = MediaKey::generate().unwrap();
        let ct = encrypt(&key, &data(len));
        let cut = cut % ct.len();
        prop_assert!(decrypt(&key, &ct[..cut]).is_err());
    }
}
