//! Serving this device's own sent files to peers over `/tern/blob/1`, so a recipient that is
//! directly connected can fetch a file from the sender rather than a relay.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
};

use tern_relay::blob::{self, BlobId, BlobSource, Manifest};
use tern_relay::wire::ErrorCode;

use super::StagedUp;
use crate::consts::{
    MEDIA_SERVE_BUSY_RETRY, MEDIA_SERVE_FIRST_FRAME, MEDIA_SERVE_STREAMS, MEDIA_SERVE_TIMEOUT,
};
use crate::engine::Engine;

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

/// Accepts `/tern/blob/1` streams from peers and serves this device's own files.
pub(super) async fn serve_peers(mut incoming: tern_relay::inbound::Incoming, served: Served) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MEDIA_SERVE_STREAMS));
    while let Some((peer, mut stream)) = incoming.next().await {
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::info!(%peer, "too many file downloads from this device; refusing one");
            // Told at once, the peer fetches from the relay rather than retrying here. A
            // fresh stream takes a small frame without waiting; the bound is for a peer
            // that is gone.
            let busy = blob::refuse_busy(
                &mut stream,
                "this device is serving too many downloads",
                MEDIA_SERVE_BUSY_RETRY.as_millis() as u64,
            );
            let _ = tokio::time::timeout(MEDIA_SERVE_BUSY_RETRY, busy).await;
            continue;
        };
        let served = served.clone();
        tokio::spawn(async move {
            let serving = blob::serve_get(stream, &served, MEDIA_SERVE_FIRST_FRAME);
            match tokio::time::timeout(MEDIA_SERVE_TIMEOUT, serving).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(%peer, "serving a file stopped: {e}"),
                Err(_) => tracing::info!(%peer, "serving a file took too long; stopped"),
            }
            drop(permit);
        });
    }
}

impl Engine {
    pub(super) fn serve(&self, s: &StagedUp) {
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
}
