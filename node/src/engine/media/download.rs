//! Receiving a file: downloading its blob (from the sender when directly connected, else from
//! a relay; resumed from the whole chunks on disk), verifying it, saving decrypted copies,
//! and opening a held file for the local API.

use std::path::{Path, PathBuf};

use libp2p::{Multiaddr, PeerId};
use tern_crypto::media::MediaKey;
use tern_relay::blob::{self, BlobError};
use tern_store::{Direction, MessageId, Transfer, TransferState};
use tokio::sync::mpsc;

use super::transfer::{Reporter, classify, now_u64, open_stream, stage_failure, unless_stalled};
use super::{DownData, MediaEvent, TransferData, info};
use crate::engine::{Engine, relay_peer};
use crate::{
    error::NodeError,
    media::{MediaRef, StoredMedia, safe_name, stage},
    types::{Event, TransferInfo},
};

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
        let mut tries = 0;
        let got = loop {
            let once = async {
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
            };
            match once.await {
                // Not taken (several streams opened at the same moment): a fresh one is.
                Err(e) if blob::try_again(&e, &mut tries).await => {}
                done => break done,
            }
        };
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
pub(super) async fn run_download(
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

impl Engine {
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
                    // Said now, in the user's terms, rather than after the download as a
                    // failure to create a temporary file there.
                    if let Some(dir) = p.parent().filter(|d| !d.is_dir()) {
                        return Err(NodeError::Media {
                            code: "io",
                            message: format!(
                                "{} is not a directory that exists; choose another path",
                                dir.display()
                            ),
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
        let id = crate::engine::parse_message_id(message)
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
        if media.expires_at_ms != 0
            && u64::try_from(self.clock.now_ms()).unwrap_or(0) > media.expires_at_ms
        {
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
        let now = self.clock.now_ms();
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
}
