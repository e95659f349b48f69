//! The operator endpoint: `GET /metrics` (Prometheus text) and `GET /health`.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, oneshot, watch},
};

use super::{
    metrics::Metrics,
    storage::{Op, StorageHandle},
};

/// Most HTTP connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 64;
/// A health check fails if the storage writer does not commit a no-op within this time.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest life of one HTTP connection.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind metrics endpoint {addr}")]
pub struct BindError {
    /// The address.
    pub addr: SocketAddr,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Binds the endpoint and serves it until `shutdown` flips. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    storage: StorageHandle,
    mut shutdown: watch::Receiver<bool>,
) -> Result<SocketAddr, BindError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { addr, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| BindError { addr, source })?;
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => break,
            };
            let Ok((stream, _)) = accepted else { continue };
            let metrics = metrics.clone();
            let storage = storage.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| handle(req, metrics.clone(), storage.clone()));
                let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                drop(permit);
            });
        }
    });
    Ok(local)
}

fn reply(status: StatusCode, ctype: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

async fn handle(
    req: Request<Incoming>,
    metrics: Arc<Metrics>,
    storage: StorageHandle,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.method() != Method::GET {
        return Ok(reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        ));
    }
    Ok(match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            metrics.render(),
        ),
        "/health" => {
            let (tx, rx) = oneshot::channel();
            let ok = storage.submit(Op::Ping { reply: tx }).is_ok()
                && matches!(
                    tokio::time::timeout(HEALTH_TIMEOUT, rx).await,
                    Ok(Ok(Ok(())))
                );
            if ok {
                reply(StatusCode::OK, "text/plain", "ok\n".into())
            } else {
                reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    "storage unavailable\n".into(),
                )
            }
        }
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    })
}
