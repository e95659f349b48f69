//! A client of the local API.

use std::{collections::VecDeque, net::SocketAddr, time::Duration};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue},
};

use crate::{
    api::{read_node_file, read_token},
    home::Home,
    types::Event,
};

/// Most events buffered while waiting for a call's answer.
const MAX_BUFFERED_EVENTS: usize = 10_000;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No node is running for this home.
    #[error("no Tern node is running for {home}; start one with `tern --home {home} up`")]
    NotRunning {
        /// The home directory.
        home: String,
    },
    /// The connection failed.
    #[error("API connection: {0}")]
    Connection(String),
    /// The connection ended after a call was sent and before its answer came (the node
    /// stopped, say): the call may or may not have been carried out.
    #[error(
        "the node's API connection ended before it answered ({0}); the node may have \
         stopped, and what was asked may or may not have been done (a text sent again with \
         the same --client-id is sent once)"
    )]
    Lost(String),
    /// The node has as many API sessions open as it allows
    /// ([`MAX_API_CONNECTIONS`](crate::consts::MAX_API_CONNECTIONS)); one may be opened once
    /// another closes.
    #[error(
        "the node has {} API connections open, the most it allows; try again when one closes",
        crate::consts::MAX_API_CONNECTIONS
    )]
    Busy,
    /// The node answered with an error.
    #[error("{message}")]
    Rpc {
        /// The JSON-RPC error code.
        code: i64,
        /// The message.
        message: String,
    },
    /// The answer was not what was expected.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// No answer in time.
    #[error("the node did not answer within {0:?}")]
    Timeout(Duration),
}

/// Why opening a session failed: nothing listening, or any other reason.
enum Open {
    Refused,
    Failed(ClientError),
}

/// A connected API client.
#[derive(Debug)]
pub struct ApiClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: VecDeque<Event>,
}

/// A connection that failed while a call waited for its answer: [`ClientError::Lost`].
fn lost(e: ClientError) -> ClientError {
    match e {
        ClientError::Connection(why) => ClientError::Lost(why),
        e => e,
    }
}

/// The result or error a JSON-RPC response carries.
fn reply(v: &Value) -> Result<Value, ClientError> {
    match v.get("error") {
        Some(err) => Err(ClientError::Rpc {
            code: err.get("code").and_then(Value::as_i64).unwrap_or(0),
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("error")
                .to_owned(),
        }),
        None => Ok(v.get("result").cloned().unwrap_or(Value::Null)),
    }
}

impl ApiClient {
    /// Connects to the node running for `home` (from its `node.json` and `api.token`).
    pub async fn for_home(home: &Home) -> Result<Self, ClientError> {
        let not_running = || ClientError::NotRunning {
            home: home.dir().display().to_string(),
        };
        let file = read_node_file(&home.node_file_path()).ok_or_else(not_running)?;
        let token = read_token(home).map_err(|_| not_running())?;
        Self::open(file.api, &token).await.map_err(|e| match e {
            // Nothing listens where the node said it would: it has stopped (or crashed and
            // left its file behind).
            Open::Refused => not_running(),
            Open::Failed(e) => e,
        })
    }

    /// Connects to the API at `addr` with `token`. A node with every API session taken is
    /// [`ClientError::Busy`].
    pub async fn connect(addr: SocketAddr, token: &str) -> Result<Self, ClientError> {
        Self::open(addr, token).await.map_err(|e| match e {
            Open::Refused => ClientError::Connection(format!("connection to {addr} refused")),
            Open::Failed(e) => e,
        })
    }

    async fn open(addr: SocketAddr, token: &str) -> Result<Self, Open> {
        use tokio_tungstenite::tungstenite::{Error as WsError, http::StatusCode};
        let failed = |e: String| Open::Failed(ClientError::Connection(e));
        let mut req = format!("ws://{addr}/")
            .into_client_request()
            .map_err(|e| failed(e.to_string()))?;
        let value =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| failed(e.to_string()))?;
        req.headers_mut().insert("authorization", value);
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .map_err(|e| match e {
                WsError::Io(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    Open::Refused
                }
                WsError::Http(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    Open::Failed(ClientError::Busy)
                }
                e => failed(e.to_string()),
            })?;
        Ok(ApiClient {
            ws,
            next_id: 1,
            events: VecDeque::new(),
        })
    }

    /// Calls a method and returns its result.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.ws
            .send(Message::text(req.to_string()))
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        loop {
            let v = self.read().await.map_err(lost)?;
            if v.get("method").and_then(Value::as_str) == Some("event") {
                self.buffer(v);
                continue;
            }
            if v.get("id").and_then(Value::as_u64) != Some(id) {
                continue;
            }
            return reply(&v);
        }
    }

    /// Sends every call at once, without waiting between them (as a UI or a script
    /// pipelines them on one connection), then collects the replies: one result per call,
    /// in the order of `calls`.
    pub async fn call_many(
        &mut self,
        calls: &[(&str, Value)],
    ) -> Result<Vec<Result<Value, ClientError>>, ClientError> {
        let first = self.next_id;
        for (method, params) in calls {
            let id = self.next_id;
            self.next_id += 1;
            let req = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
            self.ws
                .feed(Message::text(req.to_string()))
                .await
                .map_err(|e| ClientError::Connection(e.to_string()))?;
        }
        self.ws
            .flush()
            .await
            .map_err(|e| ClientError::Connection(e.to_string()))?;
        let mut out: Vec<Option<Result<Value, ClientError>>> =
            std::iter::repeat_with(|| None).take(calls.len()).collect();
        let mut left = calls.len();
        while left > 0 {
            let v = self.read().await.map_err(lost)?;
            if v.get("method").and_then(Value::as_str) == Some("event") {
                self.buffer(v);
                continue;
            }
            let Some(slot) = v
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| id.checked_sub(first))
                .and_then(|i| usize::try_from(i).ok())
                .and_then(|i| out.get_mut(i))
            else {
                continue;
            };
            if slot.is_none() {
                left -= 1;
            }
            *slot = Some(reply(&v));
        }
        Ok(out.into_iter().flatten().collect())
    }

    fn buffer(&mut self, v: Value) {
        if let Some(ev) = v
            .get("params")
            .and_then(|p| serde_json::from_value::<Event>(p.clone()).ok())
        {
            if self.events.len() >= MAX_BUFFERED_EVENTS {
                self.events.pop_front();
            }
            self.events.push_back(ev);
        }
    }

    async fn read(&mut self) -> Result<Value, ClientError> {
        loop {
            let msg = self
                .ws
                .next()
                .await
                .ok_or_else(|| ClientError::Connection("closed".into()))?
                .map_err(|e| ClientError::Connection(e.to_string()))?;
            if let Message::Text(t) = msg {
                return serde_json::from_str(&t).map_err(|e| ClientError::Protocol(e.to_string()));
            }
        }
    }

    /// Asks for events (then read them with [`ApiClient::next_event`]).
    pub async fn subscribe(&mut self) -> Result<(), ClientError> {
        self.call("subscribe", json!({})).await.map(|_| ())
    }

    /// The next event, waiting at most `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event, ClientError> {
        if let Some(ev) = self.events.pop_front() {
            return Ok(ev);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = tokio::time::timeout_at(deadline, self.read())
                .await
                .map_err(|_| ClientError::Timeout(timeout))??;
            self.buffer(v);
            if let Some(ev) = self.events.pop_front() {
                return Ok(ev);
            }
        }
    }
}
