//! What the upload and download tasks share: throttled progress reports, the guard that fails
//! a transfer which stops moving, opening a `/tern/blob/1` stream, and the codes blob and
//! staging errors are reported with.

use std::time::Instant;

use libp2p::PeerId;
use tern_relay::blob::{self, BlobError};
use tern_relay::wire::ErrorCode;
use tern_store::MessageId;
use tokio::sync::mpsc;

use super::MediaEvent;
use crate::{
    consts::{MEDIA_PROGRESS_INTERVAL, MEDIA_STALL, MEDIA_STREAM_OPEN_TIMEOUT},
    home::now_ms,
    media::stage::StageError,
};

/// How a blob error is reported, and whether trying again may help.
pub(super) fn classify(e: &BlobError) -> (&'static str, bool) {
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

pub(super) fn stage_failure(e: StageError) -> (&'static str, String) {
    (e.code(), e.to_string())
}

/// Throttles progress reports to one per [`MEDIA_PROGRESS_INTERVAL`] (and the last).
pub(super) struct Reporter {
    pub(super) tx: mpsc::Sender<MediaEvent>,
    pub(super) id: MessageId,
    pub(super) state: &'static str,
    pub(super) total: u64,
    pub(super) last: Option<Instant>,
}

impl Reporter {
    pub(super) fn report(&mut self, bytes: u64) {
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
pub(super) fn now_u64() -> u64 {
    u64::try_from(now_ms()).unwrap_or(0)
}

/// Runs a transfer, failing it (as a network error, so it is retried) when `alive` (the
/// time of its last progress, ms) stops moving for [`MEDIA_STALL`]: a peer that keeps the
/// connection open but sends nothing must not hold a transfer forever.
pub(super) async fn unless_stalled<T>(
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

pub(super) async fn open_stream(
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
