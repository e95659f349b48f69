//! Sending a file: read, prepare (images), encrypt and stage it once, in a blocking task;
//! upload it to a home relay; and once the relay holds and has checked the whole blob, send
//! the message that points at it.

use std::path::{Path, PathBuf};

use libp2p::Multiaddr;
use serde_bytes::{ByteArray, ByteBuf};
use tern_crypto::media::MediaKey;
use tern_relay::blob::{self, BlobError, Manifest};
use tern_store::{Direction, MessageId, Transfer, TransferState};
use tokio::sync::mpsc;

use super::transfer::{Reporter, classify, now_u64, open_stream, stage_failure, unless_stalled};
use super::{MediaEvent, StagedUp, Target, TransferData, UpData, info};
use crate::engine::{Engine, relay_peer};
use crate::{
    consts::{MAX_TEXT_BYTES, UPLOAD_WINDOW_CHUNKS},
    error::NodeError,
    media::{MAX_FILE_BYTES, MediaRef, StoredMedia, hex, image, safe_name, stage},
    types::{Event, Prepare, TransferInfo},
};

/// Reads, prepares (images), encrypts and stages a file to send; blocking.
pub(super) fn stage_blocking(
    dir: &Path,
    id: &MessageId,
    source: &Path,
    prepare: Prepare,
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
    let image = match prepare {
        Prepare::AsFile => None,
        Prepare::Scaled | Prepare::Original => image::sniff(&head[..n]),
    };
    let staged = match image {
        Some(_) => {
            let bytes = std::fs::read(source).map_err(io)?;
            let p = image::prepare(&bytes, prepare == Prepare::Original)
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

pub(super) async fn run_upload(
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
    let mut tries = 0;
    let result = loop {
        let once = async {
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
        };
        match once.await {
            // Several uploads started at once, to a relay that queues one new stream (one
            // from before `tern_relay::inbound`): it dropped the others unread. A fresh
            // one is taken.
            Err(e) if blob::try_again(&e, &mut tries).await => {}
            done => break done,
        }
    };
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

impl Engine {
    /// `file.send`: records the upload and starts staging; the message follows once the
    /// relay holds the whole file.
    pub(crate) fn file_send(
        &mut self,
        contact: Option<&str>,
        group: Option<&str>,
        path: &str,
        caption: String,
        prepare: Prepare,
    ) -> Result<TransferInfo, NodeError> {
        self.check_not_revoked()?;
        let target = match (contact, group) {
            (Some(c), None) => Target::Direct(self.resolve(c)?.to_string()),
            (None, Some(g)) => {
                let g = self.resolve_group(g)?;
                let state = self.state(&g)?;
                if !state.is_member(self.me.user.as_bytes()) {
                    return Err(NodeError::NotMember(state.title.clone()));
                }
                Target::Group(g.to_string())
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
        // Resolved on disk (no `..`, no link): what is read, and what the upload sweep and
        // the deletion of a staged upload compare, is the file itself.
        let source = std::fs::canonicalize(path).map_err(|e| NodeError::Media {
            code: "not_found",
            message: format!("cannot read {path}: {e}"),
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
        let id = MessageId(crate::engine::send::random_id()?);
        let data = TransferData::Up(UpData {
            target,
            source: source.display().to_string(),
            caption,
            original: prepare == Prepare::Original,
            as_file: prepare == Prepare::AsFile,
            staged: None,
        });
        let now = self.clock.now_ms();
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

    /// The relay holds the whole file: send its message (unless a run before this one did),
    /// then mark the upload done.
    pub(super) fn uploaded(
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
                    self.send_body(&user, Some(id), body, None)?;
                }
                Target::Group(g) => {
                    let g = g.clone();
                    self.group_send(&g, Some(id), body, None)?;
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
            updated_at_ms: self.clock.now_ms(),
            ..t
        };
        self.store.transaction(|tx| tx.put_transfer(&t))?;
        self.emit(Event::Transfer {
            transfer: info(&t, &data, "done", None),
        });
        Ok(())
    }
}
