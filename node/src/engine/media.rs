//! Files and images: sending (stage once, upload, then the message), receiving (download,
//! verify), saving a decrypted copy, and serving this device's own files to peers.
//!
//! Every byte moves in tasks off the engine; they report back as [`MediaEvent`]s. A transfer
//! is recorded in the store before its first byte moves (`tern_store::Transfer`), so a
//! restart resumes it: an upload from the relay's acknowledged mark (create is idempotent), a
//! download from the whole chunks already on disk. An upload's message is sent only once the
//! relay holds and has checked the whole blob, so no recipient is ever pointed at a partial
//! file.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use futures::StreamExt;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use serde_bytes::{ByteArray, ByteBuf};
use tern_crypto::media::MediaKey;
use tern_relay::blob::{self, BlobError, BlobId, BlobSource, Manifest};
use tern_relay::wire::ErrorCode;
use tern_store::{Direction, MessageId, Transfer, TransferState};
use tokio::sync::mpsc;

use super::{Engine, relay_peer};
use crate::{
    consts::{
        AUTO_DOWNLOAD_BYTES, MAX_TEXT_BYTES, MEDIA_EVENT_QUEUE, MEDIA_PROGRESS_INTERVAL,
        MEDIA_SERVE_STREAMS, MEDIA_SERVE_TIMEOUT, MEDIA_STALL, MEDIA_STREAM_OPEN_TIMEOUT,
        RETRY_MAX, UPLOAD_WINDOW_CHUNKS,
    },
    error::NodeError,
    home::now_ms,
    media::{
        MAX_FILE_BYTES, MediaRef, StoredMedia, hex, image, safe_name,
        stage::{self, StageError},
    },
    types::{Event, TransferInfo},
};

/// Where an upload's message goes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Target {
    /// A contact (user id).
    Direct(String),
    /// A group (group id).
    Group(String),
}

/// An upload's staged file: the reference (relays and expiry filled in once uploaded) and
/// the blob's manifest.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct StagedUp {
    media: MediaRef,
    manifest: Manifest,
}

/// What an upload needs to go on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct UpData {
    target: Target,
    source: String,
    caption: String,
    original: bool,
    staged: Option<StagedUp>,
}

/// What a download needs to go on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct DownData {
    media: MediaRef,
    sender_device: String,
    save_to: Option<String>,
}

/// A transfer row's data, as the node encodes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum TransferData {
    Up(UpData),
    Down(DownData),
}

impl TransferData {
    fn encode(&self) -> Result<Vec<u8>, NodeError> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out)
            .map_err(|e| NodeError::Store(format!("encoding a transfer: {e}")))?;
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, NodeError> {
        ciborium::from_reader(bytes).map_err(|e| NodeError::Store(format!("a transfer: {e}")))
    }

    fn name(&self) -> String {
        match self {
            TransferData::Up(u) => match &u.staged {
                Some(s) => s.media.name.clone(),
                None => safe_name(&u.source),
            },
            TransferData::Down(d) => safe_name(&d.media.name),
        }
    }
}

/// What a transfer task reports.
#[derive(Debug)]
pub(crate) enum MediaEvent {
    /// An upload's file is encrypted and staged (or could not be).
    Staged {
        id: MessageId,
        result: Result<Box<StagedUp>, (&'static str, String)>,
    },
    /// Bytes moved.
    Progress {
        id: MessageId,
        state: &'static str,
        bytes: u64,
        total: u64,
    },
    /// The relay holds and has checked the whole blob.
    Uploaded {
        id: MessageId,
        relay: String,
        expires_at_ms: u64,
    },
    /// The file is on disk and verified (and saved where asked).
    Downloaded {
        id: MessageId,
        saved: Option<String>,
    },
    /// It failed; `retry`: it may work later (the network, a busy relay).
    Failed {
        id: MessageId,
        code: &'static str,
        message: String,
        retry: bool,
    },
}

/// A blob this device serves to peers (its own sent files).
#[derive(Clone, Debug)]
struct ServedBlob {
    manifest: Manifest,
    read_cap_hash: [u8; 32],
    expires_at_ms: u64,
    path: PathBuf,
}

/// This device's own blobs, by id, for direct downloads by recipients.
#[derive(Clone, Debug, Default)]
pub(crate) struct Served(Arc<Mutex<HashMap<BlobId, ServedBlob>>>);

impl BlobSource for Served {
    fn open(
        &self,
        blob: &BlobId,
        read_cap: &[u8; 32],
    ) -> Result<(Manifest, u64, PathBuf), (ErrorCode, String)> {
        let map = self
            .0
            .lock()
            .map_err(|_| (ErrorCode::Internal, "unavailable".to_owned()))?;
        match map.get(blob) {
            Some(b) if blob::read_cap_matches(read_cap, &b.read_cap_hash) => {
                Ok((b.manifest.clone(), b.expires_at_ms, b.path.clone()))
            }
            _ => Err((ErrorCode::NotFound, "no such file".to_owned())),
        }
    }
}

/// The engine's media state.
#[derive(Debug)]
pub(crate) struct Media {
    dir: PathBuf,
    tx: mpsc::Sender<MediaEvent>,
    rx: Option<mpsc::Receiver<MediaEvent>>,
    running: HashMap<MessageId, tokio::task::AbortHandle>,
    /// Paused transfers, and when to try again.
    retry: HashMap<MessageId, Instant>,
    /// Failures in a row, for the backoff (forgotten when the transfer finishes).
    attempts: HashMap<MessageId, u32>,
    /// The latest progress of running transfers: state and bytes (kept in memory only; a
    /// restart learns the real mark from the relay or the file on disk).
    progress: HashMap<MessageId, (&'static str, u64)>,
    served: Served,
    auto_download: u64,
}

impl Media {
    /// The media state of a node whose home is `home`.
    pub(crate) fn new(home: &Path) -> Self {
        let (tx, rx) = mpsc::channel(MEDIA_EVENT_QUEUE);
        Media {
            dir: home.join("media"),
            tx,
            rx: Some(rx),
            running: HashMap::new(),
            retry: HashMap::new(),
            attempts: HashMap::new(),
            progress: HashMap::new(),
            served: Served::default(),
            auto_download: AUTO_DOWNLOAD_BYTES,
        }
    }

    /// The receiver of task reports (taken once, by the engine's loop).
    pub(crate) fn take_events(&mut self) -> Option<mpsc::Receiver<MediaEvent>> {
        self.rx.take()
    }

    fn blob_path(&self, m: &MediaRef) -> PathBuf {
        self.dir.join(m.blob_hex())
    }
}

fn info(t: &Transfer, data: &TransferData, state: &str, code: Option<String>) -> TransferInfo {
    TransferInfo {
        id: t.id.to_string(),
        direction: match t.direction {
            Direction::Up => "up",
            Direction::Down => "down",
        }
        .into(),
        state: state.into(),
        bytes: t.bytes_done,
        total: t.bytes_total,
        name: data.name(),
        code,
        path: match data {
            TransferData::Down(d) => d.save_to.clone(),
            TransferData::Up(_) => None,
        },
    }
}

fn state_name(t: &Transfer) -> &'static str {
    match t.state {
        TransferState::Queued => "queued",
        TransferState::Active => match t.direction {
            Direction::Up => "uploading",
            Direction::Down => "downloading",
        },
        TransferState::Done => "done",
        TransferState::Failed => "failed",
    }
}

/// How a blob error is reported, and whether trying again may help.
fn classify(e: &BlobError) -> (&'static str, bool) {
    match e {
        BlobError::Rejected { code, .. } => match code {
            ErrorCode::TooLarge => ("too_large", false),
            ErrorCode::QuotaBytes | ErrorCode::QuotaCount => ("over_quota", false),
            ErrorCode::StorageFull => ("storage_full", true),
            ErrorCode::RateLimited => ("rate_limited", true),
            ErrorCode::Unavailable | ErrorCode::Internal => ("unavailable", true),
            ErrorCode::NotAllowed => ("unauthorised", false),
            ErrorCode::NotFound => ("not_found", false),
            ErrorCode::Expired => ("expired", false),
            ErrorCode::Incomplete => ("incomplete", true),
            ErrorCode::HashMismatch | ErrorCode::BadIndex => ("hash_mismatch", false),
            _ => ("refused", false),
        },
        BlobError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull => ("disk_full", true),
        BlobError::Io(_) | BlobError::Protocol(_) => ("network", true),
        BlobError::ChunkMismatch { .. } | BlobError::ManifestMismatch => ("tampered", false),
        _ => ("network", true),
    }
}

fn stage_failure(e: StageError) -> (&'static str, String) {
    (e.code(), e.to_string())
}

/// Reads, prepares (images), encrypts and stages a file to send; blocking.
fn stage_blocking(
    dir: &Path,
    id: &MessageId,
    source: &Path,
    original: bool,
) -> Result<StagedUp, (&'static str, String)> {
    let meta = std::fs::metadata(source).map_err(|e| {
        (
            "not_found",
            format!("cannot read {}: {e}", source.display()),
        )
    })?;
    if !meta.is_file() {
        return Err(("not_a_file", format!("{} is not a file", source.display())));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err((
            "too_large",
            format!(
                "{} is {} bytes; files are at most {MAX_FILE_BYTES} bytes (100 MiB)",
                source.display(),
                meta.len()
            ),
        ));
    }
    let mut name = safe_name(&source.to_string_lossy());
    let io = |e: std::io::Error| ("io", format!("reading {}: {e}", source.display()));
    let mut head = [0u8; 64];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(source).map_err(io)?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]).map_err(io)? {
                0 => break,
                k => n += k,
            }
        }
        n
    };
    let key = MediaKey::generate().map_err(|e| ("io", e.to_string()))?;
    let staging = dir.join(format!("{id}.staging"));
    let mut media_fields = (
        "application/octet-stream".to_owned(),
        None,
        None,
        None,
        None,
    );
    let staged = match image::sniff(&head[..n]) {
        Some(_) => {
            let bytes = std::fs::read(source).map_err(io)?;
            let p = image::prepare(&bytes, original)
                .map_err(|e| ("bad_image", format!("{}: {e}", source.display())))?;
            drop(bytes);
            let ext = match p.mime {
                "image/png" => "png",
                "image/gif" => "gif",
                _ => "jpg",
            };
            let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
            name = safe_name(&format!("{stem}.{ext}"));
            media_fields = (
                p.mime.to_owned(),
                Some(p.width),
                Some(p.height),
                Some(ByteBuf::from(p.thumbnail)),
                Some(ByteBuf::from(p.thumbhash)),
            );
            stage::encrypt_file(&key, &p.bytes[..], &staging, MAX_FILE_BYTES)
        }
        None => {
            let f = std::fs::File::open(source).map_err(io)?;
            stage::encrypt_file(&key, f, &staging, MAX_FILE_BYTES)
        }
    }
    .map_err(stage_failure)?;
    let manifest = Manifest::of_file(&staging, blob::CHUNK_BYTES)
        .map_err(|e| ("io", format!("hashing the staged file: {e}")))?;
    let blob_id = manifest.id();
    let path = dir.join(hex(&blob_id));
    std::fs::rename(&staging, &path).map_err(|e| ("io", format!("staging: {e}")))?;
    let mut read_cap = [0u8; 32];
    getrandom::fill(&mut read_cap).map_err(|e| ("io", e.to_string()))?;
    let (mime, width, height, thumbnail, thumbhash) = media_fields;
    Ok(StagedUp {
        media: MediaRef {
            blob: ByteArray::new(blob_id),
            key: ByteArray::new(*key.expose()),
            read_cap: ByteArray::new(read_cap),
            sha256: ByteArray::new(staged.sha256),
            size: staged.size,
            blob_size: staged.blob_size,
            chunk_size: blob::CHUNK_BYTES,
            mime,
            name,
            width,
            height,
            thumbnail,
            thumbhash,
            relays: Vec::new(),
            expires_at_ms: 0,
        },
        manifest,
    })
}

/// Throttles progress reports to one per [`MEDIA_PROGRESS_INTERVAL`] (and the last).
struct Reporter {
    tx: mpsc::Sender<MediaEvent>,
    id: MessageId,
    state: &'static str,
    total: u64,
    last: Option<Instant>,
}

impl Reporter {
    fn report(&mut self, bytes: u64) {
        let due = self
            .last
            .is_none_or(|l| l.elapsed() >= MEDIA_PROGRESS_INTERVAL);
        if due || bytes >= self.total {
            self.last = Some(Instant::now());
            let _ = self.tx.try_send(MediaEvent::Progress {
                id: self.id,
                state: self.state,
                bytes,
                total: self.total,
            });
        }
    }
}

/// Milliseconds since the Unix epoch, for the stall guard.
fn now_u64() -> u64 {
    u64::try_from(now_ms()).unwrap_or(0)
}

/// Runs a transfer, failing it (as a network error, so it is retried) when `alive` (the
/// time of its last progress, ms) stops moving for [`MEDIA_STALL`]: a peer that keeps the
/// connection open but sends nothing must not hold a transfer forever.
async fn unless_stalled<T>(
    fut: impl std::future::Future<Output = Result<T, BlobError>>,
    alive: &std::sync::atomic::AtomicU64,
) -> Result<T, BlobError> {
    use std::sync::atomic::Ordering::Relaxed;
    tokio::pin!(fut);
    let mut check = tokio::time::interval(MEDIA_STALL / 4);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = check.tick() => {
                let idle = now_u64().saturating_sub(alive.load(Relaxed));
                if idle > u64::try_from(MEDIA_STALL.as_millis()).unwrap_or(u64::MAX) {
                    return Err(BlobError::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no progress for {} s", MEDIA_STALL.as_secs()),
                    )));
                }
            }
        }
    }
}

async fn open_stream(
    ctl: &mut libp2p_stream::Control,
    peer: PeerId,
) -> Result<libp2p::Stream, BlobError> {
    match tokio::time::timeout(
        MEDIA_STREAM_OPEN_TIMEOUT,
        ctl.open_stream(peer, blob::PROTOCOL),
    )
    .await
    {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(BlobError::Io(std::io::Error::other(e.to_string()))),
        Err(_) => Err(BlobError::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "opening a stream timed out",
        ))),
    }
}

async fn run_upload(
    mut ctl: libp2p_stream::Control,
    relay: Multiaddr,
    staged: StagedUp,
    path: PathBuf,
    id: MessageId,
    tx: mpsc::Sender<MediaEvent>,
) {
    let total = staged.manifest.size;
    let mut reporter = Reporter {
        tx: tx.clone(),
        id,
        state: "uploading",
        total,
        last: None,
    };
    let result = async {
        let peer = relay_peer(&relay)
            .ok_or_else(|| BlobError::Protocol("relay address without a peer id".into()))?;
        let stream = open_stream(&mut ctl, peer).await?;
        tracing::debug!(transfer = %id, "upload stream open");
        let alive = std::sync::atomic::AtomicU64::new(now_u64());
        unless_stalled(
            blob::upload(
                stream,
                &staged.manifest,
                blob::read_cap_hash(staged.media.read_cap.as_ref()),
                None,
                &path,
                UPLOAD_WINDOW_CHUNKS,
                |acked| {
                    alive.store(now_u64(), std::sync::atomic::Ordering::Relaxed);
                    reporter.report(acked)
                },
            ),
            &alive,
        )
        .await
    }
    .await;
    let ev = match result {
        Ok(up) => MediaEvent::Uploaded {
            id,
            relay: relay.to_string(),
            expires_at_ms: up.expires_at_ms,
        },
        Err(e) => {
            let (code, retry) = classify(&e);
            MediaEvent::Failed {
                id,
                code,
                message: e.to_string(),
                retry,
            }
        }
    };
    let _ = tx.send(ev).await;
}

/// Downloads into `<blob>.part` from the first source that works, going on from another
/// source after a failure, then verifies and moves it to `<blob>`.
async fn fetch_blob(
    ctl: &mut libp2p_stream::Control,
    sources: &[PeerId],
    media: &MediaRef,
    path: &Path,
    reporter: &mut Reporter,
) -> Result<(), (&'static str, String, bool)> {
    let part = path.with_extension("part");
    let io = |e: std::io::Error| -> (&'static str, String, bool) {
        let code = if e.kind() == std::io::ErrorKind::StorageFull {
            "disk_full"
        } else {
            "io"
        };
        (code, format!("writing the download: {e}"), true)
    };
    let mut file = tokio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&part)
        .await
        .map_err(io)?;
    let chunk = u64::from(media.chunk_size);
    let chunks = u32::try_from(media.chunks()).unwrap_or(u32::MAX);
    let mut last: Option<BlobError> = None;
    for peer in sources {
        // Only whole chunks count: a torn tail from a crash is cut off and fetched again.
        let len = file
            .metadata()
            .await
            .map_err(io)?
            .len()
            .min(media.blob_size);
        let have = u32::try_from(len / chunk).unwrap_or(u32::MAX);
        if have >= chunks && len == media.blob_size {
            break;
        }
        file.set_len(u64::from(have) * chunk).await.map_err(io)?;
        use tokio::io::AsyncSeekExt;
        file.seek(std::io::SeekFrom::Start(u64::from(have) * chunk))
            .await
            .map_err(io)?;
        let base = u64::from(have) * chunk;
        reporter.report(base);
        let got = async {
            let stream = open_stream(ctl, *peer).await?;
            let alive = std::sync::atomic::AtomicU64::new(now_u64());
            unless_stalled(
                blob::download(
                    stream,
                    &media.blob.into_array(),
                    media.read_cap.as_ref(),
                    have,
                    None,
                    &mut file,
                    |n| {
                        alive.store(now_u64(), std::sync::atomic::Ordering::Relaxed);
                        reporter.report(base + n)
                    },
                ),
                &alive,
            )
            .await
        }
        .await;
        match got {
            Ok(info) if info.manifest.size == media.blob_size => {
                last = None;
                break;
            }
            Ok(_) => {
                last = Some(BlobError::ManifestMismatch);
            }
            Err(e) => {
                tracing::info!(%peer, "download stopped, trying the next source: {e}");
                last = Some(e);
            }
        }
    }
    use tokio::io::AsyncWriteExt;
    file.flush().await.map_err(io)?;
    file.sync_all().await.map_err(io)?;
    let len = file.metadata().await.map_err(io)?.len();
    drop(file);
    if len != media.blob_size {
        let e = last.unwrap_or_else(|| BlobError::Protocol("no source could be reached".into()));
        let (code, retry) = classify(&e);
        return Err((code, e.to_string(), retry));
    }
    reporter.state = "verifying";
    reporter.last = None;
    reporter.report(len);
    let key = MediaKey::from_bytes(media.key.into_array());
    let (sha, size) = (media.sha256.into_array(), media.size);
    let part2 = part.clone();
    let checked =
        tokio::task::spawn_blocking(move || stage::verify(&key, &part2, &sha, size)).await;
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            // Nothing partial is kept: a file that does not open is dropped whole.
            let _ = tokio::fs::remove_file(&part).await;
            return Err((e.code(), e.to_string(), false));
        }
        Err(e) => return Err(("io", e.to_string(), true)),
    }
    tokio::fs::rename(&part, path)
        .await
        .map_err(|e| ("io", e.to_string(), true))?;
    Ok(())
}

/// Decrypts a verified blob to `to`.
async fn save_copy(media: &MediaRef, path: &Path, to: &Path) -> Result<(), (&'static str, String)> {
    let key = MediaKey::from_bytes(media.key.into_array());
    let (sha, size) = (media.sha256.into_array(), media.size);
    let (path, to) = (path.to_owned(), to.to_owned());
    match tokio::task::spawn_blocking(move || stage::decrypt_to(&key, &path, &to, &sha, size)).await
    {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(stage_failure(e)),
        Err(e) => Err(("io", e.to_string())),
    }
}

#[allow(clippy::too_many_arguments)]
async fn run_download(
    mut ctl: libp2p_stream::Control,
    net: crate::net::Client,
    sender: Option<PeerId>,
    media: MediaRef,
    path: PathBuf,
    save_to: Option<PathBuf>,
    id: MessageId,
    tx: mpsc::Sender<MediaEvent>,
) {
    let mut reporter = Reporter {
        tx: tx.clone(),
        id,
        state: "downloading",
        total: media.blob_size,
        last: None,
    };
    let result = async {
        if !path.exists() {
            // The sender first, when it is directly connected; then the relay.
            let mut sources = Vec::new();
            if let Some(s) = sender
                && net
                    .peers()
                    .await
                    .iter()
                    .any(|p| p.peer == s && p.direct > 0)
            {
                sources.push(s);
            }
            for addr in media
                .relays
                .iter()
                .filter_map(|a| a.parse::<Multiaddr>().ok())
            {
                if let Some(peer) = relay_peer(&addr) {
                    let _ = net.add_relay(addr, false).await;
                    sources.push(peer);
                }
            }
            fetch_blob(&mut ctl, &sources, &media, &path, &mut reporter).await?;
        }
        if let Some(to) = &save_to {
            save_copy(&media, &path, to)
                .await
                .map_err(|(c, m)| (c, m, false))?;
        }
        Ok::<_, (&'static str, String, bool)>(())
    }
    .await;
    let ev = match result {
        Ok(()) => MediaEvent::Downloaded {
            id,
            saved: save_to.map(|p| p.display().to_string()),
        },
        Err((code, message, retry)) => {
            if !retry {
                // Given up: no disk space stays taken by a file that will not complete.
                let _ = tokio::fs::remove_file(path.with_extension("part")).await;
            }
            MediaEvent::Failed {
                id,
                code,
                message,
                retry,
            }
        }
    };
    let _ = tx.send(ev).await;
}

/// Accepts `/tern/blob/1` streams from peers and serves this device's own files.
async fn serve_peers(mut ctl: libp2p_stream::Control, served: Served) {
    let mut incoming = match ctl.accept(blob::PROTOCOL) {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!("cannot serve files to peers: {e}");
            return;
        }
    };
    let permits = Arc::new(tokio::sync::Semaphore::new(MEDIA_SERVE_STREAMS));
    while let Some((peer, stream)) = incoming.next().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::info!(%peer, "too many file downloads from this device; refusing one");
            continue;
        };
        let served = served.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(MEDIA_SERVE_TIMEOUT, blob::serve_get(stream, &served)).await
            {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, "serving a file stopped: {e}"),
                Err(_) => tracing::info!(%peer, "serving a file took too long; stopped"),
            }
            drop(permit);
        });
    }
}

impl Engine {
    /// Starts serving own files and resumes every unfinished transfer (after a restart).
    pub(crate) fn media_start(&mut self) {
        if let Err(e) = crate::home::create_private_dir(&self.media.dir) {
            tracing::warn!("cannot create the media directory: {e}");
        }
        tokio::spawn(serve_peers(self.net.streams(), self.media.served.clone()));
        let transfers = match self.store.transfers(&[
            TransferState::Queued,
            TransferState::Active,
            TransferState::Done,
        ]) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("reading transfers failed: {e}");
                return;
            }
        };
        for t in transfers {
            let Ok(data) = TransferData::decode(&t.data) else {
                continue;
            };
            match (t.state, data) {
                (TransferState::Done, TransferData::Up(u)) => {
                    if let Some(s) = u.staged {
                        self.serve(&s);
                    }
                }
                (TransferState::Done, _) => {}
                (_, data) => self.start_transfer(t.id, data),
            }
        }
    }

    fn serve(&self, s: &StagedUp) {
        if let Ok(mut map) = self.media.served.0.lock() {
            map.insert(
                s.media.blob.into_array(),
                ServedBlob {
                    manifest: s.manifest.clone(),
                    read_cap_hash: blob::read_cap_hash(s.media.read_cap.as_ref()),
                    expires_at_ms: s.media.expires_at_ms,
                    path: self.media.blob_path(&s.media),
                },
            );
        }
    }

    /// Starts (or restarts) the task a transfer needs next.
    fn start_transfer(&mut self, id: MessageId, data: TransferData) {
        tracing::debug!(transfer = %id, "starting transfer");
        if let Some(h) = self.media.running.remove(&id) {
            h.abort();
        }
        self.media.retry.remove(&id);
        let tx = self.media.tx.clone();
        let handle = match data {
            TransferData::Up(UpData {
                source,
                original,
                staged: None,
                ..
            }) => {
                let dir = self.media.dir.clone();
                tokio::spawn(async move {
                    let source = PathBuf::from(source);
                    let result = tokio::task::spawn_blocking(move || {
                        stage_blocking(&dir, &id, &source, original).map(Box::new)
                    })
                    .await
                    .unwrap_or_else(|e| Err(("io", e.to_string())));
                    let _ = tx.send(MediaEvent::Staged { id, result }).await;
                })
            }
            TransferData::Up(UpData {
                staged: Some(staged),
                ..
            }) => {
                let relay = self
                    .home_relays
                    .iter()
                    .find(|a| relay_peer(a).is_some_and(|p| self.relay_up.contains(&p)))
                    .or_else(|| self.home_relays.first())
                    .cloned();
                let Some(relay) = relay else {
                    self.transfer_failed(id, "no_relay", "no home relay to upload to", true);
                    return;
                };
                let path = self.media.blob_path(&staged.media);
                tokio::spawn(run_upload(self.net.streams(), relay, staged, path, id, tx))
            }
            TransferData::Down(d) => {
                let sender = d.sender_device.parse::<PeerId>().ok();
                let path = self.media.blob_path(&d.media);
                tokio::spawn(run_download(
                    self.net.streams(),
                    self.net.clone(),
                    sender,
                    d.media,
                    path,
                    d.save_to.map(PathBuf::from),
                    id,
                    tx,
                ))
            }
        };
        self.media.running.insert(id, handle.abort_handle());
    }

    fn emit_transfer(&self, t: &Transfer, state: &str, code: Option<String>) {
        if let Ok(data) = TransferData::decode(&t.data) {
            self.emit(Event::Transfer {
                transfer: info(t, &data, state, code),
            });
        }
    }

    /// `file.send`: records the upload and starts staging; the message follows once the
    /// relay holds the whole file.
    pub(crate) fn file_send(
        &mut self,
        contact: Option<&str>,
        group: Option<&str>,
        path: &str,
        caption: String,
        original: bool,
    ) -> Result<TransferInfo, NodeError> {
        self.check_not_revoked()?;
        let target = match (contact, group) {
            (Some(c), None) => Target::Direct(self.resolve(c)?),
            (None, Some(g)) => {
                let g = self.resolve_group(g)?;
                let state = self.state(&g)?;
                if !state.is_member(self.user.as_bytes()) {
                    return Err(NodeError::NotMember(state.title.clone()));
                }
                Target::Group(g)
            }
            _ => {
                return Err(NodeError::BadRequest(
                    "give either a contact or a group".into(),
                ));
            }
        };
        if caption.len() > MAX_TEXT_BYTES {
            return Err(NodeError::TextTooLong {
                len: caption.len(),
                max: MAX_TEXT_BYTES,
            });
        }
        let source = std::path::absolute(path).map_err(|e| NodeError::Media {
            code: "not_found",
            message: format!("{path}: {e}"),
        })?;
        let meta = std::fs::metadata(&source).map_err(|e| NodeError::Media {
            code: "not_found",
            message: format!("cannot read {}: {e}", source.display()),
        })?;
        if !meta.is_file() {
            return Err(NodeError::Media {
                code: "not_a_file",
                message: format!("{} is not a file", source.display()),
            });
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(NodeError::Media {
                code: "too_large",
                message: format!(
                    "{} is {} bytes; files are at most {MAX_FILE_BYTES} bytes (100 MiB)",
                    source.display(),
                    meta.len()
                ),
            });
        }
        let id = MessageId(super::send::random_id()?);
        let data = TransferData::Up(UpData {
            target,
            source: source.display().to_string(),
            caption,
            original,
            staged: None,
        });
        let now = now_ms();
        let t = Transfer {
            id,
            direction: Direction::Up,
            state: TransferState::Queued,
            data: data.encode()?,
            bytes_done: 0,
            bytes_total: meta.len(),
            error: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.store.transaction(|tx| tx.put_transfer(&t))?;
        let out = info(&t, &data, "queued", None);
        self.emit(Event::Transfer {
            transfer: out.clone(),
        });
        self.start_transfer(id, data);
        Ok(out)
    }

    /// `file.get`: saves a received (or sent) file to `to`, downloading it first if needed.
    /// Answers at once when the file must be downloaded (`downloading`; a `transfer` event
    /// says when it is saved), else once the copy is written.
    pub(crate) fn file_get(
        &mut self,
        message: &str,
        to: Option<String>,
        reply: tokio::sync::oneshot::Sender<Result<TransferInfo, NodeError>>,
    ) {
        let out = (|| {
            let (m, media) = self.media_message(message)?;
            let id = m.id;
            let to = match to {
                Some(t) => {
                    let p = std::path::absolute(&t).map_err(|e| NodeError::Media {
                        code: "io",
                        message: format!("{t}: {e}"),
                    })?;
                    if p.exists() {
                        return Err(NodeError::Media {
                            code: "exists",
                            message: format!("{} exists; choose another path", p.display()),
                        });
                    }
                    Some(p)
                }
                None => None,
            };
            Ok((id, m, media, to))
        })();
        let (id, m, media, to) = match out {
            Ok(x) => x,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let path = self.media.blob_path(&media);
        let done = TransferInfo {
            id: id.to_string(),
            direction: "down".into(),
            state: "done".into(),
            bytes: media.blob_size,
            total: media.blob_size,
            name: safe_name(&media.name),
            code: None,
            path: to.as_ref().map(|p| p.display().to_string()),
        };
        if path.exists() {
            let Some(to) = to else {
                let _ = reply.send(Ok(done));
                return;
            };
            tokio::spawn(async move {
                let r = save_copy(&media, &path, &to)
                    .await
                    .map(|()| done)
                    .map_err(|(code, message)| NodeError::Media { code, message });
                let _ = reply.send(r);
            });
            return;
        }
        if m.own && media.relays.is_empty() {
            let _ = reply.send(Err(NodeError::Media {
                code: "not_found",
                message: "the file is not on this device".into(),
            }));
            return;
        }
        let _ = reply.send(self.start_download(&m, media, to.map(|p| p.display().to_string())));
    }

    /// A stored message that carries a file, by id (32 hex digits), with its reference.
    fn media_message(&self, message: &str) -> Result<(tern_store::Message, MediaRef), NodeError> {
        let id = super::parse_message_id(message)
            .ok_or_else(|| NodeError::UnknownMessage(message.to_owned()))?;
        let m = self
            .store
            .message(id)?
            .ok_or_else(|| NodeError::UnknownMessage(message.to_owned()))?;
        let tern_store::Body::Media { data, .. } = &m.body else {
            return Err(NodeError::Media {
                code: "not_a_file",
                message: format!("message {message} carries no file"),
            });
        };
        let media = StoredMedia::decode(data)?.media;
        Ok((m, media))
    }

    /// `FileOpen`: the verified ciphertext of a message's file, if this device holds it.
    pub(crate) fn file_open(&self, message: &str) -> Result<crate::media::LocalFile, NodeError> {
        let (_, media) = self.media_message(message)?;
        let path = self.media.blob_path(&media);
        if !path.exists() {
            return Err(NodeError::Media {
                code: "not_here",
                message: "the file is not on this device yet (file.get fetches it)".into(),
            });
        }
        Ok(crate::media::LocalFile {
            path,
            key: MediaKey::from_bytes(media.key.into_array()),
            sha256: media.sha256.into_array(),
            size: media.size,
            mime: media.mime.clone(),
            name: safe_name(&media.name),
        })
    }

    /// Records and starts the download of a message's file.
    fn start_download(
        &mut self,
        m: &tern_store::Message,
        media: MediaRef,
        save_to: Option<String>,
    ) -> Result<TransferInfo, NodeError> {
        if media.expires_at_ms != 0 && u64::try_from(now_ms()).unwrap_or(0) > media.expires_at_ms {
            return Err(NodeError::Media {
                code: "expired",
                message: "the relay no longer holds this file (it expired)".into(),
            });
        }
        let data = TransferData::Down(DownData {
            media,
            sender_device: m.sender_device.clone(),
            save_to,
        });
        let now = now_ms();
        let total = match &data {
            TransferData::Down(d) => d.media.blob_size,
            TransferData::Up(_) => 0,
        };
        let t = Transfer {
            id: m.id,
            direction: Direction::Down,
            state: TransferState::Active,
            data: data.encode()?,
            bytes_done: 0,
            bytes_total: total,
            error: None,
            created_at_ms: now,
            updated_at_ms: now,
        };
        self.store.transaction(|tx| tx.put_transfer(&t))?;
        let out = info(&t, &data, "downloading", None);
        self.emit(Event::Transfer {
            transfer: out.clone(),
        });
        self.start_transfer(m.id, data);
        Ok(out)
    }

    /// A media message was stored: download its file if it is small enough.
    pub(crate) fn on_media_message(&mut self, m: &tern_store::Message) {
        let tern_store::Body::Media { data, .. } = &m.body else {
            return;
        };
        let Ok(stored) = StoredMedia::decode(data) else {
            return;
        };
        if stored.media.size > self.media.auto_download
            || self.media.blob_path(&stored.media).exists()
            || self.store.transfer(&m.id).ok().flatten().is_some()
        {
            return;
        }
        if let Err(e) = self.start_download(m, stored.media, None) {
            tracing::info!(message = %m.id, "not downloading a file: {e}");
        }
    }

    /// Every transfer not finished, and the finished ones of the last day.
    pub(crate) fn transfers(&self) -> Result<Vec<TransferInfo>, NodeError> {
        let all = self.store.transfers(&[
            TransferState::Queued,
            TransferState::Active,
            TransferState::Done,
            TransferState::Failed,
        ])?;
        let since = now_ms() - 24 * 3600 * 1000;
        Ok(all
            .iter()
            .filter(|t| {
                matches!(t.state, TransferState::Queued | TransferState::Active)
                    || t.updated_at_ms >= since
            })
            .filter_map(|t| {
                let data = TransferData::decode(&t.data).ok()?;
                let mut t = t.clone();
                let state = if self.media.retry.contains_key(&t.id) {
                    "paused"
                } else if let (TransferState::Active, Some((state, bytes))) =
                    (t.state, self.media.progress.get(&t.id))
                {
                    t.bytes_done = *bytes;
                    state
                } else {
                    state_name(&t)
                };
                Some(info(&t, &data, state, t.error.clone()))
            })
            .collect())
    }

    fn transfer_failed(&mut self, id: MessageId, code: &'static str, message: &str, retry: bool) {
        self.media.running.remove(&id);
        self.media.progress.remove(&id);
        let Ok(Some(t)) = self.store.transfer(&id) else {
            return;
        };
        if retry {
            let attempts = self.media.attempts.entry(id).or_insert(0);
            *attempts += 1;
            let wait = super::send::backoff(*attempts).min(RETRY_MAX);
            tracing::info!(transfer = %id, code, "transfer paused, retrying in {wait:?}: {message}");
            self.media.retry.insert(id, Instant::now() + wait);
            self.emit_transfer(&t, "paused", Some(code.into()));
            return;
        }
        tracing::warn!(transfer = %id, code, "transfer failed: {message}");
        self.media.retry.remove(&id);
        self.media.attempts.remove(&id);
        let now = now_ms();
        if let Err(e) = self.store.transaction(|tx| {
            tx.transfer_progress(&id, TransferState::Failed, t.bytes_done, Some(code), now)
        }) {
            tracing::error!("recording a failed transfer: {e}");
        }
        self.emit_transfer(
            &Transfer {
                state: TransferState::Failed,
                error: Some(code.into()),
                ..t
            },
            "failed",
            Some(code.into()),
        );
    }

    /// Restarts paused transfers whose wait is over (`now`: all of them, e.g. a relay came up).
    pub(crate) fn media_retry_due(&mut self, now: bool) {
        let due: Vec<MessageId> = self
            .media
            .retry
            .iter()
            .filter(|(_, at)| now || **at <= Instant::now())
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.media.retry.remove(&id);
            match self.store.transfer(&id) {
                Ok(Some(t)) if matches!(t.state, TransferState::Queued | TransferState::Active) => {
                    if let Ok(data) = TransferData::decode(&t.data) {
                        self.start_transfer(id, data);
                    }
                }
                _ => {
                    self.media.attempts.remove(&id);
                }
            }
        }
    }

    /// Handles what a transfer task reported.
    pub(crate) async fn on_media(&mut self, ev: MediaEvent) {
        match ev {
            MediaEvent::Progress {
                id,
                state,
                bytes,
                total,
            } => {
                self.media.progress.insert(id, (state, bytes));
                if let Ok(Some(t)) = self.store.transfer(&id) {
                    let t = Transfer {
                        bytes_done: bytes,
                        bytes_total: total,
                        ..t
                    };
                    self.emit_transfer(&t, state, None);
                }
            }
            MediaEvent::Staged { id, result } => {
                let Ok(Some(t)) = self.store.transfer(&id) else {
                    return;
                };
                let Ok(TransferData::Up(mut up)) = TransferData::decode(&t.data) else {
                    return;
                };
                // A file the web UI uploaded for sending is not needed once staged.
                let source = Path::new(&up.source);
                if source.starts_with(self.home.dir().join("uploads")) {
                    let _ = std::fs::remove_file(source);
                    if let Some(dir) = source.parent() {
                        let _ = std::fs::remove_dir(dir);
                    }
                }
                let staged = match result {
                    Ok(s) => s,
                    Err((code, message)) => {
                        self.transfer_failed(id, code, &message, false);
                        return;
                    }
                };
                up.staged = Some(*staged);
                let data = TransferData::Up(up);
                let Ok(bytes) = data.encode() else { return };
                let t = Transfer {
                    state: TransferState::Active,
                    data: bytes,
                    bytes_total: match &data {
                        TransferData::Up(UpData {
                            staged: Some(s), ..
                        }) => s.media.blob_size,
                        _ => t.bytes_total,
                    },
                    updated_at_ms: now_ms(),
                    ..t
                };
                if let Err(e) = self.store.transaction(|tx| tx.put_transfer(&t)) {
                    tracing::error!("recording a staged upload: {e}");
                    return;
                }
                self.emit_transfer(&t, "uploading", None);
                self.start_transfer(id, data);
            }
            MediaEvent::Uploaded {
                id,
                relay,
                expires_at_ms,
            } => {
                self.media.running.remove(&id);
                self.media.attempts.remove(&id);
                self.media.progress.remove(&id);
                if let Err(e) = self.uploaded(id, relay, expires_at_ms).await {
                    self.transfer_failed(id, "send", &e.to_string(), false);
                }
            }
            MediaEvent::Downloaded { id, saved } => {
                self.media.running.remove(&id);
                self.media.attempts.remove(&id);
                self.media.progress.remove(&id);
                let Ok(Some(t)) = self.store.transfer(&id) else {
                    return;
                };
                let now = now_ms();
                if let Err(e) = self.store.transaction(|tx| {
                    tx.transfer_progress(&id, TransferState::Done, t.bytes_total, None, now)
                }) {
                    tracing::error!("recording a finished download: {e}");
                }
                let t = Transfer {
                    state: TransferState::Done,
                    bytes_done: t.bytes_total,
                    ..t
                };
                if let Ok(data) = TransferData::decode(&t.data) {
                    let mut i = info(&t, &data, "done", None);
                    i.path = saved;
                    self.emit(Event::Transfer { transfer: i });
                }
            }
            MediaEvent::Failed {
                id,
                code,
                message,
                retry,
            } => self.transfer_failed(id, code, &message, retry),
        }
    }

    /// The relay holds the whole file: send its message (unless a run before this one did),
    /// then mark the upload done.
    async fn uploaded(
        &mut self,
        id: MessageId,
        relay: String,
        expires_at_ms: u64,
    ) -> Result<(), NodeError> {
        let Some(t) = self.store.transfer(&id)? else {
            return Ok(());
        };
        let TransferData::Up(mut up) = TransferData::decode(&t.data)? else {
            return Ok(());
        };
        let Some(staged) = up.staged.as_mut() else {
            return Ok(());
        };
        staged.media.relays = vec![relay];
        staged.media.expires_at_ms = expires_at_ms;
        let body = StoredMedia {
            v: 1,
            media: staged.media.clone(),
            caption: up.caption.clone(),
        }
        .to_body()?;
        if self.store.message(id)?.is_none() {
            match &up.target {
                Target::Direct(user) => {
                    let user = user.clone();
                    self.send_body(&user, Some(id), body).await?;
                }
                Target::Group(g) => {
                    let g = g.clone();
                    self.group_send(&g, Some(id), body).await?;
                }
            }
        }
        let staged = staged.clone();
        self.serve(&staged);
        let data = TransferData::Up(up);
        let t = Transfer {
            state: TransferState::Done,
            data: data.encode()?,
            bytes_done: t.bytes_total,
            updated_at_ms: now_ms(),
            ..t
        };
        self.store.transaction(|tx| tx.put_transfer(&t))?;
        self.emit(Event::Transfer {
            transfer: info(&t, &data, "done", None),
        });
        Ok(())
    }
}
