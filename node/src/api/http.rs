//! The API server's HTTP side: one HTTP/1.1 listener on loopback serves the WebSocket API
//! (`/api`, and `/` for older clients), the web UI's files (`/`, `/ui/...`), the code
//! exchange (`POST /session`), uploads for sending (`POST /upload`) and decrypted files
//! (`GET /files/<message id>`).
//!
//! Every route checks `Host` (127.0.0.1:PORT or localhost:PORT: DNS rebinding); every route
//! that acts checks `Origin` when a browser sends one (exactly `http://127.0.0.1:PORT` or
//! `http://localhost:PORT`), and `POST /session` requires it. Credentials are never ambient:
//! the API token (`Authorization: Bearer`, the CLI) or a session token (a WebSocket
//! subprotocol or `Authorization: Bearer`, the web UI). Every response carries a strict
//! Content-Security-Policy and no-referrer, nosniff and no-framing headers.

use std::{convert::Infallible, io::Write, net::SocketAddr, path::PathBuf, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full, StreamBody, combinators::BoxBody};
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Frame, Incoming},
    header::{self, HeaderMap, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use subtle::ConstantTimeEq;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role, protocol::WebSocketConfig},
};

use super::ui::Ui;
use crate::{
    Node,
    consts::{API_HEADER_TIMEOUT, MAX_API_MESSAGE_BYTES},
    media::{MAX_FILE_BYTES, safe_name},
};

type Body = BoxBody<Bytes, std::io::Error>;

/// What every connection of one API server shares.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) node: Node,
    pub(super) token: String,
    pub(super) bound: SocketAddr,
    pub(super) ui: Ui,
    /// Where files uploaded for sending wait until staged.
    pub(super) uploads: PathBuf,
    /// The node's home (which files are uploads, for a web UI session's `file.send`).
    pub(super) home: crate::Home,
    /// Slots for authenticated WebSocket sessions.
    pub(super) sessions: Arc<tokio::sync::Semaphore>,
    /// Set when the node stops ([`super::server::ApiServer::stop`]).
    pub(super) stopping: tokio::sync::watch::Sender<bool>,
}

/// Serves HTTP on one accepted connection until it ends (a WebSocket lives on after the
/// upgrade, in a task of its own).
pub(super) async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        async move { Ok::<_, Infallible>(handle(req, &shared).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(API_HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!("API connection ended: {e}");
    }
}

fn body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}

fn respond(status: StatusCode, b: Body) -> Response<Body> {
    let mut r = Response::new(b);
    *r.status_mut() = status;
    r
}

fn json_response(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    let mut r = respond(status, body(v.to_string()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, why: &str) -> Response<Body> {
    json_response(status, json!({"error": why}))
}

fn get<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn hosts(bound: SocketAddr) -> [String; 2] {
    let port = bound.port();
    [format!("127.0.0.1:{port}"), format!("localhost:{port}")]
}

fn host_ok(headers: &HeaderMap, bound: SocketAddr) -> bool {
    let host = get(headers, "host").unwrap_or("");
    hosts(bound).iter().any(|h| h == host)
}

/// `Some(true)`: an Origin of this server; `Some(false)`: another origin; `None`: none sent.
fn origin(headers: &HeaderMap, bound: SocketAddr) -> Option<bool> {
    let o = get(headers, "origin")?;
    Some(hosts(bound).iter().any(|h| o == format!("http://{h}")))
}

/// Whether the request carries the API token or a live session as a bearer token.
fn bearer_ok(headers: &HeaderMap, s: &Shared) -> bool {
    let Some(t) = get(headers, "authorization").and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    bool::from(t.as_bytes().ct_eq(s.token.as_bytes())) || s.ui.session_valid(t)
}

fn secure_headers(h: &mut HeaderMap, bound: SocketAddr) {
    let port = bound.port();
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; \
         connect-src 'self' ws://127.0.0.1:{port} ws://localhost:{port}; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    );
    let set = |h: &mut HeaderMap, k: &'static str, v: &str| {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(k, v);
        }
    };
    set(h, "content-security-policy", &csp);
    set(h, "referrer-policy", "no-referrer");
    set(h, "x-content-type-options", "nosniff");
    set(h, "x-frame-options", "DENY");
    set(h, "cross-origin-opener-policy", "same-origin");
    set(h, "cross-origin-resource-policy", "same-origin");
    if !h.contains_key(header::CACHE_CONTROL) {
        set(h, "cache-control", "no-store");
    }
}

async fn handle(req: Request<Incoming>, s: &Arc<Shared>) -> Response<Body> {
    let mut resp = route(req, s).await;
    secure_headers(resp.headers_mut(), s.bound);
    resp
}

async fn route(req: Request<Incoming>, s: &Arc<Shared>) -> Response<Body> {
    if !host_ok(req.headers(), s.bound) {
        return error(StatusCode::FORBIDDEN, "bad Host header");
    }
    let path = req.uri().path().to_owned();
    let websocket =
        get(req.headers(), "upgrade").is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    match (req.method().clone(), path.as_str()) {
        (Method::GET, "/" | "/api") if websocket => upgrade(req, s),
        (Method::GET | Method::HEAD, "/" | "/index.html") => asset(&req, s, "index.html"),
        (Method::GET | Method::HEAD, p) if p.starts_with("/ui/") => asset(&req, s, &p[4..]),
        (Method::POST, "/session") => session(req, s).await,
        (Method::POST, "/upload") => upload(req, s).await,
        (Method::GET, p) if p.starts_with("/files/") => file(&req, s, &p[7..]).await,
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

fn asset(req: &Request<Incoming>, s: &Shared, path: &str) -> Response<Body> {
    let Some(a) = s.ui.file(path) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let fresh = get(req.headers(), "if-none-match").is_some_and(|t| t == a.etag);
    let mut r = if fresh {
        respond(StatusCode::NOT_MODIFIED, empty())
    } else if req.method() == Method::HEAD {
        respond(StatusCode::OK, empty())
    } else {
        respond(StatusCode::OK, body(a.bytes))
    };
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(a.mime));
    if let Ok(v) = HeaderValue::from_str(&a.etag) {
        h.insert(header::ETAG, v);
    }
    // Revalidated on every load (cheap with the ETag), so a new build shows at once.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

/// `POST /session {"code"}` → `{"token"}`: the one-time code from `tern ui` for a session.
async fn session(req: Request<Incoming>, s: &Shared) -> Response<Body> {
    if origin(req.headers(), s.bound) != Some(true) {
        return error(StatusCode::FORBIDDEN, "this origin may not start a session");
    }
    let Some(bytes) = read_small(req.into_body(), 1024).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "request too large");
    };
    let code = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("code").and_then(|c| c.as_str()).map(str::to_owned));
    match code.and_then(|c| s.ui.redeem(&c)) {
        Some(token) => json_response(StatusCode::OK, json!({"token": token})),
        None => error(
            StatusCode::UNAUTHORIZED,
            "this link was used or has expired: run `tern ui` again",
        ),
    }
}

async fn read_small(mut b: Incoming, max: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(frame) = b.frame().await {
        if let Ok(data) = frame.ok()?.into_data() {
            out.extend_from_slice(&data);
            if out.len() > max {
                return None;
            }
        }
    }
    Some(out)
}

fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// `POST /upload?name=NAME` with the file's bytes → `{"path"}`, for `file.send`: the web UI
/// has bytes, not a path. The copy is deleted once the node has staged it.
async fn upload(req: Request<Incoming>, s: &Shared) -> Response<Body> {
    if origin(req.headers(), s.bound) == Some(false) {
        return error(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    if !bearer_ok(req.headers(), s) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong token");
    }
    let name = safe_name(&query_param(req.uri().query(), "name").unwrap_or_default());
    let Some(id) = super::ui::random_hex(8) else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "no randomness");
    };
    // A directory per upload, so the file keeps the name the person chose.
    let dir = s.uploads.join(id);
    if let Err(e) = crate::home::create_private_dir(&s.uploads)
        .and_then(|()| crate::home::create_private_dir(&dir))
    {
        return error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string());
    }
    let path = dir.join(name);
    match receive_file(req.into_body(), &path).await {
        Ok(()) => json_response(StatusCode::OK, json!({"path": path.display().to_string()})),
        Err((status, why)) => {
            let _ = std::fs::remove_dir_all(&dir);
            error(status, &why)
        }
    }
}

async fn receive_file(mut b: Incoming, path: &std::path::Path) -> Result<(), (StatusCode, String)> {
    let internal = |e: std::io::Error| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let mut f = crate::media::stage::create_private(path).map_err(internal)?;
    let mut total = 0u64;
    while let Some(frame) = b.frame().await {
        let frame = frame.map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            total += data.len() as u64;
            if total > MAX_FILE_BYTES {
                return Err((
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("files are at most {MAX_FILE_BYTES} bytes (100 MiB)"),
                ));
            }
            f.write_all(&data).map_err(internal)?;
        }
    }
    f.sync_all().map_err(internal)
}

/// A writer that hands what it is given to an HTTP body, chunk by chunk (from a blocking
/// task; it blocks while the client is slow).
struct ToBody(mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>);

impl Write for ToBody {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Frame::data(Bytes::copy_from_slice(buf))))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `GET /files/<message id>`: the file's plaintext, decrypted on read.
async fn file(req: &Request<Incoming>, s: &Shared, id: &str) -> Response<Body> {
    if origin(req.headers(), s.bound) == Some(false) {
        return error(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    if !bearer_ok(req.headers(), s) {
        return error(StatusCode::UNAUTHORIZED, "missing or wrong token");
    }
    let local = match s.node.file_open(id.to_owned()).await {
        Ok(l) => l,
        Err(e) => return error(StatusCode::NOT_FOUND, &e.to_string()),
    };
    let (tx, rx) = mpsc::channel(8);
    let (path, key, sha, size) = (
        local.path.clone(),
        local.key.clone(),
        local.sha256,
        local.size,
    );
    tokio::task::spawn_blocking(move || {
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, ToBody(tx.clone()));
        let done =
            crate::media::stage::decrypt_into(&key, &path, &mut w, &sha, size).and_then(|()| {
                w.flush().map_err(|e| crate::media::stage::StageError::Io {
                    what: "sending".into(),
                    source: e,
                })
            });
        if let Err(e) = done {
            // The client sees a cut body, never a whole one that did not verify.
            let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut r = respond(StatusCode::OK, StreamBody::new(stream).boxed());
    let h = r.headers_mut();
    // Only plain raster images keep their type; anything else is bytes to save.
    let mime: &'static str = match local.mime.as_str() {
        "image/jpeg" => "image/jpeg",
        "image/png" => "image/png",
        "image/gif" => "image/gif",
        _ => "application/octet-stream",
    };
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(mime));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    let disposition = format!(
        "attachment; filename=\"{}\"",
        local.name.replace(['"', '\\'], "_")
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// Upgrades to the WebSocket API after checking Origin and the credential.
fn upgrade(mut req: Request<Incoming>, s: &Arc<Shared>) -> Response<Body> {
    if origin(req.headers(), s.bound) == Some(false) {
        return error(StatusCode::FORBIDDEN, "cross-origin request refused");
    }
    let offered: Vec<String> = get(req.headers(), "sec-websocket-protocol")
        .map(|p| p.split(',').map(|x| x.trim().to_owned()).collect())
        .unwrap_or_default();
    // The API token (the CLI) may do everything; a page's session all but what would
    // outlive or go beyond the page (see `server::SESSION_DENIED`).
    let bearer = get(req.headers(), "authorization").and_then(|h| h.strip_prefix("Bearer "));
    let session = if bearer.is_some_and(|t| bool::from(t.as_bytes().ct_eq(s.token.as_bytes()))) {
        None
    } else {
        let offered_session = offered.iter().find_map(|p| p.strip_prefix("tern.session."));
        match offered_session.or(bearer) {
            Some(t) if s.ui.session_valid(t) => Some(t.to_owned()),
            _ => return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"),
        }
    };
    let Some(key) =
        get(req.headers(), "sec-websocket-key").map(|k| derive_accept_key(k.as_bytes()))
    else {
        return error(StatusCode::BAD_REQUEST, "not a WebSocket handshake");
    };
    if get(req.headers(), "sec-websocket-version") != Some("13") {
        return error(StatusCode::BAD_REQUEST, "WebSocket version 13 only");
    }
    let Ok(slot) = s.sessions.clone().try_acquire_owned() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many API connections; close one and try again",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    let shared = s.clone();
    tokio::spawn(async move {
        let _slot = slot;
        match on_upgrade.await {
            Ok(up) => {
                let config = WebSocketConfig::default()
                    .max_message_size(Some(MAX_API_MESSAGE_BYTES))
                    .max_frame_size(Some(MAX_API_MESSAGE_BYTES));
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, Some(config))
                        .await;
                if let Err(e) = super::server::rpc(ws, shared, session).await {
                    tracing::debug!("API connection ended: {e}");
                }
            }
            Err(e) => tracing::debug!("WebSocket upgrade failed: {e}"),
        }
    });
    let mut r = respond(StatusCode::SWITCHING_PROTOCOLS, empty());
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&key) {
        h.insert("sec-websocket-accept", v);
    }
    if offered.iter().any(|p| p == "tern.v1") {
        h.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static("tern.v1"),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_names_are_decoded() {
        assert_eq!(
            query_param(Some("name=caf%C3%A9%20photo.jpg"), "name").as_deref(),
            Some("café photo.jpg")
        );
        assert_eq!(
            query_param(Some("a=1&name=x+y"), "name").as_deref(),
            Some("x y")
        );
        assert_eq!(
            query_param(Some("name=100%"), "name").as_deref(),
            Some("100%")
        );
        assert_eq!(
            query_param(Some("name=%zz"), "name").as_deref(),
            Some("%zz")
        );
        assert_eq!(query_param(None, "name"), None);
    }
}
