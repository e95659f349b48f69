//! The two ends of a blob stream that a node and the relay share: upload and download (the
//! side that opens the stream), and serving a download from a [`BlobSource`].

use std::{
    io::{self, SeekFrom},
    path::{Path, PathBuf},
};

use futures::{AsyncRead, AsyncWrite, AsyncWriteExt};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _, AsyncWriteExt as _};

use super::{
    BlobError, BlobId, MAX_CONTROL_FRAME_BYTES, MAX_MANIFEST_FRAME_BYTES, Manifest, Request,
    Response, chunk_hash, data_frame_cap,
};
use crate::wire::{ErrorCode, stream};

/// What a finished upload reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// When the relay will delete the blob (ms since the epoch).
    pub expires_at_ms: u64,
}

/// What a download learnt about the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobInfo {
    /// The blob's manifest (checked against its id).
    pub manifest: Manifest,
    /// When the server will delete the blob (ms since the epoch).
    pub expires_at_ms: u64,
}

/// Where a server side finds a complete blob to serve (the relay's store, or a node's own
/// staging file).
pub trait BlobSource {
    /// The manifest, expiry (ms since the epoch) and data file of `blob`, if `read_cap` opens
    /// it; else the error code and a message for the `Error` frame.
    fn open(
        &self,
        blob: &BlobId,
        read_cap: &[u8; 32],
    ) -> Result<(Manifest, u64, PathBuf), (ErrorCode, String)>;
}

/// Writes one frame.
pub(crate) async fn send<S: AsyncWrite + Unpin>(
    io: &mut S,
    frame: Result<Vec<u8>, crate::wire::EncodeError>,
) -> Result<(), BlobError> {
    let bytes = frame.map_err(|e| BlobError::Protocol(e.to_string()))?;
    stream::write_frame(io, &bytes).await?;
    Ok(())
}

/// Writes an `Error` frame and closes the stream; failures to do so are of no interest (the
/// peer is gone).
pub(crate) async fn send_error<S: AsyncWrite + Unpin>(
    io: &mut S,
    code: ErrorCode,
    message: &str,
    retry_after_ms: Option<u64>,
) {
    let _ = send(io, Response::error(code, message, retry_after_ms).encode()).await;
    let _ = io.close().await;
}

/// The first request and answer of a stream: a stream failing there was not taken by the
/// peer ([`BlobError::NotTaken`]), so the request can go again on a fresh one.
fn not_taken(first: Result<Response, BlobError>) -> Result<Response, BlobError> {
    first.map_err(|e| match e {
        BlobError::Io(io) => BlobError::NotTaken(io),
        e => e,
    })
}

/// Reads one response frame of at most `max` bytes; an `Error` frame becomes
/// [`BlobError::Rejected`].
async fn recv<S: AsyncRead + Unpin>(io: &mut S, max: usize) -> Result<Response, BlobError> {
    let frame = stream::read_frame(io, max).await?.ok_or_else(|| {
        BlobError::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "blob stream closed",
        ))
    })?;
    match Response::decode(&frame, max) {
        Ok(Response::Error {
            code,
            message,
            retry_after_ms,
        }) => Err(BlobError::Rejected {
            code,
            message,
            retry_after_ms,
        }),
        Ok(r) => Ok(r),
        Err(e) => Err(BlobError::Protocol(e.to_string())),
    }
}

fn unexpected(r: &Response) -> BlobError {
    let name = match r {
        Response::Created { .. } => "Created",
        Response::Ack { .. } => "Ack",
        Response::Complete { .. } => "Complete",
        Response::Info { .. } => "Info",
        Response::Data { .. } => "Data",
        Response::End => "End",
        Response::Deleted => "Deleted",
        Response::Error { .. } => "Error",
    };
    BlobError::Protocol(format!("unexpected {name} frame"))
}

/// Bytes in the first `chunks` chunks.
fn bytes_of(manifest: &Manifest, chunks: u32) -> u64 {
    manifest.offset(chunks).min(manifest.size)
}

/// Creates (or resumes: create is idempotent for the same owner and manifest; the relay
/// answers how many chunks it already holds durably) and uploads `file` (the ciphertext)
/// from the relay's acknowledged mark, with at most `window` chunks unacknowledged.
/// `progress(acked_bytes)` is called with the bytes the relay has acknowledged (after
/// fsync), first with the mark it resumes from. Returns when the relay has checked the whole
/// blob and marked it complete.
///
/// Each chunk read from `file` is checked against the manifest before it is sent: a file
/// that changed since its manifest was made fails with [`BlobError::ChunkMismatch`].
pub async fn upload<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    manifest: &Manifest,
    read_cap_hash: [u8; 32],
    ttl_secs: Option<u32>,
    file: &Path,
    window: u32,
    mut progress: impl FnMut(u64),
) -> Result<Uploaded, BlobError> {
    manifest
        .check(u64::MAX)
        .map_err(|e| BlobError::Io(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    let create = Request::Create {
        manifest: manifest.clone(),
        read_cap_hash,
        ttl_secs,
    };
    let first = async {
        send(&mut stream, create.encode()).await?;
        recv(&mut stream, MAX_CONTROL_FRAME_BYTES).await
    };
    let (have, complete, expires_at_ms) = match not_taken(first.await)? {
        Response::Created {
            have,
            complete,
            expires_at_ms,
        } => (have, complete, expires_at_ms),
        other => return Err(unexpected(&other)),
    };
    let chunks = manifest.chunks();
    if have > chunks {
        return Err(BlobError::Protocol(format!(
            "relay holds {have} of {chunks} chunks"
        )));
    }
    progress(bytes_of(manifest, have));
    if complete {
        let _ = stream.close().await;
        return Ok(Uploaded { expires_at_ms });
    }
    let mut f = tokio::fs::File::open(file).await?;
    f.seek(SeekFrom::Start(manifest.offset(have))).await?;
    let window = window.max(1);
    let mut buf = vec![0u8; manifest.chunk_size as usize];
    let (mut next, mut acked) = (have, have);
    loop {
        while next < chunks && next - acked < window {
            let len = manifest.chunk_len(next);
            f.read_exact(&mut buf[..len]).await?;
            if chunk_hash(&buf[..len]) != manifest.hashes[next as usize] {
                return Err(BlobError::ChunkMismatch { index: next });
            }
            let chunk = Request::Chunk {
                index: next,
                data: ByteBuf::from(buf[..len].to_vec()),
            };
            send(&mut stream, chunk.encode()).await?;
            next += 1;
        }
        match recv(&mut stream, MAX_CONTROL_FRAME_BYTES).await? {
            Response::Ack { have } if have >= acked && have <= next => {
                if have > acked {
                    acked = have;
                    progress(bytes_of(manifest, acked));
                }
            }
            Response::Complete { expires_at_ms } if next == chunks => {
                if acked < chunks {
                    progress(manifest.size);
                }
                let _ = stream.close().await;
                return Ok(Uploaded { expires_at_ms });
            }
            Response::Ack { have } => {
                return Err(BlobError::Protocol(format!(
                    "acknowledgement of {have} chunks outside {acked}..={next}"
                )));
            }
            other => return Err(unexpected(&other)),
        }
    }
}

/// Downloads chunks `[from_chunk, to_chunk or end)` of `blob` into `out` (a file opened for
/// writing and positioned by the caller at `from_chunk * chunk_size`; writing starts at its
/// current position), checking the manifest against `blob` and each chunk against the
/// manifest before writing it. `progress(bytes_written_so_far_in_this_call)`.
///
/// On an error, what was written so far is whole, checked chunks: a caller may resume from
/// the chunk after them.
pub async fn download<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    blob: &BlobId,
    read_cap: &[u8; 32],
    from_chunk: u32,
    to_chunk: Option<u32>,
    out: &mut tokio::fs::File,
    mut progress: impl FnMut(u64),
) -> Result<BlobInfo, BlobError> {
    let get = Request::Get {
        blob: *blob,
        read_cap: *read_cap,
        from: from_chunk,
        to: to_chunk,
    };
    let first = async {
        send(&mut stream, get.encode()).await?;
        recv(&mut stream, MAX_MANIFEST_FRAME_BYTES).await
    };
    let (manifest, expires_at_ms) = match not_taken(first.await)? {
        Response::Info {
            manifest,
            expires_at_ms,
        } => (manifest, expires_at_ms),
        other => return Err(unexpected(&other)),
    };
    if manifest.id() != *blob {
        return Err(BlobError::ManifestMismatch);
    }
    manifest
        .check(u64::MAX)
        .map_err(|e| BlobError::Protocol(e.to_string()))?;
    let to = to_chunk.unwrap_or(manifest.chunks());
    if from_chunk > to || to > manifest.chunks() {
        return Err(BlobError::Protocol("range outside the blob".into()));
    }
    let cap = data_frame_cap(manifest.chunk_size);
    let (mut expect, mut written) = (from_chunk, 0u64);
    loop {
        match recv(&mut stream, cap).await? {
            Response::Data { index, bytes } if index == expect && index < to => {
                if bytes.len() != manifest.chunk_len(index)
                    || chunk_hash(&bytes) != manifest.hashes[index as usize]
                {
                    return Err(BlobError::ChunkMismatch { index });
                }
                out.write_all(&bytes).await?;
                written += bytes.len() as u64;
                expect += 1;
                progress(written);
            }
            Response::End if expect == to => {
                out.flush().await?;
                let _ = stream.close().await;
                return Ok(BlobInfo {
                    manifest,
                    expires_at_ms,
                });
            }
            other => return Err(unexpected(&other)),
        }
    }
}

/// Deletes `blob` (allowed to its uploader only).
pub async fn delete<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    blob: &BlobId,
) -> Result<(), BlobError> {
    send(&mut stream, Request::Delete { blob: *blob }.encode()).await?;
    match recv(&mut stream, MAX_CONTROL_FRAME_BYTES).await? {
        Response::Deleted => {
            let _ = stream.close().await;
            Ok(())
        }
        other => Err(unexpected(&other)),
    }
}

/// Answers a stream that its server has no room for: `Unavailable`, to be tried again in
/// `retry_after_ms`, then closes it. The opener learns at once that the stream was seen and
/// refused (not lost), and turns to another source or waits.
pub async fn refuse_busy<S: AsyncWrite + Unpin>(
    stream: &mut S,
    message: &str,
    retry_after_ms: u64,
) {
    send_error(
        stream,
        ErrorCode::Unavailable,
        message,
        Some(retry_after_ms),
    )
    .await;
}

/// Serves one `Get` request on an inbound stream from `source`, for direct transfers
/// between online peers (the node). Any other first frame is answered with `BadRequest`; a
/// stream whose first frame has not come within `first_frame` is closed.
pub async fn serve_get<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    source: &impl BlobSource,
    first_frame: std::time::Duration,
) -> Result<(), BlobError> {
    let read = stream::read_frame(&mut stream, MAX_CONTROL_FRAME_BYTES);
    let Some(frame) = tokio::time::timeout(first_frame, read)
        .await
        .map_err(|_| BlobError::Protocol("no request in time".into()))??
    else {
        return Ok(());
    };
    match Request::decode(&frame, MAX_CONTROL_FRAME_BYTES) {
        Ok(Request::Get {
            blob,
            read_cap,
            from,
            to,
        }) => serve_get_request(stream, &blob, &read_cap, from, to, source).await,
        Ok(_) => {
            send_error(
                &mut stream,
                ErrorCode::BadRequest,
                "only Get is served",
                None,
            )
            .await;
            Ok(())
        }
        Err(e) => {
            send_error(
                &mut stream,
                ErrorCode::for_decode_error(&e),
                &e.to_string(),
                None,
            )
            .await;
            Err(BlobError::Protocol(e.to_string()))
        }
    }
}

/// Serves a `Get` whose frame the caller has already read (the relay reads the first frame
/// to tell uploads from downloads): `Info`, then `Data` for chunks `[from, to)`, then `End`.
pub async fn serve_get_request<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    blob: &BlobId,
    read_cap: &[u8; 32],
    from: u32,
    to: Option<u32>,
    source: &impl BlobSource,
) -> Result<(), BlobError> {
    let (manifest, expires_at_ms, path) = match source.open(blob, read_cap) {
        Ok(found) => found,
        Err((code, message)) => {
            send_error(&mut stream, code, &message, None).await;
            return Ok(());
        }
    };
    let to = to.unwrap_or(manifest.chunks());
    if from > to || to > manifest.chunks() {
        send_error(
            &mut stream,
            ErrorCode::BadIndex,
            "range outside the blob",
            None,
        )
        .await;
        return Ok(());
    }
    // Open before answering, so a file gone since `open` is an error frame, not a cut stream.
    let mut f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(e) => {
            let code = if e.kind() == io::ErrorKind::NotFound {
                ErrorCode::NotFound
            } else {
                ErrorCode::Internal
            };
            send_error(&mut stream, code, "blob data unavailable", None).await;
            return Ok(());
        }
    };
    f.seek(SeekFrom::Start(manifest.offset(from))).await?;
    let info = Response::Info {
        manifest: manifest.clone(),
        expires_at_ms,
    };
    send(&mut stream, info.encode()).await?;
    let mut buf = vec![0u8; manifest.chunk_size as usize];
    for index in from..to {
        let len = manifest.chunk_len(index);
        f.read_exact(&mut buf[..len]).await?;
        let data = Response::Data {
            index,
            bytes: ByteBuf::from(buf[..len].to_vec()),
        };
        send(&mut stream, data.encode()).await?;
    }
    send(&mut stream, Response::End.encode()).await?;
    stream.close().await?;
    Ok(())
}
