//! `/tern/blob/1` against the real `tern-relay` binary on 127.0.0.1: uploads, resumable
//! after a crash, downloads of ranges, every refusal, expiry, and deposits answered while a
//! large upload runs.

mod support;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};
use tern_relay::rpc::Requests as _;

use serde_bytes::ByteBuf;
use support::{Relay, WAIT, eventually};
use tern_relay::{
    Multiaddr,
    blob::{
        BlobError, CHUNK_BYTES, MAX_CONTROL_FRAME_BYTES, Manifest, Request, Response, read_cap_hash,
    },
    client::{self, Client},
    wire::{ErrorCode, stream},
};

/// Test relays keep no disk reserve (the machine's free space is not the test's business)
/// and collect garbage every second.
const BLOB_CONFIG: &str = "[blobs]\nreserve_bytes = 0\ngc_secs = 1\nops_burst = 1000.0\n";

/// A device registered at the relay: it published its user's device list and its prekeys,
/// which is what makes it a user of this relay, allowed to upload.
async fn registered(addr: &Multiaddr) -> Client {
    registered_key(addr).await.0
}

/// [`registered`], with the device's key to connect again later.
async fn registered_key(addr: &Multiaddr) -> (Client, client::Keypair) {
    use tern_crypto::{DeviceKeys, DeviceList, IdentityKey, prekey::PrekeyBundle};
    let id = IdentityKey::generate().unwrap();
    let mut device = DeviceKeys::generate().unwrap();
    let cert = device.certify(&id, "laptop", 1).unwrap();
    let list = DeviceList::first(&id, cert.clone(), 1).sign(&id).unwrap();
    let mut secret = *device.network_secret();
    let key = client::Keypair::ed25519_from_bytes(&mut secret).unwrap();
    let (c, _) = Client::connect(key.clone(), addr.clone(), client::Config::default())
        .await
        .unwrap();
    c.publish_device_list(list.as_bytes().to_vec())
        .await
        .unwrap();
    let bundle = PrekeyBundle::generate(&mut device, cert, 1).unwrap();
    c.publish_prekeys(bundle.to_bytes().unwrap()).await.unwrap();
    (c, key)
}

async fn stranger(addr: &Multiaddr) -> Client {
    let key = client::Keypair::generate_ed25519();
    Client::connect(key, addr.clone(), client::Config::default())
        .await
        .unwrap()
        .0
}

/// Pseudo-random bytes (xorshift), different for every seed.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A ciphertext-like file of `len` bytes and its manifest.
fn blob_file(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>, Manifest) {
    let path = dir.join(name);
    let bytes = noise(len, seed);
    std::fs::write(&path, &bytes).unwrap();
    let m = Manifest::of_file(&path, CHUNK_BYTES).unwrap();
    (path, bytes, m)
}

async fn timed<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("in time")
}

async fn download_all(c: &Client, m: &Manifest, cap: &[u8; 32], out: &Path) -> Vec<u8> {
    let mut f = tokio::fs::File::create(out).await.unwrap();
    timed(c.download_blob(&m.id(), cap, 0, None, &mut f, |_| {}))
        .await
        .unwrap();
    drop(f);
    std::fs::read(out).unwrap()
}

fn code(e: BlobError) -> ErrorCode {
    e.code()
        .unwrap_or_else(|| panic!("expected a rejection, got {e:?}"))
}

/// A raw `/tern/blob/1` stream, for frames the client functions would never send.
struct Raw(libp2p::Stream);

impl Raw {
    async fn open(c: &Client) -> Raw {
        Raw(timed(c.open_blob_stream()).await.unwrap())
    }

    async fn send(&mut self, req: Request) {
        stream::write_frame(&mut self.0, &req.encode().unwrap())
            .await
            .unwrap();
    }

    async fn recv(&mut self) -> Response {
        let frame = timed(stream::read_frame(&mut self.0, MAX_CONTROL_FRAME_BYTES))
            .await
            .unwrap()
            .expect("a frame");
        Response::decode(&frame, MAX_CONTROL_FRAME_BYTES).unwrap()
    }

    async fn create(&mut self, m: &Manifest, cap: &[u8; 32]) -> Response {
        self.send(Request::Create {
            manifest: m.clone(),
            read_cap_hash: read_cap_hash(cap),
            ttl_secs: None,
        })
        .await;
        self.recv().await
    }

    async fn chunk(&mut self, m: &Manifest, bytes: &[u8], index: u32) {
        let start = m.offset(index) as usize;
        let data = bytes[start..start + m.chunk_len(index)].to_vec();
        self.send(Request::Chunk {
            index,
            data: ByteBuf::from(data),
        })
        .await;
    }

    /// Reads frames until an `Ack` of `have` chunks.
    async fn acked(&mut self, have: u32) {
        loop {
            match self.recv().await {
                Response::Ack { have: h } if h == have => return,
                Response::Ack { have: h } if h < have => {}
                other => panic!("expected Ack {{ have: {have} }}, got {other:?}"),
            }
        }
    }

    async fn error(&mut self) -> ErrorCode {
        loop {
            match self.recv().await {
                Response::Error { code, .. } => return code,
                Response::Ack { .. } => {}
                other => panic!("expected an error, got {other:?}"),
            }
        }
    }
}

fn blob_files(relay: &Relay) -> Vec<String> {
    std::fs::read_dir(relay.data.join("db").join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_download_round_trip_ranges_and_read_caps() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), BLOB_CONFIG);
    let alice = registered(&relay.tcp).await;
    let bob = stranger(&relay.quic).await;
    // Three megabytes and change: eleven whole chunks and a short last one.
    let (path, bytes, m) = blob_file(dir.path(), "ct", 3 * 1024 * 1024 + 12_345, 1);
    assert_eq!(m.chunks(), 13);
    let cap = [7u8; 32];
    let mut seen = Vec::new();
    let up = timed(alice.upload_blob(&m, read_cap_hash(&cap), None, &path, 4, |b| seen.push(b)))
        .await
        .unwrap();
    assert_eq!(seen.first(), Some(&0));
    assert_eq!(seen.last(), Some(&m.size));
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(up.expires_at_ms > 0);

    // Anyone with the read capability downloads it, byte for byte.
    assert_eq!(
        download_all(&bob, &m, &cap, &dir.path().join("out")).await,
        bytes
    );
    // A range: chunks 2..5, written where the caller positioned the file.
    let mut f = tokio::fs::File::create(dir.path().join("range"))
        .await
        .unwrap();
    let mut written = 0;
    let info = timed(bob.download_blob(&m.id(), &cap, 2, Some(5), &mut f, |b| written = b))
        .await
        .unwrap();
    drop(f);
    assert_eq!(info.manifest, m);
    let slice = &bytes[2 * CHUNK_BYTES as usize..5 * CHUNK_BYTES as usize];
    assert_eq!(written, slice.len() as u64);
    assert_eq!(std::fs::read(dir.path().join("range")).unwrap(), slice);
    // The last chunk alone, short as it is.
    let mut f = tokio::fs::File::create(dir.path().join("tail"))
        .await
        .unwrap();
    timed(bob.download_blob(&m.id(), &cap, 12, None, &mut f, |_| {}))
        .await
        .unwrap();
    drop(f);
    assert_eq!(
        std::fs::read(dir.path().join("tail")).unwrap(),
        &bytes[12 * CHUNK_BYTES as usize..]
    );
    // A range past the end is a bad index.
    let mut f = tokio::fs::File::create(dir.path().join("x")).await.unwrap();
    let e = timed(bob.download_blob(&m.id(), &cap, 3, Some(14), &mut f, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::BadIndex);

    // A wrong read capability, or an unknown blob, learns nothing.
    let e = timed(bob.download_blob(&m.id(), &[8u8; 32], 0, None, &mut f, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::NotFound);
    let e = timed(bob.download_blob(&[1u8; 32], &cap, 0, None, &mut f, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::NotFound);

    // Creating it again is idempotent: complete at once, nothing sent.
    let mut again = Vec::new();
    timed(alice.upload_blob(&m, read_cap_hash(&cap), None, &path, 4, |b| again.push(b)))
        .await
        .unwrap();
    assert_eq!(again, [m.size]);
    assert_eq!(relay.metric("tern_relay_blob_uploads_total").await, 1.0);
    assert_eq!(
        relay.metric("tern_relay_blob_upload_bytes_total").await,
        m.size as f64
    );
    assert_eq!(relay.metric("tern_relay_blobs").await, 1.0);
    assert_eq!(relay.metric("tern_relay_blob_bytes").await, m.size as f64);
    // Opened with a matching capability: the three downloads and the bad range.
    assert_eq!(relay.metric("tern_relay_blob_downloads_total").await, 4.0);

    // Only its uploader deletes it; then it is gone, disk and all.
    assert_eq!(
        code(timed(bob.delete_blob(&m.id())).await.unwrap_err()),
        ErrorCode::NotFound
    );
    timed(alice.delete_blob(&m.id())).await.unwrap();
    let e = timed(bob.download_blob(&m.id(), &cap, 0, None, &mut f, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::NotFound);
    assert!(blob_files(&relay).is_empty());
    assert_eq!(relay.metric("tern_relay_blob_bytes").await, 0.0);
}

/// An upload cut by a crash resumes from the relay's durable mark after a restart: a torn
/// tail is cut, and only the chunks after the mark are sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_resumes_from_the_durable_mark_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = Relay::start(dir.path(), BLOB_CONFIG);
    let (alice, key) = registered_key(&relay.tcp).await;
    let (path, bytes, m) = blob_file(dir.path(), "ct", 10 * CHUNK_BYTES as usize + 99, 2);
    let cap = [3u8; 32];
    let mut raw = Raw::open(&alice).await;
    assert!(matches!(
        raw.create(&m, &cap).await,
        Response::Created {
            have: 0,
            complete: false,
            ..
        }
    ));
    for i in 0..5 {
        raw.chunk(&m, &bytes, i).await;
    }
    raw.acked(5).await;
    // The relay dies with five chunks acknowledged; a torn sixth is on disk too.
    relay.kill9();
    drop((raw, alice));
    let data = relay
        .data
        .join("db")
        .join("blobs")
        .join(format!("{}.data", hex(&m.id())));
    assert_eq!(
        std::fs::metadata(&data).unwrap().len(),
        5 * u64::from(CHUNK_BYTES)
    );
    let mut torn = std::fs::read(&data).unwrap();
    torn.extend_from_slice(&bytes[torn.len()..torn.len() + 1000]);
    std::fs::write(&data, torn).unwrap();

    let relay = Relay::start(dir.path(), BLOB_CONFIG);
    let (alice, _) = Client::connect(key, relay.tcp.clone(), client::Config::default())
        .await
        .unwrap();
    let mut seen = Vec::new();
    timed(alice.upload_blob(&m, read_cap_hash(&cap), None, &path, 2, |b| seen.push(b)))
        .await
        .unwrap();
    let mark = 5 * u64::from(CHUNK_BYTES);
    assert_eq!(seen[0], mark, "resumed from the relay's mark: {seen:?}");
    assert_eq!(seen.last(), Some(&m.size));
    assert_eq!(
        relay.metric("tern_relay_blob_upload_bytes_total").await,
        (m.size - mark) as f64,
        "only the chunks after the mark were sent"
    );
    assert_eq!(
        download_all(&alice, &m, &cap, &dir.path().join("out")).await,
        bytes
    );
}

fn hex(id: &[u8; 32]) -> String {
    tern_crypto::hex::encode(id)
}

/// Every refusal: strangers, oversize blobs before any byte, tampered and out-of-order
/// chunks (nothing stored past the mark), downloads of unfinished uploads, quotas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_leave_nothing_past_the_mark() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        &format!("{BLOB_CONFIG}max_blob_bytes = 2097152\nquota_bytes = 3145728\n"),
    );
    let alice = registered(&relay.tcp).await;
    let cap = [5u8; 32];

    // A device that never registered here may not upload.
    let eve = stranger(&relay.tcp).await;
    let (small_path, _, small) = blob_file(dir.path(), "small", 1000, 3);
    let e = timed(eve.upload_blob(&small, read_cap_hash(&cap), None, &small_path, 4, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::NotAllowed);

    // Over the size limit: refused in answer to Create, before any byte.
    let (big_path, _, big) = blob_file(dir.path(), "big", 2 * 1024 * 1024 + 1, 4);
    let e = timed(alice.upload_blob(&big, read_cap_hash(&cap), None, &big_path, 4, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::TooLarge);
    assert!(blob_files(&relay).is_empty());

    // A tampered chunk is refused and not stored.
    let (a_path, a_bytes, a) = blob_file(dir.path(), "a", 1536 * 1024, 5);
    let mut raw = Raw::open(&alice).await;
    assert!(matches!(
        raw.create(&a, &cap).await,
        Response::Created { have: 0, .. }
    ));
    raw.chunk(&a, &a_bytes, 0).await;
    raw.acked(1).await;
    let mut tampered = a_bytes.clone();
    tampered[CHUNK_BYTES as usize + 17] ^= 0x40;
    raw.chunk(&a, &tampered, 1).await;
    assert_eq!(raw.error().await, ErrorCode::HashMismatch);
    let data = relay
        .data
        .join("db")
        .join("blobs")
        .join(format!("{}.data", hex(&a.id())));
    let mut raw = Raw::open(&alice).await;
    assert!(matches!(
        raw.create(&a, &cap).await,
        Response::Created { have: 1, .. }
    ));
    assert_eq!(
        std::fs::metadata(&data).unwrap().len(),
        u64::from(CHUNK_BYTES)
    );
    // Chunks come in order from the mark.
    raw.chunk(&a, &a_bytes, 3).await;
    assert_eq!(raw.error().await, ErrorCode::BadIndex);
    assert_eq!(
        std::fs::metadata(&data).unwrap().len(),
        u64::from(CHUNK_BYTES)
    );
    // A chunk with no Create before it.
    let mut raw = Raw::open(&alice).await;
    raw.chunk(&a, &a_bytes, 0).await;
    assert_eq!(raw.error().await, ErrorCode::BadRequest);

    // The unfinished blob cannot be downloaded yet.
    let mut f = tokio::fs::File::create(dir.path().join("x")).await.unwrap();
    let e = timed(eve.download_blob(&a.id(), &cap, 0, None, &mut f, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::Incomplete);

    // 1.5 MiB reserved of a 3 MiB quota: another 1.8 MiB does not fit.
    let (b_path, _, b) = blob_file(dir.path(), "b", 1843 * 1024, 6);
    let e = timed(alice.upload_blob(&b, read_cap_hash(&cap), None, &b_path, 4, |_| {}))
        .await
        .unwrap_err();
    assert_eq!(code(e), ErrorCode::QuotaBytes);

    // The first upload finishes from its mark and downloads whole.
    let mut seen = Vec::new();
    timed(alice.upload_blob(&a, read_cap_hash(&cap), None, &a_path, 4, |x| seen.push(x)))
        .await
        .unwrap();
    assert_eq!(seen[0], u64::from(CHUNK_BYTES));
    assert_eq!(
        download_all(&eve, &a, &cap, &dir.path().join("a.out")).await,
        a_bytes
    );
    assert!(
        relay
            .metric("tern_relay_rejects_total{reason=\"hash_mismatch\"}")
            .await
            >= 1.0
    );
}

/// A blob past its TTL is refused, then collected with its files and quota; so is an
/// upload abandoned half way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_abandoned_blobs_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), &format!("{BLOB_CONFIG}abandon_secs = 1\n"));
    let alice = registered(&relay.tcp).await;
    let cap = [9u8; 32];
    let (path, _, m) = blob_file(dir.path(), "ct", 300_000, 7);
    timed(alice.upload_blob(&m, read_cap_hash(&cap), Some(1), &path, 4, |_| {}))
        .await
        .unwrap();
    let (p2, b2, m2) = blob_file(dir.path(), "partial", 600_000, 8);
    let _ = p2;
    let mut raw = Raw::open(&alice).await;
    assert!(matches!(
        raw.create(&m2, &cap).await,
        Response::Created { .. }
    ));
    raw.chunk(&m2, &b2, 0).await;
    raw.acked(1).await;
    drop(raw);
    assert_eq!(blob_files(&relay).len(), 4);

    let out = dir.path().join("out");
    eventually("the blob to be collected", || async {
        let mut f = tokio::fs::File::create(&out).await.unwrap();
        match timed(alice.download_blob(&m.id(), &cap, 0, None, &mut f, |_| {})).await {
            Ok(_) => None,
            Err(e) => match code(e) {
                ErrorCode::Expired => None,
                ErrorCode::NotFound => Some(()),
                other => panic!("unexpected {other:?}"),
            },
        }
    })
    .await;
    eventually("the files to be deleted", || async {
        blob_files(&relay).is_empty().then_some(())
    })
    .await;
    assert_eq!(relay.metric("tern_relay_blobs").await, 0.0);
    assert_eq!(relay.metric("tern_relay_blob_bytes").await, 0.0);
    assert_eq!(relay.metric("tern_relay_blobs_collected_total").await, 2.0);
}

/// A large upload runs in its own task: a mailbox deposit is answered while it is under way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_are_answered_during_a_large_upload() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), BLOB_CONFIG);
    let alice = registered(&relay.tcp).await;
    let bob = stranger(&relay.tcp).await;
    let (path, _, m) = blob_file(dir.path(), "big", 48 * 1024 * 1024, 9);
    let cap = [1u8; 32];
    let acked = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let upload = {
        let (alice, acked, done, m, path) = (
            alice.clone(),
            acked.clone(),
            done.clone(),
            m.clone(),
            path.clone(),
        );
        tokio::spawn(async move {
            let r = alice
                .upload_blob(&m, read_cap_hash(&cap), None, &path, 8, |b| {
                    acked.store(b, Ordering::SeqCst)
                })
                .await;
            done.store(true, Ordering::SeqCst);
            r
        })
    };
    eventually("the upload to get going", || async {
        (acked.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    let (_, over) = timed(alice.deposit(vec![bob.local_peer_id()], None, b"hi".to_vec()))
        .await
        .unwrap();
    assert!(over.is_empty());
    assert!(
        !done.load(Ordering::SeqCst),
        "the deposit was answered while the upload ran"
    );
    assert_eq!(timed(bob.fetch(0, 10)).await.unwrap().0.len(), 1);
    tokio::time::timeout(WAIT * 4, upload)
        .await
        .expect("upload in time")
        .unwrap()
        .unwrap();
    assert_eq!(acked.load(Ordering::SeqCst), m.size);
}

/// Blob streams beyond `max_streams` are refused with `Unavailable`, and blob operations
/// beyond the per-peer rate with `RateLimited` and a retry hint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_and_operations_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(
        dir.path(),
        "[blobs]\nreserve_bytes = 0\nmax_streams = 1\nops_burst = 3.0\nops_per_sec = 0.001\n",
    );
    let alice = registered(&relay.tcp).await;
    let cap = [2u8; 32];
    let (_, _, m) = blob_file(dir.path(), "ct", 5000, 10);
    let mut held = Raw::open(&alice).await;
    assert!(matches!(
        held.create(&m, &cap).await,
        Response::Created { .. }
    ));
    let mut second = Raw::open(&alice).await;
    second
        .send(Request::Get {
            blob: m.id(),
            read_cap: cap,
            from: 0,
            to: None,
        })
        .await;
    match second.recv().await {
        Response::Error {
            code: ErrorCode::Unavailable,
            retry_after_ms: Some(ms),
            ..
        } => assert!(ms > 0),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    drop(held);
    // Two more operations fit the burst of three (a refused stream costs none)...
    let mut f = tokio::fs::File::create(dir.path().join("x")).await.unwrap();
    timed(async {
        let mut ops = 0;
        while ops < 2 {
            match code(
                alice
                    .download_blob(&[0; 32], &cap, 0, None, &mut f, |_| {})
                    .await
                    .unwrap_err(),
            ) {
                ErrorCode::NotFound => ops += 1,
                // The held stream's slot is freed as its task ends.
                ErrorCode::Unavailable => tokio::task::yield_now().await,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    // ...and the next is over the rate, with a hint of when to retry.
    match timed(alice.download_blob(&[0; 32], &cap, 0, None, &mut f, |_| {}))
        .await
        .unwrap_err()
    {
        BlobError::Rejected {
            code: ErrorCode::RateLimited,
            retry_after_ms: Some(ms),
            ..
        } => assert!(ms > 1000, "{ms}"),
        other => panic!("expected RateLimited, got {other:?}"),
    }
}

/// Many blob streams opened at the same moment (a node sending several files at once, or
/// many peers fetching one): every one is taken and answered, on its first stream (the
/// relay queues new streams; a client would open a dropped one again, which the first round
/// rules out by not doing so), and through the client's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_at_once_are_all_answered() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(dir.path(), BLOB_CONFIG);
    let alice = registered(&relay.tcp).await;
    let cap = [3u8; 32];
    let streams = (0..16).map(|_| alice.open_blob_stream());
    let streams: Vec<_> = timed(futures::future::join_all(streams))
        .await
        .into_iter()
        .map(|s| s.expect("a blob stream opens"))
        .collect();
    let gets = streams.into_iter().enumerate().map(|(i, stream)| {
        let path = dir.path().join(format!("raw-get-{i}"));
        async move {
            let mut f = tokio::fs::File::create(path).await.unwrap();
            tern_relay::blob::download(stream, &[7; 32], &cap, 0, None, &mut f, |_| {}).await
        }
    });
    for got in timed(futures::future::join_all(gets)).await {
        match got {
            Err(BlobError::Rejected {
                code: ErrorCode::NotFound,
                ..
            }) => {}
            other => panic!("a first stream: {other:?}"),
        }
    }
    for round in 0..4 {
        let gets = (0..16).map(|i| {
            let (alice, path) = (&alice, dir.path().join(format!("get-{round}-{i}")));
            async move {
                let mut f = tokio::fs::File::create(path).await.unwrap();
                alice
                    .download_blob(&[7; 32], &cap, 0, None, &mut f, |_| {})
                    .await
            }
        });
        for got in timed(futures::future::join_all(gets)).await {
            match got {
                Err(BlobError::Rejected {
                    code: ErrorCode::NotFound,
                    ..
                }) => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
}
