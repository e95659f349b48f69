//! The `media` suite: a file moved end to end through a real `tern-relay` process, against
//! baselines measured in the same run over the same bytes.
//!
//! - `media.end_to_end`: MB/s of the file (100 MiB of random bytes; 8 MiB in quick mode)
//!   through every step a send and a receive take, one after the other: encrypt to a staging
//!   file, build the manifest, upload through `Client::upload_blob` with the node's window,
//!   download with a second client into a file (synced), verify, decrypt to the destination.
//!   Against `media.baseline_libp2p`, the practical ceiling; `media.end_to_end_vs_tcp` and
//!   `_vs_chacha` give the same figure against the other anchors.
//! - `media.encrypt`, `.manifest`, `.upload`, `.download`, `.verify`, `.decrypt`: MB/s of each
//!   step, against the anchor for its kind of work (cipher, hash, transport).
//! - `media.baseline_libp2p`: the ceiling itself against plain TCP (what Noise and yamux cost).
//! - `media.resume_resent`: bytes sent twice when the relay is killed (SIGKILL) once half the
//!   upload is acknowledged and the upload is resumed after its restart: what the client wrote
//!   over both attempts beyond what an uninterrupted upload of the same file writes, against
//!   the window the node keeps in flight (`UPLOAD_WINDOW_CHUNKS` chunks), which is the most
//!   that should ever be resent.
//!
//! Baselines: `media.baseline_tcp`, the bytes written over one tokio TCP connection on
//! 127.0.0.1 and read in full; `media.baseline_chacha`, a plain ChaCha20-Poly1305 loop over
//! 64 KiB chunks; `media.baseline_sha256`, SHA-256 over the bytes in memory;
//! `media.baseline_libp2p`, one libp2p stream between two in-process swarms on loopback with
//! the node's transport (TCP + Noise + yamux, default configs). Each baseline is the median of
//! three runs (one in quick mode). MB/s are 10^6 bytes of the file per second.
//!
//! Needs the relay binary next to `tern-bench`:
//! `cargo build --release -p tern-cli -p tern-relay --features tern-relay/server --bins`.

use std::{
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};
use tern_relay::rpc::Requests as _;

use anyhow::{Context as _, bail, ensure};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit, Nonce, aead::AeadInOut};
use sha2::{Digest, Sha256};
use tern_crypto::media::MediaKey;
use tern_node::{consts::UPLOAD_WINDOW_CHUNKS, media::stage};
use tern_relay::{
    Multiaddr,
    blob::{self, CHUNK_BYTES, Manifest, read_cap_hash},
    client::{self, Client, Keypair},
    libp2p::{
        StreamProtocol, Swarm, SwarmBuilder,
        futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt},
        multiaddr::Protocol,
        noise,
        swarm::SwarmEvent,
        tcp,
    },
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    task::JoinHandle,
};

use super::{Opts, Report, median};
use crate::support::Relay;

const MIB: usize = 1 << 20;
/// Size of each write (and read buffer) in the transport baselines and of each AEAD call in
/// the cipher baseline.
const PIECE: usize = 64 * 1024;
/// Blob limits out of the way: no disk reserve (the machine's free space is not the subject),
/// blob operations not rate limited.
const BLOB_CONFIG: &str = "[blobs]\nreserve_bytes = 0\nops_per_sec = 1000.0\nops_burst = 1000.0\n";
/// Longest wait for any one step (a 100 MiB transfer on a slow machine included).
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// The raw stream protocol of the libp2p baseline.
const RAW_PROTOCOL: StreamProtocol = StreamProtocol::new("/tern-bench/raw/1");

/// How long each step of the end-to-end path took.
struct Phases {
    encrypt: Duration,
    manifest: Duration,
    upload: Duration,
    download: Duration,
    verify: Duration,
    decrypt: Duration,
}

impl Phases {
    fn total(&self) -> Duration {
        self.encrypt + self.manifest + self.upload + self.download + self.verify + self.decrypt
    }
}

/// What the interrupted upload showed.
struct Resume {
    /// Bytes written over both attempts beyond an uninterrupted upload's.
    resent: u64,
    /// Bytes the relay had acknowledged when it was killed.
    acked_at_kill: u64,
    /// The relay's durable mark after the restart (the resumed upload's first progress).
    mark: u64,
    /// Chunk bytes the restarted relay received (its `tern_relay_blob_upload_bytes_total`).
    received_after_restart: f64,
}

pub(crate) fn run(opts: &Opts, report: &mut Report) -> anyhow::Result<()> {
    let size = opts.size(100 * MIB, 8 * MIB);
    let rounds = opts.size(3, 1);
    let dir = tempfile::tempdir()?;
    let plain = pseudo_random(size, 0x7e44);
    let original = dir.path().join("original.bin");
    std::fs::write(&original, &plain)?;
    let sha: [u8; 32] = Sha256::digest(&plain).into();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mb = size as f64 / 1e6;
    let rate = |d: Duration| mb / d.as_secs_f64().max(1e-9);

    let mut tcp = Vec::with_capacity(rounds);
    let mut chacha = Vec::with_capacity(rounds);
    let mut sha256 = Vec::with_capacity(rounds);
    let mut p2p = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        tcp.push(rt.block_on(tcp_baseline(&plain))?);
        chacha.push(chacha_baseline(&plain));
        sha256.push(sha256_baseline(&plain));
        p2p.push(rt.block_on(libp2p_baseline(&plain))?);
    }
    let tcp = rate(median(&mut tcp));
    let chacha = rate(median(&mut chacha));
    let sha256 = rate(median(&mut sha256));
    let p2p = rate(median(&mut p2p));

    let relay = Relay::start(&dir.path().join("relay"), BLOB_CONFIG)?;
    let addr: Multiaddr = relay.addr.parse()?;
    let phases = rt.block_on(end_to_end(&addr, dir.path(), &original, &sha))?;
    let resume = rt.block_on(resume(&relay, dir.path(), size))?;
    drop(relay);

    let e2e = rate(phases.total());
    report.compare(
        "media.end_to_end",
        e2e,
        "MB/s",
        "media.baseline_libp2p",
        p2p,
    );
    report.compare(
        "media.end_to_end_vs_tcp",
        e2e,
        "MB/s",
        "media.baseline_tcp",
        tcp,
    );
    report.compare(
        "media.end_to_end_vs_chacha",
        e2e,
        "MB/s",
        "media.baseline_chacha",
        chacha,
    );
    for (name, took, baseline, base) in [
        ("encrypt", phases.encrypt, "media.baseline_chacha", chacha),
        ("manifest", phases.manifest, "media.baseline_sha256", sha256),
        ("upload", phases.upload, "media.baseline_libp2p", p2p),
        ("download", phases.download, "media.baseline_libp2p", p2p),
        ("verify", phases.verify, "media.baseline_chacha", chacha),
        ("decrypt", phases.decrypt, "media.baseline_chacha", chacha),
    ] {
        report.compare(&format!("media.{name}"), rate(took), "MB/s", baseline, base);
    }
    report.compare(
        "media.baseline_libp2p",
        p2p,
        "MB/s",
        "media.baseline_tcp",
        tcp,
    );
    eprintln!(
        "  resume: relay killed with {} bytes acknowledged; it resumed from its mark at {} \
         and received {} chunk bytes after the restart",
        resume.acked_at_kill, resume.mark, resume.received_after_restart
    );
    report.compare(
        "media.resume_resent",
        resume.resent as f64,
        "bytes",
        "upload window (32 x 256 KiB)",
        f64::from(UPLOAD_WINDOW_CHUNKS) * f64::from(CHUNK_BYTES),
    );
    Ok(())
}

/// Pseudo-random bytes (xorshift64*): as incompressible as a video for every layer involved,
/// and cheaper to make than real randomness.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The bytes over one TCP connection on 127.0.0.1, from the first write until the reader
/// has them all.
async fn tcp_baseline(bytes: &[u8]) -> anyhow::Result<Duration> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let expect = bytes.len();
    let reader = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        let mut buf = vec![0u8; PIECE];
        let mut got = 0;
        while got < expect {
            match s.read(&mut buf).await? {
                0 => bail!("connection closed after {got} bytes"),
                n => got += n,
            }
        }
        anyhow::Ok(Instant::now())
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let start = Instant::now();
    for piece in bytes.chunks(PIECE) {
        s.write_all(piece).await?;
    }
    s.flush().await?;
    let end = tokio::time::timeout(STEP_TIMEOUT, reader).await???;
    Ok(end - start)
}

/// ChaCha20-Poly1305 over the bytes in 64 KiB chunks, each copied into a buffer, sealed in
/// place and copied out with its tag, as any streaming cipher must.
fn chacha_baseline(bytes: &[u8]) -> Duration {
    let aead = ChaCha20Poly1305::new(&[0x42u8; 32].into());
    let mut buf = Vec::with_capacity(PIECE);
    let mut sink = Vec::with_capacity(bytes.len() + bytes.len() / PIECE * 16 + 16);
    let start = Instant::now();
    for (i, chunk) in bytes.chunks(PIECE).enumerate() {
        buf.clear();
        buf.extend_from_slice(chunk);
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&(i as u64).to_be_bytes());
        if let Ok(tag) =
            aead.encrypt_inout_detached(&Nonce::from(nonce), b"", buf.as_mut_slice().into())
        {
            sink.extend_from_slice(&buf);
            sink.extend_from_slice(&tag);
        }
    }
    let took = start.elapsed();
    std::hint::black_box(sink);
    took
}

/// SHA-256 over the bytes in memory (what a manifest's chunk hashes cost at best).
fn sha256_baseline(bytes: &[u8]) -> Duration {
    let start = Instant::now();
    for chunk in bytes.chunks(CHUNK_BYTES as usize) {
        std::hint::black_box(Sha256::digest(chunk));
    }
    start.elapsed()
}

/// Drives a swarm in the background until dropped.
struct Running(JoinHandle<()>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn raw_swarm() -> anyhow::Result<Swarm<libp2p_stream::Behaviour>> {
    Ok(SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            tern_relay::yamux_config,
        )?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// The bytes on one libp2p stream between two in-process swarms on loopback, with the
/// transport the node and relay build: from opening the stream (on an established
/// connection, as an upload opens its stream) until the reader has them all.
async fn libp2p_baseline(bytes: &[u8]) -> anyhow::Result<Duration> {
    let mut receiver = raw_swarm()?;
    let receiver_id = *receiver.local_peer_id();
    let mut incoming = receiver
        .behaviour()
        .new_control()
        .accept(RAW_PROTOCOL)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    receiver.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let listen = tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            if let SwarmEvent::NewListenAddr { address, .. } = receiver.select_next_some().await {
                break address;
            }
        }
    })
    .await
    .context("the baseline receiver did not listen")?;
    let _receiver = Running(tokio::spawn(async move {
        loop {
            receiver.select_next_some().await;
        }
    }));
    let mut sender = raw_swarm()?;
    let mut control = sender.behaviour().new_control();
    sender.dial(listen.with(Protocol::P2p(receiver_id)))?;
    tokio::time::timeout(STEP_TIMEOUT, async {
        loop {
            match sender.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => return Ok(()),
                SwarmEvent::OutgoingConnectionError { error, .. } => bail!("dial: {error}"),
                _ => {}
            }
        }
    })
    .await
    .context("the baseline connection timed out")??;
    let _sender = Running(tokio::spawn(async move {
        loop {
            sender.select_next_some().await;
        }
    }));

    let expect = bytes.len();
    let reader = tokio::spawn(async move {
        let (_, mut s) = incoming.next().await.context("no inbound stream")?;
        let mut buf = vec![0u8; PIECE];
        let mut got = 0;
        while got < expect {
            match s.read(&mut buf).await? {
                0 => bail!("stream closed after {got} bytes"),
                n => got += n,
            }
        }
        anyhow::Ok(Instant::now())
    });
    let start = Instant::now();
    let mut s = control
        .open_stream(receiver_id, RAW_PROTOCOL)
        .await
        .map_err(|e| anyhow::anyhow!("open stream: {e}"))?;
    for piece in bytes.chunks(PIECE) {
        s.write_all(piece).await?;
    }
    s.flush().await?;
    let end = tokio::time::timeout(STEP_TIMEOUT, reader).await???;
    let _ = s.close().await;
    Ok(end - start)
}

/// A device registered at the relay (device list and prekeys published), which is what
/// allows it to upload; and its key, to connect again.
async fn registered(addr: &Multiaddr) -> anyhow::Result<(Client, Keypair)> {
    use tern_crypto::{DeviceKeys, DeviceList, IdentityKey, prekey::PrekeyBundle};
    let id = IdentityKey::generate()?;
    let mut device = DeviceKeys::generate()?;
    let cert = device.certify(&id, "bench", 1)?;
    let list = DeviceList::first(&id, cert.clone(), 1).sign(&id)?;
    let mut secret = *device.network_secret();
    let key = Keypair::ed25519_from_bytes(&mut secret)?;
    let (c, _) = Client::connect(key.clone(), addr.clone(), client::Config::default()).await?;
    c.publish_device_list(list.as_bytes().to_vec()).await?;
    let bundle = PrekeyBundle::generate(&mut device, cert, 1)?;
    c.publish_prekeys(bundle.to_bytes()?).await?;
    Ok((c, key))
}

async fn step<T, E>(what: &str, f: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    tokio::time::timeout(STEP_TIMEOUT, f)
        .await
        .with_context(|| format!("{what} timed out"))?
        .with_context(|| format!("{what} failed"))
}

/// Runs blocking file work (encrypting, hashing, decrypting) off the runtime, as the node
/// does, and times it.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<(T, Duration)> {
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let v = f()?;
        Ok((v, start.elapsed()))
    })
    .await?
}

fn sha256_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(h.finalize().into()),
            n => h.update(&buf[..n]),
        }
    }
}

/// The whole path of a file, timed step by step; the result is checked against the original.
async fn end_to_end(
    relay: &Multiaddr,
    dir: &Path,
    original: &Path,
    sha: &[u8; 32],
) -> anyhow::Result<Phases> {
    let key = Arc::new(MediaKey::generate()?);
    let staged_path = dir.join("staged.blob");
    let downloaded = dir.join("downloaded.blob");
    let saved = dir.join("saved.bin");
    // Connections are set up before the clock starts: a node keeps its relay connection.
    let (uploader, _) = registered(relay).await?;
    let (downloader, _) = Client::connect(
        Keypair::generate_ed25519(),
        relay.clone(),
        client::Config::default(),
    )
    .await?;
    let read_cap = *MediaKey::generate()?.expose();

    let (staged, encrypt) = {
        let (key, from, to) = (key.clone(), original.to_owned(), staged_path.clone());
        blocking(move || {
            let input = std::fs::File::open(&from)?;
            Ok(stage::encrypt_file(&key, input, &to, u64::MAX)?)
        })
        .await?
    };
    ensure!(&staged.sha256 == sha, "the staged plaintext hash differs");
    let (manifest, manifest_took) = {
        let path = staged_path.clone();
        blocking(move || Ok(Manifest::of_file(&path, CHUNK_BYTES)?)).await?
    };
    let start = Instant::now();
    step(
        "upload",
        uploader.upload_blob(
            &manifest,
            read_cap_hash(&read_cap),
            None,
            &staged_path,
            UPLOAD_WINDOW_CHUNKS,
            |_| {},
        ),
    )
    .await?;
    let upload = start.elapsed();
    let start = Instant::now();
    let mut out = tokio::fs::File::create(&downloaded).await?;
    step(
        "download",
        downloader.download_blob(&manifest.id(), &read_cap, 0, None, &mut out, |_| {}),
    )
    .await?;
    out.flush().await?;
    out.sync_all().await?;
    drop(out);
    let download = start.elapsed();
    let ((), verify) = {
        let (key, path) = (key.clone(), downloaded.clone());
        let (sha, size) = (staged.sha256, staged.size);
        blocking(move || Ok(stage::verify(&key, &path, &sha, size)?)).await?
    };
    let ((), decrypt) = {
        let (key, path, to) = (key.clone(), downloaded.clone(), saved.clone());
        let (sha, size) = (staged.sha256, staged.size);
        blocking(move || Ok(stage::decrypt_to(&key, &path, &to, &sha, size)?)).await?
    };
    ensure!(
        &sha256_file(&saved)? == sha,
        "the saved file differs from the original"
    );
    Ok(Phases {
        encrypt,
        manifest: manifest_took,
        upload,
        download,
        verify,
        decrypt,
    })
}

/// A blob stream that counts the bytes written to it.
struct Counting<S> {
    inner: S,
    written: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// Uploads `file` on a stream of `client`'s that counts what is written; `progress` as
/// [`blob::upload`]'s.
async fn counted_upload(
    client: &Client,
    manifest: &Manifest,
    read_cap: &[u8; 32],
    file: &Path,
    written: Arc<AtomicU64>,
    progress: impl FnMut(u64),
) -> Result<blob::Uploaded, blob::BlobError> {
    let inner = client.open_blob_stream().await?;
    let stream = Counting { inner, written };
    blob::upload(
        stream,
        manifest,
        read_cap_hash(read_cap),
        None,
        file,
        UPLOAD_WINDOW_CHUNKS,
        progress,
    )
    .await
}

/// An upload interrupted by a SIGKILL of the relay once half of it is acknowledged, resumed
/// after the restart. `clean_relay` takes the uninterrupted upload that sets the reference.
async fn resume(clean_relay: &Relay, dir: &Path, size: usize) -> anyhow::Result<Resume> {
    // The blob's bytes are opaque to the relay: random bytes serve as ciphertext.
    let file: PathBuf = dir.join("resume.blob");
    std::fs::write(&file, pseudo_random(size, 0x5e5e))?;
    let manifest = Manifest::of_file(&file, CHUNK_BYTES)?;
    let read_cap = *MediaKey::generate()?.expose();

    let clean = Arc::new(AtomicU64::new(0));
    let (other, _) = registered(&clean_relay.addr.parse()?).await?;
    step(
        "reference upload",
        counted_upload(&other, &manifest, &read_cap, &file, clean.clone(), |_| {}),
    )
    .await?;
    drop(other);

    let data = dir.join("resume-relay");
    let mut relay = Relay::start(&data, BLOB_CONFIG)?;
    let (client, key) = registered(&relay.addr.parse()?).await?;
    let sent_first = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let (half_tx, half_rx) = tokio::sync::oneshot::channel();
    let upload = {
        let (manifest, file, sent, acked) = (
            manifest.clone(),
            file.clone(),
            sent_first.clone(),
            acked.clone(),
        );
        let mut half = Some(half_tx);
        tokio::spawn(async move {
            let total = manifest.size;
            counted_upload(&client, &manifest, &read_cap, &file, sent, |b| {
                acked.store(b, Ordering::Relaxed);
                if b * 2 > total
                    && let Some(tx) = half.take()
                {
                    let _ = tx.send(());
                }
            })
            .await
        })
    };
    tokio::time::timeout(STEP_TIMEOUT, half_rx)
        .await
        .context("the upload did not pass half way in time")?
        .context("the upload ended before half way")?;
    relay.kill9();
    let cut = tokio::time::timeout(STEP_TIMEOUT, upload)
        .await
        .context("the upload did not notice the relay's death")??;
    if cut.is_ok() {
        eprintln!("  resume: the upload completed before the relay died; nothing to resume");
    }
    // Acknowledgements the relay sent before it died count even if they arrived after.
    let acked_at_kill = acked.load(Ordering::Relaxed);
    drop(relay);

    let relay = Relay::start_with_metrics(&data, BLOB_CONFIG)?;
    let (client, _) = Client::connect(key, relay.addr.parse()?, client::Config::default()).await?;
    let sent_second = Arc::new(AtomicU64::new(0));
    let mut mark = None;
    step(
        "resumed upload",
        counted_upload(
            &client,
            &manifest,
            &read_cap,
            &file,
            sent_second.clone(),
            |b| {
                mark.get_or_insert(b);
            },
        ),
    )
    .await?;
    let mark = mark.context("the resumed upload reported no progress")?;
    if mark < acked_at_kill {
        bail!("the relay acknowledged {acked_at_kill} bytes but resumed from {mark}");
    }
    let received_after_restart = relay.metric("tern_relay_blob_upload_bytes_total")?;
    let sent = sent_first.load(Ordering::Relaxed) + sent_second.load(Ordering::Relaxed);
    Ok(Resume {
        resent: sent.saturating_sub(clean.load(Ordering::Relaxed)),
        acked_at_kill,
        mark,
        received_after_restart,
    })
}
