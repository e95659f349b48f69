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
    io,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use libp2p::{PeerId, Stream};
use tokio::sync::{Semaphore, watch};

use super::{config::BlobConfig, metrics::Metrics, ratelimit::Limiter, storage};
use crate::{
    blob::{
        self, BlobId, BlobSource, MAX_MANIFEST_FRAME_BYTES, Manifest, Request, Response,
        read_cap_matches,
        transfer::{send, send_error},
    },
    wire::{ErrorCode, stream},
};

pub(crate) mod disk;
mod upload;

pub use disk::free_bytes;
use disk::{Meta, hex, now_ms};

/// Subdirectory of the data directory that holds blobs.
pub const BLOB_DIR: &str = "blobs";
/// Retry hint when every blob stream slot is taken, or the blob is busy.
const BUSY_RETRY_MS: u64 = 1000;

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
pub fn spawn(
    data_dir: &Path,
    cfg: BlobConfig,
    metrics: Arc<Metrics>,
    users: storage::Reader,
    incoming: crate::inbound::Incoming,
    stop: watch::Receiver<bool>,
) -> io::Result<tokio::task::JoinHandle<()>> {
    let dir = data_dir.join(BLOB_DIR);
    std::fs::create_dir_all(&dir)?;
    let blobs = disk::scan(&dir)?;
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
    mut incoming: crate::inbound::Incoming,
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
                            blob::refuse_busy(&mut stream, "too many blob streams", BUSY_RETRY_MS).await;
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
        } => upload::receive(shared, peer, stream, manifest, read_cap_hash, ttl_secs).await,
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
