//! Files and images: sending (stage once, upload, then the message), receiving (download,
//! verify), saving a decrypted copy, and serving this device's own files to peers.
//!
//! Every byte moves in tasks off the engine; they report back as [`MediaEvent`]s. A transfer
//! is recorded in the store before its first byte moves (`tern_store::Transfer`), so a
//! restart resumes it: an upload from the relay's acknowledged mark (create is idempotent), a
//! download from the whole chunks already on disk. An upload's message is sent only once the
//! relay holds and has checked the whole blob, so no recipient is ever pointed at a partial
//! file.
//!
//! The parts:
//!
//! - this file: the engine's media state, the transfer records, and each transfer's life:
//!   starting its task, progress, pause and retry, failure, and what the task reported;
//! - `upload`: `file.send` (checks and records the upload), staging a file (read, prepare an
//!   image, encrypt) and the upload task, and sending the message once the relay holds it;
//! - `download`: `file.get` and `FileOpen`, automatic downloads of small files, and the
//!   download task (fetch, verify, save a decrypted copy);
//! - `transfer`: what the upload and download tasks share (throttled progress reports, the
//!   stall guard, opening a `/tern/blob/1` stream, error codes);
//! - `serve`: serving this device's own sent files to peers.
//!
//! The flow goes one way: a command of `upload` or `download` records a transfer and hands
//! it to this file's `start_transfer`, which spawns the task of `upload` or `download`; tasks
//! run off the engine with `transfer`'s helpers and report back as [`MediaEvent`]s, which
//! this file's `on_media` takes (an upload that is done goes on to `upload`'s `uploaded`,
//! which sends the message and has `serve` offer the file).

mod download;
mod serve;
mod transfer;
mod upload;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Instant,
};

use libp2p::PeerId;
use serde::{Deserialize, Serialize};
use tern_relay::blob::Manifest;
use tern_store::{Direction, MessageId, Transfer, TransferState};
use tokio::sync::mpsc;

use download::run_download;
use serve::{Served, serve_peers};
use upload::{run_upload, stage_blocking};

use super::{Engine, relay_peer};
use crate::{
    consts::{AUTO_DOWNLOAD_BYTES, MEDIA_EVENT_QUEUE, RETRY_MAX, UPLOAD_KEEP},
    error::NodeError,
    media::{MediaRef, safe_name},
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
    /// Sent as it is, not prepared as an image (absent in records written before it).
    #[serde(default)]
    as_file: bool,
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
            .map_err(|e| NodeError::record("a transfer (encoding)", e))?;
        Ok(out)
    }

    fn decode(bytes: &[u8]) -> Result<Self, NodeError> {
        ciborium::from_reader(bytes).map_err(|e| NodeError::record("a transfer", e))
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

/// The engine's media state.
#[derive(Debug)]
pub(crate) struct Media {
    dir: PathBuf,
    tx: mpsc::Sender<MediaEvent>,
    rx: Option<mpsc::Receiver<MediaEvent>>,
    running: HashMap<MessageId, tokio::task::AbortHandle>,
    /// Paused transfers: when to try again, and why they paused (shown by `file list`).
    retry: HashMap<MessageId, (Instant, &'static str)>,
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

impl Engine {
    /// Starts serving own files and resumes every unfinished transfer (after a restart).
    pub(crate) fn media_start(&mut self) {
        if let Err(e) = crate::home::create_private_dir(&self.media.dir) {
            tracing::warn!("cannot create the media directory: {e}");
        }
        self.sweep_uploads();
        match self.net.take_file_streams() {
            Some(incoming) => {
                tokio::spawn(serve_peers(incoming, self.media.served.clone()));
            }
            None => tracing::warn!("files are already served to peers by another task"),
        }
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

    /// Deletes what the web UI uploaded for sending (`uploads/`, one directory per upload)
    /// that no transfer waits to stage: an upload whose `file.send` was refused or never
    /// came (the page closed between the two), or one left by a node that stopped before
    /// staging it and whose transfer is gone. An upload younger than [`UPLOAD_KEEP`] is left
    /// alone: its `file.send` may be on its way. Run at start and every
    /// [`UPLOAD_SWEEP_HEARTBEATS`](crate::consts::UPLOAD_SWEEP_HEARTBEATS) heartbeats.
    pub(crate) fn sweep_uploads(&self) {
        let Ok(entries) = std::fs::read_dir(self.me.home.uploads_dir()) else {
            return;
        };
        let home = &self.me.home;
        let waiting: Vec<PathBuf> = match self
            .store
            .transfers(&[TransferState::Queued, TransferState::Active])
        {
            Ok(t) => t
                .iter()
                .filter_map(|t| match TransferData::decode(&t.data) {
                    Ok(TransferData::Up(u)) if u.staged.is_none() => {
                        home.upload_dir(Path::new(&u.source))
                    }
                    _ => None,
                })
                .collect(),
            Err(e) => {
                tracing::error!("reading transfers failed: {e}");
                return;
            }
        };
        for entry in entries.flatten() {
            let Ok(dir) = std::fs::canonicalize(entry.path()) else {
                continue;
            };
            let young = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_or(true, |t| t.elapsed().map_or(true, |age| age < UPLOAD_KEEP));
            if young || waiting.contains(&dir) {
                continue;
            }
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!("cannot delete an upload left behind: {e}");
            }
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
                as_file,
                staged: None,
                ..
            }) => {
                use crate::types::Prepare;
                let prepare = match (as_file, original) {
                    (true, _) => Prepare::AsFile,
                    (false, true) => Prepare::Original,
                    (false, false) => Prepare::Scaled,
                };
                let dir = self.media.dir.clone();
                tokio::spawn(async move {
                    let source = PathBuf::from(source);
                    let result = tokio::task::spawn_blocking(move || {
                        stage_blocking(&dir, &id, &source, prepare).map(Box::new)
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
                    .relays
                    .home_relays
                    .iter()
                    .find(|a| relay_peer(a).is_some_and(|p| self.relays.relay_up.contains(&p)))
                    .or_else(|| self.relays.home_relays.first())
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

    /// Every transfer not finished, and the finished ones of the last day.
    pub(crate) fn transfers(&self) -> Result<Vec<TransferInfo>, NodeError> {
        let all = self.store.transfers(&[
            TransferState::Queued,
            TransferState::Active,
            TransferState::Done,
            TransferState::Failed,
        ])?;
        let since = self.clock.now_ms() - 24 * 3600 * 1000;
        Ok(all
            .iter()
            .filter(|t| {
                matches!(t.state, TransferState::Queued | TransferState::Active)
                    || t.updated_at_ms >= since
            })
            .filter_map(|t| {
                let data = TransferData::decode(&t.data).ok()?;
                let mut t = t.clone();
                let mut code = t.error.clone();
                let state = if let Some((_, why)) = self.media.retry.get(&t.id) {
                    code = Some((*why).into());
                    "paused"
                } else if let (TransferState::Active, Some((state, bytes))) =
                    (t.state, self.media.progress.get(&t.id))
                {
                    t.bytes_done = *bytes;
                    state
                } else {
                    state_name(&t)
                };
                Some(info(&t, &data, state, code))
            })
            .collect())
    }

    fn transfer_failed(&mut self, id: MessageId, code: &'static str, message: &str, retry: bool) {
        self.media.running.remove(&id);
        let reached = self.media.progress.remove(&id).map(|(_, bytes)| bytes);
        let Ok(Some(mut t)) = self.store.transfer(&id) else {
            return;
        };
        // What the task reached (acknowledged by the relay, or verified and written here)
        // is what the transfer goes on from: kept, so a paused or failed transfer shows it.
        if let Some(bytes) = reached.filter(|b| *b > t.bytes_done) {
            t.bytes_done = bytes;
            let now = self.clock.now_ms();
            let error = t.error.clone();
            if let Err(e) = self
                .store
                .transaction(|tx| tx.transfer_progress(&id, t.state, bytes, error.as_deref(), now))
            {
                tracing::error!("recording a transfer's progress: {e}");
            }
        }
        if retry {
            let attempts = self.media.attempts.entry(id).or_insert(0);
            *attempts += 1;
            let wait = super::send::backoff(*attempts).min(RETRY_MAX);
            tracing::info!(transfer = %id, code, "transfer paused, retrying in {wait:?}: {message}");
            self.media.retry.insert(id, (self.clock.now() + wait, code));
            self.emit_transfer(&t, "paused", Some(code.into()));
            return;
        }
        tracing::warn!(transfer = %id, code, "transfer failed: {message}");
        self.media.retry.remove(&id);
        self.media.attempts.remove(&id);
        let now = self.clock.now_ms();
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
            .filter(|(_, (at, _))| now || *at <= self.clock.now())
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
    pub(crate) fn on_media(&mut self, ev: MediaEvent) {
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
                if let Some(dir) = self.me.home.upload_dir(Path::new(&up.source)) {
                    let _ = std::fs::remove_dir_all(dir);
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
                    updated_at_ms: self.clock.now_ms(),
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
                if let Err(e) = self.uploaded(id, relay, expires_at_ms) {
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
                let now = self.clock.now_ms();
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
}
