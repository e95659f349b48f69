//! The relay's blob store (`/tern/blob/1`): files under `<data_dir>/blobs/`, served by a
//! task of its own, away from the mailbox writer, so a 100 MB upload never stalls a deposit.
//!
//! Each blob is two files named by its id in hex:
//!
//! - `<id>.meta`: owner, user, manifest, read-cap hash, times and the complete flag, in the
//!   wire format (version byte, CBOR); replaced atomically (temporary file, fsync, rename).
//! - `<id>.data`: the ciphertext, written in order by the one stream uploading it. Its length
//!   in whole chunks is the durable mark: a chunk is acknowledged only after an fsync. After
//!   a crash the scan at start-up cuts a torn tail and checks the last chunk's hash.
//!
//! Who may upload: a device that has published its prekey bundle at this relay (over
//! `/tern/directory/1`, checked against its user's signed device list), i.e. a device of a
//! user of this relay. Quotas count per user (the user id its bundle names), so a user's
//! devices share one quota. Anyone holding a blob's read capability may download it.

use std::{
    collections::HashMap,
    io::{self, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{AsyncReadExt as _, StreamExt as _};
use libp2p::{PeerId, Stream};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::{
    io::{AsyncSeekExt as _, AsyncWriteExt as _},
    sync::{Semaphore, mpsc, watch},
};

use super::{config::BlobConfig, metrics::Metrics, ratelimit::Limiter, storage};
use crate::{
    blob::{
        self, BlobId, BlobSource, MAX_MANIFEST_FRAME_BYTES, Manifest, Request, Response,
        chunk_hash, data_frame_cap, read_cap_matches,
        transfer::{send, send_error},
    },
    wire::{self, ErrorCode, stream},
};

/// Subdirectory of the data directory that holds blobs.
pub const BLOB_DIR: &str = "blobs";
/// A partial upload is fsynced (and acknowledged) at least every this many bytes, and
/// whenever no further chunk is waiting, so 100 MB costs tens of fsyncs, not hundreds.
const SYNC_BYTES: u64 = 4 * 1024 * 1024;
/// Chunk frames read ahead of the writer per upload stream (each at most a chunk).
const READ_AHEAD: usize = 4;
/// Longest metadata file.
const MAX_META_BYTES: usize = MAX_MANIFEST_FRAME_BYTES + 1024;
/// Retry hint when every blob stream slot is taken, or the blob is busy.
const BUSY_RETRY_MS: u64 = 1000;

/// What `<id>.meta` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    /// The uploading device (peer id bytes).
    owner: ByteBuf,
    /// Its user id, for quotas.
    user: ByteBuf,
    manifest: Manifest,
    read_cap_hash: ByteBuf,
    created_ms: u64,
    expires_ms: u64,
    complete: bool,
}

/// One blob, as the index holds it.
#[derive(Debug)]
struct Entry {
    owner: PeerId,
    meta: Meta,
    /// Chunks durable in the data file.
    have: u32,
    /// A stream is uploading it (only one may).
    uploading: bool,
    /// Last time an upload made progress (ms since the epoch), for abandonment.
    progress_ms: u64,
}

#[derive(Debug)]
struct State {
    blobs: HashMap<BlobId, Entry>,
    /// Bytes per user id (blobs at full size).
    usage: HashMap<Vec<u8>, u64>,
    ops: Limiter<PeerId>,
}

/// The blob store, shared by the accept task, every stream task and garbage collection.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    cfg: BlobConfig,
    metrics: Arc<Metrics>,
    users: storage::Reader,
    state: Mutex<State>,
    streams: Arc<Semaphore>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hex(id: &BlobId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<BlobId> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Free bytes on the file system holding `dir` for an unprivileged writer.
pub fn free_bytes(dir: &Path) -> io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// A refusal to send on the stream.
struct Refusal {
    code: ErrorCode,
    message: &'static str,
    retry_after_ms: Option<u64>,
}

impl Refusal {
    fn new(code: ErrorCode, message: &'static str) -> Self {
        Self {
            code,
            message,
            retry_after_ms: None,
        }
    }
}

impl Shared {
    fn data_path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(format!("{}.data", hex(id)))
    }

    fn meta_path(&self, id: &BlobId) -> PathBuf {
        self.dir.join(format!("{}.meta", hex(id)))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `bytes` more may be written without eating into the reserve.
    fn has_room(&self, bytes: u64) -> bool {
        match free_bytes(&self.dir) {
            Ok(free) => free.saturating_sub(self.cfg.reserve_bytes) >= bytes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read free disk space");
                false
            }
        }
    }

    /// Forgets a blob and deletes its files (the caller made sure no stream writes it).
    fn remove(&self, id: &BlobId) -> bool {
        let removed = {
            let mut st = self.lock();
            let Some(e) = st.blobs.remove(id) else {
                return false;
            };
            let user = e.meta.user.to_vec();
            if let Some(u) = st.usage.get_mut(&user) {
                *u = u.saturating_sub(e.meta.manifest.size);
                if *u == 0 {
                    st.usage.remove(&user);
                }
            }
            e
        };
        self.metrics.blobs.fetch_sub(1, Relaxed);
        self.metrics
            .blob_bytes
            .fetch_sub(removed.meta.manifest.size as i64, Relaxed);
        // The meta file first: without it a data file is an orphan the next scan deletes.
        for p in [self.meta_path(id), self.data_path(id)] {
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, "cannot delete blob file");
            }
        }
        true
    }
}

impl BlobSource for Shared {
    fn open(
        &self,
        blob: &BlobId,
        read_cap: &[u8; 32],
    ) -> Result<(Manifest, u64, PathBuf), (ErrorCode, String)> {
        let st = self.lock();
        let not_found = || (ErrorCode::NotFound, "no such blob".to_owned());
        let e = st.blobs.get(blob).ok_or_else(not_found)?;
        let mut expected = [0u8; 32];
        expected.copy_from_slice(&e.meta.read_cap_hash);
        // A wrong capability learns nothing, not even that the blob exists.
        if !read_cap_matches(read_cap, &expected) {
            return Err(not_found());
        }
        if e.meta.expires_ms <= now_ms() {
            return Err((ErrorCode::Expired, "blob expired".into()));
        }
        if !e.meta.complete {
            return Err((ErrorCode::Incomplete, "upload not finished".into()));
        }
        self.metrics.blob_downloads.fetch_add(1, Relaxed);
        Ok((
            e.meta.manifest.clone(),
            e.meta.expires_ms,
            self.data_path(blob),
        ))
    }
}

/// Writes `<id>.meta` atomically: a temporary file, fsync, rename, fsync of the directory.
fn write_meta(dir: &Path, id: &BlobId, meta: &Meta) -> io::Result<()> {
    let bytes = wire::encode("blob meta", meta, MAX_META_BYTES)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let tmp = dir.join(format!("{}.meta.tmp", hex(id)));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(format!("{}.meta", hex(id))))?;
    std::fs::File::open(dir)?.sync_all()
}

/// Loads the index from `dir`: every blob with a readable meta file, its durable mark
/// derived from the data file (a torn tail cut, the last whole chunk checked). Temporary
/// and orphaned files are deleted.
fn scan(dir: &Path) -> io::Result<HashMap<BlobId, Entry>> {
    let mut blobs = HashMap::new();
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        names.push(entry?.file_name().to_string_lossy().into_owned());
    }
    for name in &names {
        let Some(id) = name.strip_suffix(".meta").and_then(unhex) else {
            continue;
        };
        let path = dir.join(name);
        let meta: Option<Meta> = std::fs::read(&path)
            .ok()
            .and_then(|b| wire::decode("blob meta", &b, MAX_META_BYTES).ok());
        let Some(mut meta) = meta.filter(|m| {
            m.manifest.check(u64::MAX).is_ok()
                && m.manifest.id() == id
                && m.read_cap_hash.len() == 32
        }) else {
            tracing::warn!(file = %name, "unreadable blob metadata; deleting the blob");
            let _ = std::fs::remove_file(&path);
            let _ = std::fs::remove_file(dir.join(format!("{}.data", hex(&id))));
            continue;
        };
        let Ok(owner) = PeerId::from_bytes(&meta.owner) else {
            continue;
        };
        let data = dir.join(format!("{}.data", hex(&id)));
        let (have, progress_ms) = recover_data(&data, &meta.manifest)?;
        if have < meta.manifest.chunks() {
            meta.complete = false;
        }
        blobs.insert(
            id,
            Entry {
                owner,
                meta,
                have,
                uploading: false,
                progress_ms,
            },
        );
    }
    for name in &names {
        let stale = if let Some(stem) = name.strip_suffix(".data") {
            unhex(stem).is_none_or(|id| !blobs.contains_key(&id))
        } else {
            name.ends_with(".tmp")
        };
        if stale {
            let _ = std::fs::remove_file(dir.join(name));
        }
    }
    Ok(blobs)
}

/// The durable mark of a data file in whole chunks, after cutting a torn tail and checking
/// the last chunk against the manifest; and when it last changed (ms since the epoch).
fn recover_data(path: &Path, manifest: &Manifest) -> io::Result<(u32, u64)> {
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::File::create(path)?;
            return Ok((0, now_ms()));
        }
        Err(e) => return Err(e),
    };
    let m = f.metadata()?;
    let modified = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(now_ms, |d| d.as_millis() as u64);
    let len = m.len().min(manifest.size);
    let mut have = if len == manifest.size {
        manifest.chunks()
    } else {
        (len / u64::from(manifest.chunk_size)) as u32
    };
    if have > 0 {
        let last = have - 1;
        let mut buf = vec![0u8; manifest.chunk_len(last)];
        f.seek(SeekFrom::Start(manifest.offset(last)))?;
        f.read_exact(&mut buf)?;
        if chunk_hash(&buf) != manifest.hashes[last as usize] {
            have = last;
        }
    }
    let keep = manifest.offset(have).min(manifest.size);
    if m.len() != keep {
        f.set_len(keep)?;
        f.sync_all()?;
    }
    Ok((have, modified))
}

/// Starts the blob service: loads the index from `<data_dir>/blobs/`, then accepts
/// `/tern/blob/1` streams from `incoming` (each in a task of its own) and collects garbage
/// every `gc_secs`, until `stop` turns true.
pub fn spawn(
    data_dir: &Path,
    cfg: BlobConfig,
    metrics: Arc<Metrics>,
    users: storage::Reader,
    incoming: libp2p_stream::IncomingStreams,
    stop: watch::Receiver<bool>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let dir = data_dir.join(BLOB_DIR);
    std::fs::create_dir_all(&dir)?;
    let blobs = scan(&dir)?;
    let mut usage: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut bytes = 0u64;
    for e in blobs.values() {
        *usage.entry(e.meta.user.to_vec()).or_default() += e.meta.manifest.size;
        bytes += e.meta.manifest.size;
    }
    metrics.blobs.store(blobs.len() as i64, Relaxed);
    metrics.blob_bytes.store(bytes as i64, Relaxed);
    tracing::info!(blobs = blobs.len(), bytes, "blob store loaded");
    let shared = Arc::new(Shared {
        dir,
        streams: Arc::new(Semaphore::new(cfg.max_streams)),
        state: Mutex::new(State {
            blobs,
            usage,
            ops: Limiter::new(cfg.ops_per_sec, cfg.ops_burst),
        }),
        cfg,
        metrics,
        users,
    });
    Ok(tokio::spawn(accept(shared, incoming, stop)))
}

async fn accept(
    shared: Arc<Shared>,
    mut incoming: libp2p_stream::IncomingStreams,
    mut stop: watch::Receiver<bool>,
) {
    let mut gc = tokio::time::interval(Duration::from_secs(shared.cfg.gc_secs));
    gc.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            next = incoming.next() => {
                let Some((peer, mut stream)) = next else { return };
                match shared.streams.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let shared = shared.clone();
                        tokio::spawn(async move {
                            handle(&shared, peer, stream).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        shared.metrics.reject(ErrorCode::Unavailable);
                        tokio::spawn(async move {
                            send_error(&mut stream, ErrorCode::Unavailable, "too many blob streams", Some(BUSY_RETRY_MS)).await;
                        });
                    }
                }
            }
            _ = gc.tick() => {
                let shared = shared.clone();
                // File deletions are blocking calls.
                let _ = tokio::task::spawn_blocking(move || collect(&shared)).await;
            }
            _ = stop.changed() => return,
        }
    }
}

/// Deletes expired blobs and uploads abandoned for `abandon_secs`, freeing their quota.
fn collect(shared: &Shared) {
    let now = now_ms();
    let abandon_ms = shared.cfg.abandon_secs.saturating_mul(1000);
    let doomed: Vec<BlobId> = {
        let mut st = shared.lock();
        st.ops.prune(Instant::now());
        st.blobs
            .iter()
            .filter(|(_, e)| {
                !e.uploading
                    && (e.meta.expires_ms <= now
                        || (!e.meta.complete && now.saturating_sub(e.progress_ms) >= abandon_ms))
            })
            .map(|(id, _)| *id)
            .collect()
    };
    for id in doomed {
        if shared.remove(&id) {
            shared.metrics.blobs_collected.fetch_add(1, Relaxed);
        }
    }
}

/// Serves one stream: its first frame says what it is for.
async fn handle(shared: &Arc<Shared>, peer: PeerId, mut stream: Stream) {
    let idle = Duration::from_secs(shared.cfg.idle_secs);
    let first = match tokio::time::timeout(
        idle,
        stream::read_frame(&mut stream, MAX_MANIFEST_FRAME_BYTES),
    )
    .await
    {
        Ok(Ok(Some(f))) => f,
        Ok(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
            return refuse(
                shared,
                &mut stream,
                Refusal::new(ErrorCode::TooLarge, "frame too large"),
            )
            .await;
        }
        _ => return,
    };
    let req = match Request::decode(&first, MAX_MANIFEST_FRAME_BYTES) {
        Ok(r) => r,
        Err(e) => {
            let code = ErrorCode::for_decode_error(&e);
            return refuse(shared, &mut stream, Refusal::new(code, "undecodable frame")).await;
        }
    };
    let allowed = shared.lock().ops.take(&peer, 1.0, Instant::now());
    if let Err(wait) = allowed {
        let r = Refusal {
            code: ErrorCode::RateLimited,
            message: "too many blob operations",
            retry_after_ms: Some(wait.as_millis() as u64 + 1),
        };
        return refuse(shared, &mut stream, r).await;
    }
    let result = match req {
        Request::Create {
            manifest,
            read_cap_hash,
            ttl_secs,
        } => receive(shared, peer, stream, manifest, read_cap_hash, ttl_secs).await,
        Request::Get {
            blob,
            read_cap,
            from,
            to,
        } => blob::serve_get_request(stream, &blob, &read_cap, from, to, &**shared).await,
        Request::Delete { blob } => {
            let owned = {
                let st = shared.lock();
                st.blobs
                    .get(&blob)
                    .is_some_and(|e| e.owner == peer && !e.uploading)
            };
            let removed = owned && {
                let s = shared.clone();
                tokio::task::spawn_blocking(move || s.remove(&blob))
                    .await
                    .unwrap_or(false)
            };
            if removed {
                send(&mut stream, Response::Deleted.encode())
                    .await
                    .map(drop)
            } else {
                refuse(
                    shared,
                    &mut stream,
                    Refusal::new(ErrorCode::NotFound, "no such blob of yours"),
                )
                .await;
                Ok(())
            }
        }
        Request::Chunk { .. } => {
            refuse(
                shared,
                &mut stream,
                Refusal::new(ErrorCode::BadRequest, "Chunk before Create"),
            )
            .await;
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "blob stream ended with an error");
    }
}

async fn refuse(shared: &Shared, stream: &mut Stream, r: Refusal) {
    shared.metrics.reject(r.code);
    send_error(stream, r.code, r.message, r.retry_after_ms).await;
}

/// Clears a blob's uploading flag when the stream that set it ends, however it ends.
struct UploadGuard<'a> {
    shared: &'a Shared,
    id: BlobId,
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.shared.lock().blobs.get_mut(&self.id) {
            e.uploading = false;
        }
    }
}

/// Admits a `Create`: checks the uploader, the manifest and every limit, and registers the
/// blob (or finds it again to resume). Returns the guard that holds the upload, the durable
/// mark, and whether the blob is already complete.
async fn admit<'a>(
    shared: &'a Arc<Shared>,
    peer: PeerId,
    manifest: &Manifest,
    read_cap_hash: [u8; 32],
    ttl_secs: Option<u32>,
) -> Result<(UploadGuard<'a>, u32, bool, u64), Refusal> {
    manifest
        .check(shared.cfg.max_blob_bytes)
        .map_err(|e| Refusal::new(e.code(), "manifest refused"))?;
    let s = shared.clone();
    let user = tokio::task::spawn_blocking(move || s.users.device_user(&peer))
        .await
        .map_err(|_| Refusal::new(ErrorCode::Internal, "lookup failed"))?
        .map_err(|e| Refusal::new(e.code(), "lookup failed"))?
        .ok_or(Refusal::new(
            ErrorCode::NotAllowed,
            "uploads are for devices registered at this relay",
        ))?;
    let id = manifest.id();
    let now = now_ms();
    let new_meta = {
        let mut st = shared.lock();
        if let Some(e) = st.blobs.get_mut(&id) {
            if e.owner != peer {
                return Err(Refusal::new(
                    ErrorCode::NotAllowed,
                    "blob belongs to another device",
                ));
            }
            if e.meta.read_cap_hash.as_slice() != read_cap_hash {
                return Err(Refusal::new(
                    ErrorCode::BadRequest,
                    "read capability differs from the blob's",
                ));
            }
            if e.meta.expires_ms <= now {
                return Err(Refusal::new(ErrorCode::Expired, "blob expired"));
            }
            if e.uploading {
                return Err(Refusal {
                    code: ErrorCode::Unavailable,
                    message: "blob is being uploaded on another stream",
                    retry_after_ms: Some(BUSY_RETRY_MS),
                });
            }
            let (have, complete, expires) = (e.have, e.meta.complete, e.meta.expires_ms);
            if !complete {
                let left = manifest.size - manifest.offset(have).min(manifest.size);
                if !shared.has_room(left) {
                    return Err(Refusal::new(ErrorCode::StorageFull, "relay storage full"));
                }
            }
            e.uploading = true;
            return Ok((UploadGuard { shared, id }, have, complete, expires));
        }
        let used = st.usage.get(&user).copied().unwrap_or(0);
        if used.saturating_add(manifest.size) > shared.cfg.quota_bytes {
            return Err(Refusal::new(ErrorCode::QuotaBytes, "blob quota exceeded"));
        }
        if !shared.has_room(manifest.size) {
            return Err(Refusal::new(ErrorCode::StorageFull, "relay storage full"));
        }
        let ttl = ttl_secs
            .map_or(shared.cfg.ttl_secs, |t| {
                u64::from(t).min(shared.cfg.ttl_secs)
            })
            .max(1);
        let meta = Meta {
            owner: ByteBuf::from(peer.to_bytes()),
            user: ByteBuf::from(user.clone()),
            manifest: manifest.clone(),
            read_cap_hash: ByteBuf::from(read_cap_hash.to_vec()),
            created_ms: now,
            expires_ms: now.saturating_add(ttl.saturating_mul(1000)),
            complete: false,
        };
        *st.usage.entry(user).or_default() += manifest.size;
        st.blobs.insert(
            id,
            Entry {
                owner: peer,
                meta: meta.clone(),
                have: 0,
                uploading: true,
                progress_ms: now,
            },
        );
        meta
    };
    shared.metrics.blobs.fetch_add(1, Relaxed);
    shared
        .metrics
        .blob_bytes
        .fetch_add(manifest.size as i64, Relaxed);
    let guard = UploadGuard { shared, id };
    // The meta file, then an empty data file: a blob on disk always has its meta.
    let (dir, meta) = (shared.dir.clone(), new_meta.clone());
    let data = shared.data_path(&id);
    let written = tokio::task::spawn_blocking(move || {
        write_meta(&dir, &id, &meta)?;
        std::fs::File::create(data)?.sync_all()
    })
    .await
    .unwrap_or_else(|e| Err(io::Error::other(e)));
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot create blob files");
        drop(guard);
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || s.remove(&id)).await;
        return Err(Refusal::new(
            ErrorCode::StorageFull,
            "cannot store the blob",
        ));
    }
    Ok((guard, 0, false, new_meta.expires_ms))
}

/// Serves an upload: `Created`, then chunks in order, each checked against the manifest,
/// fsynced in batches and acknowledged, then `Complete`.
async fn receive(
    shared: &Arc<Shared>,
    peer: PeerId,
    mut stream: Stream,
    manifest: Manifest,
    read_cap_hash: [u8; 32],
    ttl_secs: Option<u32>,
) -> Result<(), blob::BlobError> {
    let (guard, have, complete, expires_at_ms) =
        match admit(shared, peer, &manifest, read_cap_hash, ttl_secs).await {
            Ok(a) => a,
            Err(r) => {
                refuse(shared, &mut stream, r).await;
                return Ok(());
            }
        };
    let id = guard.id;
    let created = Response::Created {
        have,
        complete,
        expires_at_ms,
    };
    send(&mut stream, created.encode()).await?;
    if complete {
        return Ok(());
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .open(shared.data_path(&id))
        .await?;
    // Bytes past the durable mark were never acknowledged: write over them.
    let mark = manifest.offset(have).min(manifest.size);
    file.set_len(mark).await?;
    file.seek(SeekFrom::Start(mark)).await?;

    let cap = data_frame_cap(manifest.chunk_size);
    let idle = Duration::from_secs(shared.cfg.idle_secs);
    let (mut rd, mut wr) = stream.split();
    let (tx, mut rx) = mpsc::channel::<io::Result<Vec<u8>>>(READ_AHEAD);
    // Reads chunk frames ahead of the writer, so it can tell when no more input is waiting.
    let reader = async move {
        loop {
            match stream::read_frame(&mut rd, cap).await {
                Ok(Some(f)) => {
                    if tx.send(Ok(f)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
        drop(tx);
        std::future::pending::<()>().await
    };
    let chunks = manifest.chunks();
    let writer = async {
        let mut next = have;
        let mut durable = have;
        let mut unsynced = 0u64;
        while next < chunks {
            let frame = match rx.try_recv() {
                Ok(f) => Some(f),
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Nothing waiting: make what came durable and say so before blocking.
                    if next > durable {
                        sync_and_ack(shared, &id, &mut file, &mut wr, next, &mut unsynced).await?;
                        durable = next;
                    }
                    match tokio::time::timeout(idle, rx.recv()).await {
                        Ok(f) => f,
                        Err(_) => return Ok(()),
                    }
                }
                Err(mpsc::error::TryRecvError::Disconnected) => None,
            };
            let frame = match frame {
                Some(Ok(f)) => f,
                Some(Err(e)) if e.kind() == io::ErrorKind::InvalidData => {
                    refuse_w(
                        shared,
                        &mut wr,
                        ErrorCode::TooLarge,
                        "chunk frame too large",
                    )
                    .await;
                    return Ok(());
                }
                // The uploader went away; what is durable stays for a resume.
                Some(Err(_)) | None => return Ok(()),
            };
            let (index, data) = match Request::decode(&frame, cap) {
                Ok(Request::Chunk { index, data }) => (index, data),
                Ok(_) => {
                    refuse_w(shared, &mut wr, ErrorCode::BadRequest, "expected a Chunk").await;
                    return Ok(());
                }
                Err(e) => {
                    refuse_w(
                        shared,
                        &mut wr,
                        ErrorCode::for_decode_error(&e),
                        "undecodable chunk",
                    )
                    .await;
                    return Ok(());
                }
            };
            if index != next {
                refuse_w(
                    shared,
                    &mut wr,
                    ErrorCode::BadIndex,
                    "chunks must come in order from the mark",
                )
                .await;
                return Ok(());
            }
            if data.len() != manifest.chunk_len(index)
                || chunk_hash(&data) != manifest.hashes[index as usize]
            {
                refuse_w(
                    shared,
                    &mut wr,
                    ErrorCode::HashMismatch,
                    "chunk does not match the manifest",
                )
                .await;
                return Ok(());
            }
            if !shared.has_room(data.len() as u64) {
                refuse_w(
                    shared,
                    &mut wr,
                    ErrorCode::StorageFull,
                    "relay storage full",
                )
                .await;
                return Ok(());
            }
            file.write_all(&data).await?;
            unsynced += data.len() as u64;
            next += 1;
            if unsynced >= SYNC_BYTES && next < chunks {
                sync_and_ack(shared, &id, &mut file, &mut wr, next, &mut unsynced).await?;
                durable = next;
            }
        }
        // Every chunk is in: make it durable, then mark the blob complete.
        file.sync_data().await?;
        shared
            .metrics
            .blob_upload_bytes
            .fetch_add(unsynced, Relaxed);
        let meta = {
            let mut st = shared.lock();
            let Some(e) = st.blobs.get_mut(&id) else {
                return Ok(());
            };
            e.have = chunks;
            e.progress_ms = now_ms();
            let mut m = e.meta.clone();
            m.complete = true;
            m
        };
        let dir = shared.dir.clone();
        let m = meta.clone();
        tokio::task::spawn_blocking(move || write_meta(&dir, &id, &m))
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))?;
        if let Some(e) = shared.lock().blobs.get_mut(&id) {
            e.meta.complete = true;
        }
        shared.metrics.blob_uploads.fetch_add(1, Relaxed);
        let done = Response::Complete {
            expires_at_ms: meta.expires_ms,
        };
        send(&mut wr, done.encode()).await?;
        let _ = futures::AsyncWriteExt::close(&mut wr).await;
        Ok::<(), blob::BlobError>(())
    };
    let result = {
        let reader = std::pin::pin!(reader);
        let writer = std::pin::pin!(writer);
        match futures::future::select(writer, reader).await {
            futures::future::Either::Left((r, _)) => r,
            futures::future::Either::Right(((), _)) => Ok(()),
        }
    };
    drop(guard);
    result
}

/// Fsyncs the data file, records the new mark and acknowledges it.
async fn sync_and_ack<W: futures::AsyncWrite + Unpin>(
    shared: &Shared,
    id: &BlobId,
    file: &mut tokio::fs::File,
    wr: &mut W,
    have: u32,
    unsynced: &mut u64,
) -> Result<(), blob::BlobError> {
    file.sync_data().await?;
    shared
        .metrics
        .blob_upload_bytes
        .fetch_add(*unsynced, Relaxed);
    *unsynced = 0;
    if let Some(e) = shared.lock().blobs.get_mut(id) {
        e.have = have;
        e.progress_ms = now_ms();
    }
    send(wr, Response::Ack { have }.encode()).await
}

async fn refuse_w<W: futures::AsyncWrite + Unpin>(
    shared: &Shared,
    wr: &mut W,
    code: ErrorCode,
    message: &str,
) {
    shared.metrics.reject(code);
    send_error(wr, code, message, None).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let id = [0xa5; 32];
        assert_eq!(unhex(&hex(&id)), Some(id));
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(&"g".repeat(64)), None);
    }

    #[test]
    fn recovery_cuts_a_torn_tail_and_a_bad_last_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        std::fs::write(&src, &bytes).unwrap();
        let m = Manifest::of_file(&src, 1024).unwrap();
        let data = dir.path().join("data");
        // Two whole chunks and a torn third.
        std::fs::write(&data, &bytes[..2500]).unwrap();
        assert_eq!(recover_data(&data, &m).unwrap().0, 2);
        assert_eq!(std::fs::metadata(&data).unwrap().len(), 2048);
        // A last whole chunk that does not match is dropped too.
        let mut bad = bytes[..3072].to_vec();
        bad[3000] ^= 1;
        std::fs::write(&data, &bad).unwrap();
        assert_eq!(recover_data(&data, &m).unwrap().0, 2);
        assert_eq!(std::fs::metadata(&data).unwrap().len(), 2048);
        // The whole file, with its short last chunk.
        std::fs::write(&data, &bytes).unwrap();
        assert_eq!(recover_data(&data, &m).unwrap().0, 5);
        // A missing data file is an empty one.
        std::fs::remove_file(&data).unwrap();
        assert_eq!(recover_data(&data, &m).unwrap().0, 0);
    }
}
