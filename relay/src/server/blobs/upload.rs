//! Serving an upload: admission (who, how big, quota, disk), then chunks checked, written in
//! order, fsynced in batches and acknowledged.

use std::{
    io::{self, SeekFrom},
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use futures::AsyncReadExt as _;
use libp2p::{PeerId, Stream};
use serde_bytes::ByteBuf;
use tokio::{
    io::{AsyncSeekExt as _, AsyncWriteExt as _},
    sync::mpsc,
};

use super::{BUSY_RETRY_MS, Entry, Refusal, Shared, disk, refuse};
use crate::{
    blob::{
        self, BlobId, Manifest, Request, Response, chunk_hash, data_frame_cap,
        transfer::{send, send_error},
    },
    wire::{ErrorCode, stream},
};

/// A partial upload is fsynced (and acknowledged) at least every this many bytes, and
/// whenever no further chunk is waiting, so 100 MB costs tens of fsyncs, not hundreds.
const SYNC_BYTES: u64 = 4 * 1024 * 1024;
/// Chunk frames read ahead of the writer per upload stream (each at most a chunk).
const READ_AHEAD: usize = 4;

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
    let now = disk::now_ms();
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
        let meta = disk::Meta {
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
        disk::write_meta(&dir, &id, &meta)?;
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
pub(super) async fn receive(
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
            e.progress_ms = disk::now_ms();
            let mut m = e.meta.clone();
            m.complete = true;
            m
        };
        let dir = shared.dir.clone();
        let m = meta.clone();
        tokio::task::spawn_blocking(move || disk::write_meta(&dir, &id, &m))
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
        e.progress_ms = disk::now_ms();
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
