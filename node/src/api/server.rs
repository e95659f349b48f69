//! The API server: JSON-RPC 2.0 over WebSocket, behind the HTTP front in `http.rs` that
//! checks `Host`, `Origin` and the credential (the API token, or a web UI session) before the
//! upgrade, and also serves the web UI.

use std::{net::SocketAddr, sync::Arc};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::{
    net::TcpListener,
    sync::{Semaphore, mpsc},
    task::JoinHandle,
};
use tokio_tungstenite::{WebSocketStream, tungstenite::Message};

use super::{
    http::{Shared, serve_connection},
    ui::Ui,
};
use crate::{
    Node, NodeError,
    consts::{MAX_API_CONNECTIONS, MAX_HTTP_CONNECTIONS},
    types::Event,
};

/// When the node stops, how long a connection whose requests are all answered waits for
/// more (each refused with 1011) before it closes.
const STOP_QUIET: std::time::Duration = std::time::Duration::from_millis(50);

/// How often a connection opened with a web UI session looks whether it is still live
/// (its age), whatever comes on it.
const SESSION_AGE_CHECK: std::time::Duration = std::time::Duration::from_secs(60);

/// Queue of outgoing frames per connection.
const OUTGOING_QUEUE: usize = 256;

/// Why the API could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Only loopback addresses are allowed.
    #[error("the API listens on loopback only, not {0}")]
    NotLoopback(SocketAddr),
    /// Binding failed.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// The running API server ([`serve`]): [`ApiServer::stop`] ends it gracefully.
#[derive(Debug)]
pub struct ApiServer {
    accept: JoinHandle<()>,
    shared: Arc<Shared>,
}

impl ApiServer {
    /// Stops the API gracefully, within `grace`: no new connection is taken; a request that
    /// comes on an open connection from now on is answered 1011 ("the node is stopping")
    /// and not served; those being served are answered; then every connection is closed
    /// with a close frame. A client thus never loses the answer to a request the node took
    /// (a `send` that was stored is answered with its message id).
    pub async fn stop(self, grace: std::time::Duration) {
        self.accept.abort();
        self.shared.stopping.send_replace(true);
        let all = u32::try_from(MAX_API_CONNECTIONS).unwrap_or(u32::MAX);
        if tokio::time::timeout(grace, self.shared.sessions.acquire_many(all))
            .await
            .is_err()
        {
            tracing::warn!("API connections still open after the stop's grace; closing them");
        }
    }
}

/// Serves the API and the web UI for `node` on `addr` (port 0 picks one); `home` is the
/// node's home (uploads from the web UI wait under it). Returns the bound address and the
/// server, to stop.
pub async fn serve(
    node: Node,
    addr: SocketAddr,
    token: String,
    home: &crate::Home,
) -> Result<(SocketAddr, ApiServer), ServeError> {
    if !addr.ip().is_loopback() {
        return Err(ServeError::NotLoopback(addr));
    }
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })?;
    let shared = Arc::new(Shared {
        node,
        token,
        bound,
        ui: Ui::with_home(home.dir()),
        uploads: home.uploads_dir(),
        home: home.clone(),
        sessions: Arc::new(Semaphore::new(MAX_API_CONNECTIONS)),
        stopping: tokio::sync::watch::Sender::new(false),
    });
    // Connections not yet authenticated get a slot of their own, taken without waiting: the
    // accept loop never blocks, a connection over the cap is closed at once, and one that
    // sends no request within the header timeout is closed then. An API session (a
    // WebSocket) takes one of `MAX_API_CONNECTIONS` only once its credential checked out, so
    // idle strangers on the port cannot lock the CLI out.
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    let accepted = shared.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            let shared = accepted.clone();
            tokio::spawn(async move {
                serve_connection(stream, shared).await;
                drop(permit);
            });
        }
    });
    Ok((
        bound,
        ApiServer {
            accept: task,
            shared,
        },
    ))
}

/// Methods a connection opened with a web UI session may not call: making codes (a
/// session would renew itself for good), writing the account's backup to a path, stopping
/// the node, and changing where its mail lives (home relays). The API token (the CLI) calls
/// them. A session's `file.send` takes only a file
/// the page uploaded, and its `file.get` no `to` path (see [`session_refusal`]).
pub(super) const SESSION_DENIED: [&str; 5] = [
    "ui.code",
    "id.backup",
    "node.stop",
    "relay.add",
    "relay.remove",
];

/// Why a web UI session may not make this request, if it may not: a method in
/// [`SESSION_DENIED`], a `file.send` of a file that is not one the page uploaded (it would
/// read any file the node can, the API token among them, and serve it back decrypted), or a
/// `file.get` to a path (it would write anywhere).
fn session_refusal(shared: &Shared, method: &str, params: &Value) -> Option<String> {
    let refused = match method {
        m if SESSION_DENIED.contains(&m) => true,
        "file.send" => params
            .get("path")
            .and_then(Value::as_str)
            .is_none_or(|p| shared.home.upload_dir(std::path::Path::new(p)).is_none()),
        "file.get" => params.get("to").is_some_and(|t| !t.is_null()),
        _ => false,
    };
    refused.then(|| match method {
        "file.send" => "a web UI page sends only files it uploaded (POST /upload)".to_owned(),
        "file.get" => "a web UI page reads files through GET /files, not to a path".to_owned(),
        _ => format!("{method} is not open to the web UI; use the tern CLI"),
    })
}

/// The error a web UI session gets for a method in [`SESSION_DENIED`].
const SESSION_DENIED_CODE: i64 = 1023;

/// One WebSocket connection of the JSON-RPC API, after the upgrade: opened with the API
/// token (`session` is `None`), or with the web UI session `session`, which may not call
/// [`SESSION_DENIED`] and is closed once the session ends (`ui.sign_out`, its age).
pub(super) async fn rpc<S>(
    ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    session: Option<String>,
) -> Result<(), tokio_tungstenite::tungstenite::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let node = shared.node.clone();
    let (mut sink, mut source) = ws.split();
    let (out_tx, mut out_rx) = mpsc::channel::<String>(OUTGOING_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(text) = out_rx.recv().await {
            if sink.send(Message::text(text)).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    // The task forwarding events, once subscribed; stopped when the connection ends, so
    // that the writer (and with it the socket) closes even while the peer is still there.
    let mut events: Option<tokio::task::JoinHandle<()>> = None;
    let mut ended = shared.ui.ended();
    // Requests being served, each waiting for its answer; when the node stops, the
    // connection closes once they are all answered (see `ApiServer::stop`).
    let mut serving = tokio::task::JoinSet::new();
    let mut stop = shared.stopping.subscribe();
    let mut stopping = *stop.borrow_and_update();
    let mut broken = None;
    // A session ended between the upgrade's check and the watch above is seen here; one
    // that reaches its age is seen by a look every minute, requests or not.
    if session
        .as_deref()
        .is_some_and(|t| !shared.ui.session_valid(t))
    {
        return Ok(());
    }
    let mut age = tokio::time::interval(SESSION_AGE_CHECK);
    loop {
        let msg = tokio::select! {
            msg = source.next() => msg,
            Some(_) = serving.join_next(), if !serving.is_empty() => continue,
            // Stopping, everything taken answered, and nothing more coming (what a client
            // pipelined is read and refused first): the socket closes.
            () = tokio::time::sleep(STOP_QUIET), if stopping && serving.is_empty() => break,
            Ok(()) = stop.changed(), if !stopping => {
                stopping = true;
                continue;
            }
            // Sessions were ended, or one may have aged out: one whose own is gone stops.
            _ = age.tick(), if session.is_some() => {
                if session.as_deref().is_some_and(|t| !shared.ui.session_valid(t)) {
                    break;
                }
                continue;
            }
            Ok(()) = ended.changed(), if session.is_some() => {
                if session.as_deref().is_some_and(|t| !shared.ui.session_valid(t)) {
                    break;
                }
                continue;
            }
        };
        let Some(msg) = msg else { break };
        // A session also ends by its age, between two requests.
        if session
            .as_deref()
            .is_some_and(|t| !shared.ui.session_valid(t))
        {
            break;
        }
        let text = match msg {
            Ok(Message::Text(t)) => t.to_string(),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => {
                broken = Some(e);
                break;
            }
        };
        let req: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => {
                let _ = out_tx
                    .send(error_response(Value::Null, -32700, "parse error"))
                    .await;
                continue;
            }
        };
        let id = req.get("id").cloned().unwrap_or(Value::Null);
        let Some(method) = req.get("method").and_then(Value::as_str).map(str::to_owned) else {
            let _ = out_tx
                .send(error_response(id, -32600, "invalid request"))
                .await;
            continue;
        };
        let params = req.get("params").cloned().unwrap_or(json!({}));
        if stopping {
            let reply = error_response(
                id,
                NodeError::Stopped.code(),
                &NodeError::Stopped.to_string(),
            );
            let _ = out_tx.send(reply).await;
            continue;
        }
        if session.is_some()
            && let Some(why) = session_refusal(&shared, &method, &params)
        {
            let _ = out_tx
                .send(error_response(id, SESSION_DENIED_CODE, &why))
                .await;
            continue;
        }
        match method.as_str() {
            "ui.sign_out" => {
                let ended = match (&session, params.get("all").and_then(Value::as_bool)) {
                    (Some(t), Some(false) | None) => usize::from(shared.ui.end_session(t)),
                    _ => shared.ui.end_all(),
                };
                let _ = out_tx
                    .send(result_response(id, json!({"ended": ended})))
                    .await;
                continue;
            }
            "subscribe" => {
                if events.is_none() {
                    events = Some(spawn_events(node.clone(), out_tx.clone()));
                }
                let _ = out_tx.send(result_response(id, json!(true))).await;
                continue;
            }
            "ui.code" => {
                let reply = match shared.ui.new_code() {
                    Some(code) => result_response(
                        id,
                        json!({
                            "code": code,
                            "url": format!("http://{}/#c={code}", shared.bound),
                            "expires_in": super::ui::CODE_TTL.as_secs(),
                        }),
                    ),
                    None => error_response(id, 1007, "no randomness for a code"),
                };
                let _ = out_tx.send(reply).await;
                continue;
            }
            "qr" => {
                let reply = match str_param(&params, "text") {
                    Ok(t) if t.len() <= 2048 => match super::ui::qr_svg(&t) {
                        Ok(svg) => result_response(id, json!({"svg": svg})),
                        Err(e) => error_response(id, -32602, &format!("cannot encode: {e}")),
                    },
                    Ok(_) => error_response(id, -32602, "text longer than 2048 bytes"),
                    Err(e) => error_response(id, e.code(), &e.to_string()),
                };
                let _ = out_tx.send(reply).await;
                continue;
            }
            _ => {}
        }
        let out = out_tx.clone();
        // Sends are queued at the engine here, in the order they came on this connection, so
        // a client that pipelines texts has them sent (and numbered) in its order; only the
        // wait for the reply runs apart.
        if let Some(queued) = queue_ordered(&node, &method, &params).await {
            serving.spawn(async move {
                let reply = match queued {
                    Ok(pending) => pending.wait().await.and_then(to_value),
                    Err(e) => Err(e),
                };
                let reply = match reply {
                    Ok(v) => result_response(id, v),
                    Err(e) => error_response(id, e.code(), &e.to_string()),
                };
                let _ = out.send(reply).await;
            });
            continue;
        }
        let node = node.clone();
        serving.spawn(async move {
            let reply = match dispatch(&node, &method, &params).await {
                Ok(v) => result_response(id, v),
                Err(e) => error_response(id, e.code(), &e.to_string()),
            };
            let _ = out.send(reply).await;
        });
    }
    if !stopping {
        // The client left, or its session ended: what it asked for still runs to its end
        // (its answer has nowhere to go).
        serving.detach_all();
    }
    if let Some(events) = events {
        events.abort();
    }
    drop(out_tx);
    let _ = writer.await;
    broken.map_or(Ok(()), Err)
}

fn spawn_events(node: Node, out: mpsc::Sender<String>) -> tokio::task::JoinHandle<()> {
    let mut rx = node.subscribe();
    tokio::spawn(async move {
        // Numbered per connection, so a client sees a gap (and fetches again).
        let mut seq: u64 = 0;
        loop {
            let ev = match rx.recv().await {
                Ok(ev) => ev,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    Event::Lagged { missed: n }
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            };
            seq += 1;
            let mut params = serde_json::to_value(&ev).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut params {
                o.insert("seq".into(), json!(seq));
            }
            let note = json!({"jsonrpc": "2.0", "method": "event", "params": params});
            if out.send(note.to_string()).await.is_err() {
                return;
            }
        }
    })
}

fn result_response(id: Value, result: Value) -> String {
    json!({"jsonrpc": "2.0", "id": id, "result": result}).to_string()
}

fn error_response(id: Value, code: i64, message: &str) -> String {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}).to_string()
}

fn str_param(params: &Value, name: &str) -> Result<String, NodeError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| NodeError::BadRequest(format!("missing string parameter {name:?}")))
}

fn opt_str(params: &Value, name: &str) -> Option<String> {
    params.get(name).and_then(Value::as_str).map(str::to_owned)
}

/// How `file.send` prepares the file: `original` (an image at full size) or `as_file` (as
/// it is), not both.
fn prepare_param(p: &Value) -> Result<crate::types::Prepare, NodeError> {
    use crate::types::Prepare;
    match (
        opt_bool(p, "original")?.unwrap_or(false),
        opt_bool(p, "as_file")?.unwrap_or(false),
    ) {
        (true, true) => Err(NodeError::BadRequest(
            "give original or as_file, not both".into(),
        )),
        (true, false) => Ok(Prepare::Original),
        (false, true) => Ok(Prepare::AsFile),
        (false, false) => Ok(Prepare::Scaled),
    }
}

/// How much a history request marks read: `mark_read` (all) or `mark_read_ids` (the
/// messages named, at most [`crate::consts::HISTORY_MAX`]), not both.
fn mark_read_param(p: &Value) -> Result<crate::types::MarkRead, NodeError> {
    use crate::types::MarkRead;
    let max = crate::consts::HISTORY_MAX as usize;
    let ids = match p.get("mark_read_ids") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) if a.len() <= max => Some(
            a.iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| NodeError::BadRequest("mark_read_ids must be message ids".into()))?,
        ),
        Some(_) => {
            return Err(NodeError::BadRequest(format!(
                "mark_read_ids must be a list of at most {max} message ids"
            )));
        }
    };
    match (opt_bool(p, "mark_read")?.unwrap_or(false), ids) {
        (true, Some(_)) => Err(NodeError::BadRequest(
            "give mark_read or mark_read_ids, not both".into(),
        )),
        (true, None) => Ok(MarkRead::All),
        (false, Some(ids)) => Ok(MarkRead::Ids(ids)),
        (false, None) => Ok(MarkRead::Nothing),
    }
}

/// A text's parameters: whom to (`to`), the text, and the client's key for it.
fn text_params(p: &Value, to: &str) -> Result<(String, String, Option<String>), NodeError> {
    Ok((
        str_param(p, to)?,
        str_param(p, "text")?,
        opt_str_strict(p, "client_id")?,
    ))
}

/// An optional parameter that, when present, must be a string.
fn opt_str_strict(params: &Value, name: &str) -> Result<Option<String>, NodeError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(NodeError::BadRequest(format!(
            "parameter {name:?} must be a string"
        ))),
    }
}

/// An optional parameter that, when present, must be a boolean.
fn opt_bool(params: &Value, name: &str) -> Result<Option<bool>, NodeError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(NodeError::BadRequest(format!(
            "parameter {name:?} must be true or false"
        ))),
    }
}

/// An optional parameter that, when present, must be a whole number that fits a `u32`.
fn opt_u32(params: &Value, name: &str) -> Result<Option<u32>, NodeError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                NodeError::BadRequest(format!(
                    "parameter {name:?} must be a whole number from 0 to {}",
                    u32::MAX
                ))
            }),
    }
}

/// A list of member names or user ids: an array of strings. `required`: it must be present
/// and hold at least one name.
fn members_param(params: &Value, name: &str, required: bool) -> Result<Vec<String>, NodeError> {
    let list = match params.get(name) {
        None | Some(Value::Null) if !required => return Ok(Vec::new()),
        None | Some(Value::Null) => {
            return Err(NodeError::BadRequest(format!(
                "missing parameter {name:?} (an array of contact names or user ids)"
            )));
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            return Err(NodeError::BadRequest(format!(
                "parameter {name:?} must be an array of contact names or user ids"
            )));
        }
    };
    let members = list
        .iter()
        .map(|m| match m {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            _ => Err(NodeError::BadRequest(format!(
                "every entry of {name:?} must be a non-empty string (a contact name or user id)"
            ))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if required && members.is_empty() {
        return Err(NodeError::BadRequest(format!(
            "parameter {name:?} must name at least one member"
        )));
    }
    Ok(members)
}

fn to_value<T: serde::Serialize>(v: T) -> Result<Value, NodeError> {
    serde_json::to_value(v).map_err(|e| NodeError::BadRequest(e.to_string()))
}

/// Queues a method whose order matters (a text to a contact or a group) at the engine now;
/// `None` for every other method.
async fn queue_ordered(
    node: &Node,
    method: &str,
    p: &Value,
) -> Option<Result<crate::Pending<crate::types::MessageInfo>, NodeError>> {
    Some(match method {
        "send" => match text_params(p, "contact") {
            Ok((c, t, k)) => node.queue_send(c, t, k).await,
            Err(e) => Err(e),
        },
        "group_send" => match text_params(p, "group") {
            Ok((g, t, k)) => node.queue_group_send(g, t, k).await,
            Err(e) => Err(e),
        },
        _ => return None,
    })
}

async fn dispatch(node: &Node, method: &str, p: &Value) -> Result<Value, NodeError> {
    match method {
        "id.show" => to_value(node.id().await?),
        "contact.link" => to_value(node.contact_link().await?),
        "contact.add" => to_value(
            node.add_contact(
                str_param(p, "link")?,
                opt_str(p, "name"),
                p.get("accept_new_key")
                    .and_then(Value::as_bool)
                    .unwrap_or(false),
            )
            .await?,
        ),
        "contact.accept" => to_value(node.accept_identity(str_param(p, "contact")?).await?),
        "contact.list" => to_value(node.contacts().await?),
        "contact.find" => to_value(node.find_contact(str_param(p, "contact")?).await?),
        "device.add" => to_value(node.device_add(str_param(p, "code")?).await?),
        "device.list" => to_value(node.devices().await?),
        "device.revoke" => to_value(node.device_revoke(str_param(p, "device")?).await?),
        "file.send" => to_value(
            node.file_send(
                opt_str_strict(p, "contact")?,
                opt_str_strict(p, "group")?,
                str_param(p, "path")?,
                opt_str_strict(p, "caption")?.unwrap_or_default(),
                prepare_param(p)?,
            )
            .await?,
        ),
        "file.get" => to_value(
            node.file_get(str_param(p, "message")?, opt_str_strict(p, "to")?)
                .await?,
        ),
        "file.transfers" => to_value(node.transfers().await?),
        "id.backup" => to_value(
            node.id_backup(
                str_param(p, "path")?.into(),
                zeroize::Zeroizing::new(str_param(p, "passphrase")?),
            )
            .await?,
        ),
        "history" => to_value(
            node.history(
                str_param(p, "contact")?,
                p.get("limit")
                    .and_then(Value::as_u64)
                    .map(|l| u32::try_from(l).unwrap_or(u32::MAX)),
                opt_str(p, "before"),
                mark_read_param(p)?,
            )
            .await?,
        ),
        "conversations" => to_value(node.conversations().await?),
        "presence" => to_value(node.presence(opt_str(p, "contact")).await?),
        "node.stop" => {
            node.request_stop();
            Ok(Value::Null)
        }
        "status.set" => {
            let away = match str_param(p, "status")?.as_str() {
                "away" => true,
                "online" => false,
                other => {
                    return Err(NodeError::BadRequest(format!(
                        "status must be online or away, not {other:?}"
                    )));
                }
            };
            node.set_status(away).await?;
            Ok(json!(true))
        }
        "status" => to_value(node.status().await?),
        "push.set" => to_value(node.push_set(str_param(p, "url")?).await?),
        "push.clear" => to_value(node.push_clear().await?),
        "push.status" => to_value(node.push_status().await?),
        "relay.add" => to_value(node.relay_add(str_param(p, "addr")?).await?),
        "relay.remove" => to_value(node.relay_remove(str_param(p, "addr")?).await?),
        "relay.list" => to_value(node.relay_list().await?),
        "search" => to_value(
            node.search(str_param(p, "query")?, opt_u32(p, "limit")?)
                .await?,
        ),
        "safety_number" => to_value(node.safety_number(str_param(p, "contact")?).await?),
        "contact.rename" => to_value(
            node.rename_contact(str_param(p, "contact")?, str_param(p, "name")?)
                .await?,
        ),
        "verify" => to_value(
            node.verify(str_param(p, "contact")?, opt_str(p, "scanned"))
                .await?,
        ),
        "group_create" => to_value(
            node.group_create(str_param(p, "title")?, members_param(p, "members", false)?)
                .await?,
        ),
        "group_add" => to_value(
            node.group_add(
                str_param(p, "group")?,
                members_param(p, "members", true)?,
                opt_bool(p, "admin")?.unwrap_or(false),
            )
            .await?,
        ),
        "group_remove" => to_value(
            node.group_remove(str_param(p, "group")?, members_param(p, "members", true)?)
                .await?,
        ),
        "group_leave" => to_value(node.group_leave(str_param(p, "group")?).await?),
        "group_info" => to_value(node.group_info(str_param(p, "group")?).await?),
        "group_list" => to_value(node.groups().await?),
        "group_history" => to_value(
            node.group_history(
                str_param(p, "group")?,
                opt_u32(p, "limit")?,
                opt_str_strict(p, "before")?,
                mark_read_param(p)?,
            )
            .await?,
        ),
        other => Err(NodeError::BadRequest(format!("unknown method {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_lists_are_checked() {
        let p = json!({"members": ["Bob", "0123456789abcdef0123456789abcdef"]});
        assert_eq!(members_param(&p, "members", true).unwrap().len(), 2);
        assert!(
            members_param(&json!({}), "members", false)
                .unwrap()
                .is_empty()
        );
        for bad in [
            json!({}),
            json!({"members": []}),
            json!({"members": "Bob"}),
            json!({"members": ["Bob", 7]}),
            json!({"members": [""]}),
        ] {
            let e = members_param(&bad, "members", true).unwrap_err();
            assert_eq!(e.code(), -32602, "{bad}: {e}");
        }
    }

    /// Typed ids go out as the strings they always were: hex for users, groups and
    /// conversations, the base58 PeerId for devices; and text that is no id is refused
    /// with a reason.
    #[test]
    fn ids_in_answers_are_the_same_strings() {
        use tern_crypto::{DeviceId, UserId, group::GroupId};
        let user = UserId::from_bytes([0x0f; 16]);
        let device = DeviceId::from_bytes([1; 32]);
        let ev = Event::Peer {
            user_id: user,
            device_id: device,
            relayed: false,
        };
        assert_eq!(
            to_value(&ev).unwrap(),
            json!({
                "type": "peer",
                "user_id": "0f".repeat(16),
                "device_id": "12D3KooW9tHTtS3inCZiYykw4u5G4frbjVFqhkmJX12gSNCVeH3e",
                "relayed": false,
            })
        );
        let receipt = Event::Receipt {
            conversation: GroupId::from_bytes([0xa0; 16]).into(),
            ids: vec![],
            status: crate::types::MessageStatus::Read,
        };
        let v = to_value(&receipt).unwrap();
        assert_eq!(v["conversation"], "a0".repeat(16));
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, receipt);
        let bad = json!({"type": "identity_changed", "user_id": "not hex"});
        let e = serde_json::from_value::<Event>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("a user id (32 hex digits)"), "{e}");
    }

    #[test]
    fn optional_parameters_have_types() {
        let p = json!({"limit": 20, "before": "ab", "mark_read": true});
        assert_eq!(opt_u32(&p, "limit").unwrap(), Some(20));
        assert_eq!(opt_str_strict(&p, "before").unwrap().as_deref(), Some("ab"));
        assert_eq!(opt_bool(&p, "mark_read").unwrap(), Some(true));
        assert_eq!(opt_u32(&json!({}), "limit").unwrap(), None);
        assert!(opt_u32(&json!({"limit": -1}), "limit").is_err());
        assert!(opt_u32(&json!({"limit": "5"}), "limit").is_err());
        assert!(opt_u32(&json!({"limit": 5_000_000_000u64}), "limit").is_err());
        assert!(opt_bool(&json!({"mark_read": "yes"}), "mark_read").is_err());
        assert!(opt_str_strict(&json!({"before": 3}), "before").is_err());
    }
}
