//! The web UI's side of the API server: its files (embedded, or from `TERN_UI_DIR` while
//! developing), the one-time codes `tern ui` hands out and the sessions they become.
//!
//! A page on localhost gets no ambient credential: `tern ui` asks the node (with the API
//! token) for a code, single use and valid [`CODE_TTL`], and opens a 0600 local file that
//! redirects the browser to `http://127.0.0.1:PORT/#c=CODE` (the fragment never reaches a
//! server or a `Referer`). The page exchanges the code at `POST /session` for a session token
//! kept in `sessionStorage`, and presents it as a WebSocket subprotocol
//! (`tern.session.<token>`) or as `Authorization: Bearer` on uploads and file reads.

use std::{
    collections::{HashMap, VecDeque},
    path::PathBuf,
    sync::Mutex,
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long a code from `tern ui` may wait to be exchanged.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// Codes outstanding at most (the oldest is dropped).
const MAX_CODES: usize = 16;
/// Sessions kept at most (the oldest is dropped: its page must run `tern ui` again).
const MAX_SESSIONS: usize = 32;
/// How long a session lasts (a page left open longer runs `tern ui` again).
pub const SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);
/// Where sessions survive a restart of the node: the SHA-256 of each token and when it was
/// made, 0600 (a page left open rides out a restart; the file holds nothing that opens it).
const SESSIONS_FILE: &str = "ui-sessions.json";

/// The UI's files, embedded at build time (`build.rs`): path under `ui/` and bytes.
const EMBEDDED: &[(&str, &[u8])] = include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// One file of the UI, as served.
#[derive(Debug, Clone)]
pub struct Asset {
    /// Its bytes (embedded ones are not copied per request).
    pub bytes: bytes::Bytes,
    /// Its `Content-Type`.
    pub mime: &'static str,
    /// Its ETag (quoted, from its SHA-256).
    pub etag: String,
}

fn mime_of(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json") => "application/json",
        Some("woff2") => "font/woff2",
        _ => "application/octet-stream",
    }
}

fn asset(path: &str, bytes: bytes::Bytes) -> Asset {
    let hash = Sha256::digest(&bytes);
    let etag = format!("\"{}\"", data_encoding::HEXLOWER.encode(&hash[..12]));
    Asset {
        bytes,
        mime: mime_of(path),
        etag,
    }
}

/// The UI's state in the API server.
#[derive(Debug)]
pub struct Ui {
    /// `TERN_UI_DIR`: serve files from here instead (development).
    dir: Option<PathBuf>,
    /// Embedded files, by path, with their ETags.
    embedded: HashMap<&'static str, Asset>,
    codes: Mutex<VecDeque<(String, Instant)>>,
    /// SHA-256 of each session token, with when it was made (ms since the epoch).
    sessions: Mutex<VecDeque<([u8; 32], i64)>>,
    /// Bumped whenever sessions are ended, so connections opened with one look again.
    ended: tokio::sync::watch::Sender<u64>,
    /// The home's sessions file, if sessions are kept across restarts.
    file: Option<PathBuf>,
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn live(made_ms: i64, now_ms: i64) -> bool {
    now_ms.saturating_sub(made_ms) < i64::try_from(SESSION_TTL.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn random_hex(n: usize) -> Option<String> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).ok()?;
    Some(tern_crypto::hex::encode(&b))
}

impl Ui {
    /// The UI with its embedded files, or those under `TERN_UI_DIR` when that is set, and
    /// no sessions kept across restarts.
    pub fn new() -> Self {
        Ui {
            dir: std::env::var_os("TERN_UI_DIR").map(PathBuf::from),
            embedded: EMBEDDED
                .iter()
                .map(|(p, b)| (*p, asset(p, bytes::Bytes::from_static(b))))
                .collect(),
            codes: Mutex::new(VecDeque::new()),
            sessions: Mutex::new(VecDeque::new()),
            ended: tokio::sync::watch::Sender::new(0),
            file: None,
        }
    }

    /// Like [`Ui::new`], keeping sessions in `home` so a page left open rides out a restart
    /// of the node.
    pub fn with_home(home: &std::path::Path) -> Self {
        let file = home.join(SESSIONS_FILE);
        let now = crate::home::now_ms();
        let stored: Vec<(String, i64)> = crate::home::read_private(&file, 64 * 1024)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let sessions = stored
            .into_iter()
            .filter(|(_, made)| live(*made, now))
            .filter_map(|(h, made)| {
                let bytes = data_encoding::HEXLOWER.decode(h.as_bytes()).ok()?;
                Some((<[u8; 32]>::try_from(bytes).ok()?, made))
            })
            .collect();
        Ui {
            sessions: Mutex::new(sessions),
            file: Some(file),
            ..Ui::new()
        }
    }

    fn save(&self, sessions: &VecDeque<([u8; 32], i64)>) {
        let Some(file) = &self.file else { return };
        let list: Vec<(String, i64)> = sessions
            .iter()
            .map(|(h, made)| (data_encoding::HEXLOWER.encode(h), *made))
            .collect();
        let saved = serde_json::to_vec(&list)
            .map_err(|e| e.to_string())
            .and_then(|b| crate::home::write_atomic(file, &b, true).map_err(|e| e.to_string()));
        if let Err(e) = saved {
            tracing::warn!("cannot keep the web UI's sessions: {e}");
        }
    }

    /// The file at `path` (relative to the UI's root; `index.html` for `/`).
    pub fn file(&self, path: &str) -> Option<Asset> {
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return None;
        }
        match &self.dir {
            Some(dir) => {
                let bytes = std::fs::read(dir.join(path)).ok()?;
                Some(asset(path, bytes.into()))
            }
            None => self.embedded.get(path).cloned(),
        }
    }

    /// A new one-time code for `tern ui`.
    pub fn new_code(&self) -> Option<String> {
        let code = random_hex(16)?;
        let mut codes = self.codes.lock().ok()?;
        codes.retain(|(_, at)| at.elapsed() < CODE_TTL);
        if codes.len() >= MAX_CODES {
            codes.pop_front();
        }
        codes.push_back((code.clone(), Instant::now()));
        Some(code)
    }

    /// Exchanges a code (once, within [`CODE_TTL`]) for a new session token.
    pub fn redeem(&self, code: &str) -> Option<String> {
        let mut codes = self.codes.lock().ok()?;
        let pos = codes.iter().position(|(c, at)| {
            bool::from(c.as_bytes().ct_eq(code.as_bytes())) && at.elapsed() < CODE_TTL
        })?;
        codes.remove(pos);
        drop(codes);
        let token = random_hex(32)?;
        let mut sessions = self.sessions.lock().ok()?;
        let now = crate::home::now_ms();
        sessions.retain(|(_, made)| live(*made, now));
        let evicted = sessions.len() >= MAX_SESSIONS;
        if evicted {
            sessions.pop_front();
        }
        sessions.push_back((token_hash(&token), now));
        self.save(&sessions);
        drop(sessions);
        if evicted {
            // The oldest page's socket closes now, as for a sign-out.
            self.ended.send_modify(|n| *n = n.wrapping_add(1));
        }
        Some(token)
    }

    /// Ends the session `token` (a page signing out); whether it was live.
    pub fn end_session(&self, token: &str) -> bool {
        let hash = token_hash(token);
        self.end(|h| bool::from(h.ct_eq(&hash))) > 0
    }

    /// Ends every session (`tern ui --sign-out`); returns how many were live.
    pub fn end_all(&self) -> usize {
        self.end(|_| true)
    }

    /// Ends the sessions `which` picks, forgets them on disk, and tells the connections
    /// opened with one to look again (see [`Ui::ended`]).
    fn end(&self, which: impl Fn(&[u8; 32]) -> bool) -> usize {
        let Ok(mut sessions) = self.sessions.lock() else {
            return 0;
        };
        let now = crate::home::now_ms();
        sessions.retain(|(_, made)| live(*made, now));
        let before = sessions.len();
        sessions.retain(|(h, _)| !which(h));
        let ended = before - sessions.len();
        self.save(&sessions);
        drop(sessions);
        self.ended.send_modify(|n| *n = n.wrapping_add(1));
        ended
    }

    /// Changes whenever sessions are ended: a connection opened with a session watches it
    /// and closes once its own is gone.
    pub fn ended(&self) -> tokio::sync::watch::Receiver<u64> {
        self.ended.subscribe()
    }

    /// Whether `token` is a live session (compared in constant time with each).
    pub fn session_valid(&self, token: &str) -> bool {
        let Ok(sessions) = self.sessions.lock() else {
            return false;
        };
        let hash = token_hash(token);
        let now = crate::home::now_ms();
        sessions.iter().fold(false, |found, (s, made)| {
            found | (bool::from(s.ct_eq(&hash)) & live(*made, now))
        })
    }
}

impl Default for Ui {
    fn default() -> Self {
        Self::new()
    }
}

/// An SVG QR code of `text` (for the UI to show one's contact link).
pub fn qr_svg(text: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_is_good_once_and_sessions_are_checked() {
        let ui = Ui::new();
        let code = ui.new_code().unwrap();
        assert!(ui.redeem("0000").is_none());
        let token = ui.redeem(&code).unwrap();
        assert!(ui.redeem(&code).is_none(), "single use");
        assert!(ui.session_valid(&token));
        assert!(!ui.session_valid("nope"));
        assert!(!ui.session_valid(""));
    }

    #[test]
    fn sessions_ride_out_a_restart_and_only_their_hashes_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ui = Ui::with_home(dir.path());
        let token = ui.redeem(&ui.new_code().unwrap()).unwrap();
        let stored = std::fs::read_to_string(dir.path().join(SESSIONS_FILE)).unwrap();
        assert!(!stored.contains(&token), "the token itself is not stored");
        let again = Ui::with_home(dir.path());
        assert!(again.session_valid(&token));
        assert!(!again.session_valid("0123"));
    }

    #[test]
    fn ended_sessions_stay_ended_across_a_restart_and_watchers_are_told() {
        let dir = tempfile::tempdir().unwrap();
        let ui = Ui::with_home(dir.path());
        let mut watch = ui.ended();
        let [a, b, c] = [(); 3].map(|()| ui.redeem(&ui.new_code().unwrap()).unwrap());
        assert!(ui.end_session(&a));
        assert!(!ui.end_session(&a), "already ended");
        assert!(watch.has_changed().unwrap());
        watch.mark_unchanged();
        assert!(!ui.session_valid(&a) && ui.session_valid(&b));
        assert!(!Ui::with_home(dir.path()).session_valid(&a));
        assert_eq!(ui.end_all(), 2);
        assert!(watch.has_changed().unwrap());
        assert!(!ui.session_valid(&b) && !ui.session_valid(&c));
        let again = Ui::with_home(dir.path());
        assert!(!again.session_valid(&b) && !again.session_valid(&c));
        assert_eq!(again.end_all(), 0);
    }

    #[test]
    fn paths_cannot_leave_the_ui() {
        let ui = Ui::new();
        for bad in [
            "../Cargo.toml",
            "a/../../x",
            "/etc/passwd",
            "",
            "a//b",
            "./x",
        ] {
            assert!(ui.file(bad).is_none(), "{bad}");
        }
        assert_eq!(mime_of("app.js"), "text/javascript; charset=utf-8");
    }

    #[test]
    fn qr_codes_are_svg() {
        let svg = qr_svg("tern:hello").unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg"));
    }
}
