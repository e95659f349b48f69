//! Push wake-ups: a content-free JSON POST to a device's registered endpoint when mail
//! lands while it is offline, debounced per device and backed off on failure. Runs as
//! its own task so a slow endpoint never holds up mail.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use futures::{StreamExt, stream::FuturesUnordered};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use libp2p::PeerId;
use rustls::pki_types::{CertificateDer, pem::PemObject};
use tokio::sync::mpsc;

use super::{config::PushConfig, metrics::Metrics};
use crate::wire::mailbox::MAX_PUSH_URL_BYTES;

/// Capacity of the queue from the event loop to the push task; when it is full a
/// wake-up is dropped (and counted), never waited for.
pub const QUEUE_DEPTH: usize = 4096;
/// First back-off after a failed POST; doubles per failure up to `max_backoff_secs`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// The HTTP(S) client wake-ups are sent with.
type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Why the push client could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The extra root certificates could not be read.
    #[error("cannot read root certificates from {path}: {reason}")]
    Roots {
        /// The PEM file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// rustls refused the TLS configuration.
    #[error("cannot configure TLS for push: {0}")]
    Tls(String),
}

/// Builds the client: HTTPS with the system's roots plus `extra_root_certs`, or plain HTTP.
fn build_client(cfg: &PushConfig) -> Result<HttpClient, SetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "cannot load a system root certificate");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system root certificates for push");
    if let Some(path) = &cfg.extra_root_certs {
        let roots_error = |reason: String| SetupError::Roots {
            path: path.clone(),
            reason,
        };
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| roots_error(e.to_string()))?;
        for cert in certs {
            let cert = cert.map_err(|e| roots_error(e.to_string()))?;
            roots.add(cert).map_err(|e| roots_error(e.to_string()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| SetupError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Why a push URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Push is disabled on this relay (no allowed prefixes).
    #[error("push is disabled on this relay")]
    Disabled,
    /// The URL is longer than [`MAX_PUSH_URL_BYTES`].
    #[error("push URL too long")]
    TooLong,
    /// The URL is not under an allowed prefix, or is not a plain http(s) URL.
    #[error("push URL not allowed")]
    NotAllowed,
}

/// A URL taken apart for comparison: scheme, host, effective port and path, each canonical.
#[derive(Debug, PartialEq, Eq)]
struct Parts {
    https: bool,
    host: String,
    port: u16,
    path: String,
}

/// Whether `host` is in canonical form: a dotted-quad IPv4 as Rust prints it, a bracketed
/// IPv6, or a lower-case DNS name of letters, digits and hyphens without a trailing dot whose
/// last label is not all digits (so `127.1`, `0x7f.0.0.1` and `2130706433` are refused).
fn canonical_host(host: &str) -> bool {
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    if let Ok(v4) = host.parse::<std::net::Ipv4Addr>() {
        return v4.to_string() == host;
    }
    let labels: Vec<&str> = host.split('.').collect();
    !host.is_empty()
        && host.len() <= 253
        && labels.iter().all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        })
        && labels
            .last()
            .is_some_and(|l| !l.bytes().all(|c| c.is_ascii_digit() || c == b'x'))
}

/// Takes an `http(s)` URL apart, refusing anything a string comparison could be fooled by:
/// userinfo (`https://allowed@evil/`), a fragment, a non-canonical host, percent-encoded
/// dots, slashes or backslashes, and dot segments.
fn parts(url: &str) -> Option<Parts> {
    if url
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '\\' || c == '#')
    {
        return None;
    }
    let uri: hyper::Uri = url.parse().ok()?;
    let https = match uri.scheme_str()? {
        "https" => true,
        "http" => false,
        _ => return None,
    };
    let authority = uri.authority()?;
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host();
    if !canonical_host(host) {
        return None;
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path();
    let lower = path.to_ascii_lowercase();
    if ["%2e", "%2f", "%5c", "%00"]
        .iter()
        .any(|e| lower.contains(e))
    {
        return None;
    }
    if path.split('/').any(|seg| seg == "." || seg == "..") {
        return None;
    }
    Some(Parts {
        https,
        host: host.to_owned(),
        port,
        path: path.to_owned(),
    })
}

/// Whether `url` falls under `prefix`: same scheme, host and port, and a path at or below
/// the prefix's path, compared segment-wise (`/push` admits `/push` and `/push/x`, never
/// `/pushy`).
fn under(url: &Parts, prefix: &Parts) -> bool {
    if url.https != prefix.https || url.host != prefix.host || url.port != prefix.port {
        return false;
    }
    let base = prefix.path.trim_end_matches('/');
    url.path == base || url.path.starts_with(&format!("{base}/"))
}

/// Checks a push URL against the operator's allow-list (the defence against the relay
/// being used to send requests to arbitrary hosts). Both are parsed and compared by
/// component, never as strings; the push client never follows redirects.
pub fn check_url(url: &str, allowed_prefixes: &[String]) -> Result<(), UrlError> {
    if allowed_prefixes.is_empty() {
        return Err(UrlError::Disabled);
    }
    if url.len() > MAX_PUSH_URL_BYTES {
        return Err(UrlError::TooLong);
    }
    let url = parts(url).ok_or(UrlError::NotAllowed)?;
    if allowed_prefixes
        .iter()
        .filter_map(|p| parts(p))
        .any(|p| under(&url, &p))
    {
        Ok(())
    } else {
        Err(UrlError::NotAllowed)
    }
}

/// Whether an operator's prefix is one [`check_url`] can use (a canonical http(s) URL).
pub fn valid_prefix(prefix: &str) -> bool {
    parts(prefix).is_some()
}

/// A message to the push task.
#[derive(Debug)]
pub enum Command {
    /// Set or clear a device's endpoint (already checked and stored).
    Register {
        /// The device.
        peer: PeerId,
        /// Its endpoint.
        url: Option<String>,
    },
    /// Mail landed for an offline device; its mailbox now holds `unread` messages.
    Mail {
        /// The device.
        peer: PeerId,
        /// Unread count to report.
        unread: u64,
    },
}

/// Sender side of the push task's queue.
#[derive(Debug, Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
    metrics: Arc<Metrics>,
}

impl Handle {
    /// Queues a command; drops it (counted) if the queue is full.
    pub fn send(&self, cmd: Command) {
        if self.tx.try_send(cmd).is_err() {
            self.metrics
                .push_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Per-device debounce and back-off state.
#[derive(Debug, Default)]
struct Device {
    url: Option<String>,
    last_sent: Option<Instant>,
    pending: Option<u64>,
    not_before: Option<Instant>,
    failures: u32,
    in_flight: bool,
}

/// Starts the push task. It ends when every [`Handle`] is dropped.
pub fn spawn(
    cfg: PushConfig,
    endpoints: Vec<(PeerId, String)>,
    metrics: Arc<Metrics>,
) -> Result<Handle, SetupError> {
    let client = build_client(&cfg)?;
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let devices = endpoints
        .into_iter()
        .map(|(p, url)| {
            (
                p,
                Device {
                    url: Some(url),
                    ..Device::default()
                },
            )
        })
        .collect();
    let task = Task {
        cfg,
        devices,
        waiting: HashSet::new(),
        client,
        metrics: metrics.clone(),
    };
    tokio::spawn(task.run(rx));
    Ok(Handle { tx, metrics })
}

struct Task {
    cfg: PushConfig,
    devices: HashMap<PeerId, Device>,
    /// Devices with a pending wake-up.
    waiting: HashSet<PeerId>,
    client: HttpClient,
    metrics: Arc<Metrics>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut in_flight = FuturesUnordered::new();
        loop {
            let now = Instant::now();
            // Send everything due, within the in-flight cap.
            let due: Vec<PeerId> = self
                .waiting
                .iter()
                .filter(|p| self.due_at(p, now).is_some_and(|t| t <= now))
                .copied()
                .collect();
            for p in due {
                if in_flight.len() >= self.cfg.max_in_flight {
                    break;
                }
                let Some(d) = self.devices.get_mut(&p) else {
                    continue;
                };
                let (Some(url), Some(unread)) = (d.url.clone(), d.pending.take()) else {
                    self.waiting.remove(&p);
                    continue;
                };
                self.waiting.remove(&p);
                d.in_flight = true;
                d.last_sent = Some(now);
                in_flight.push(post(
                    self.client.clone(),
                    url,
                    unread,
                    Duration::from_secs(self.cfg.timeout_secs),
                    p,
                ));
            }
            // At the in-flight cap, only a finished POST (or a command) can make progress.
            let next = if in_flight.len() >= self.cfg.max_in_flight {
                None
            } else {
                self.waiting
                    .iter()
                    .filter_map(|p| self.due_at(p, now))
                    .min()
            };
            let sleep = async {
                match next {
                    Some(t) => tokio::time::sleep_until(t.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
                Some((peer, ok)) = in_flight.next(), if !in_flight.is_empty() => self.finished(peer, ok),
                _ = sleep => {}
            }
        }
        // Let wake-ups already on the wire finish (each is bounded by its timeout).
        while let Some((peer, ok)) = in_flight.next().await {
            self.finished(peer, ok);
        }
    }

    /// When the device's pending wake-up may go out, if it has one and nothing is in flight.
    fn due_at(&self, p: &PeerId, now: Instant) -> Option<Instant> {
        let d = self.devices.get(p)?;
        if d.pending.is_none() || d.in_flight || d.url.is_none() {
            return None;
        }
        let debounce = Duration::from_secs(self.cfg.debounce_secs);
        let after_debounce = d.last_sent.map(|t| t + debounce);
        Some(match (after_debounce, d.not_before) {
            (Some(a), Some(b)) => a.max(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => now,
        })
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Register { peer, url } => match url {
                Some(url) => {
                    let d = self.devices.entry(peer).or_default();
                    d.url = Some(url);
                    d.failures = 0;
                    d.not_before = None;
                }
                None => {
                    self.devices.remove(&peer);
                    self.waiting.remove(&peer);
                }
            },
            Command::Mail { peer, unread } => {
                if let Some(d) = self.devices.get_mut(&peer)
                    && d.url.is_some()
                {
                    d.pending = Some(unread);
                    self.waiting.insert(peer);
                }
            }
        }
    }

    fn finished(&mut self, peer: PeerId, ok: bool) {
        let max_backoff = Duration::from_secs(self.cfg.max_backoff_secs);
        let Some(d) = self.devices.get_mut(&peer) else {
            return;
        };
        d.in_flight = false;
        if ok {
            d.failures = 0;
            d.not_before = None;
            self.metrics
                .push_sent
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        } else {
            d.failures = d.failures.saturating_add(1);
            let backoff = FIRST_BACKOFF
                .saturating_mul(1u32 << d.failures.saturating_sub(1).min(16))
                .min(max_backoff);
            d.not_before = Some(Instant::now() + backoff);
            self.metrics
                .push_failed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if d.pending.is_some() {
            self.waiting.insert(peer);
        }
    }
}

/// The wake-up body: a version, a type and the unread count. Nothing about senders or
/// content.
fn body(unread: u64) -> String {
    format!("{{\"v\":1,\"type\":\"wakeup\",\"unread\":{unread}}}")
}

async fn post(
    client: HttpClient,
    url: String,
    unread: u64,
    timeout: Duration,
    peer: PeerId,
) -> (PeerId, bool) {
    let req = match hyper::Request::post(url.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body(unread))))
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot build push request");
            return (peer, false);
        }
    };
    let ok = match tokio::time::timeout(timeout, client.request(req)).await {
        Ok(Ok(resp)) => resp.status().is_success(),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "push POST failed");
            false
        }
        Err(_) => {
            tracing::debug!("push POST timed out");
            false
        }
    };
    (peer, ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_allow_list() {
        let allowed = vec!["http://127.0.0.1:8080/push/".to_string()];
        assert_eq!(
            check_url("http://127.0.0.1:8080/push/abc", &allowed),
            Ok(())
        );
        assert_eq!(
            check_url("http://127.0.0.1:8080/other", &allowed),
            Err(UrlError::NotAllowed)
        );
        assert_eq!(
            check_url("http://169.254.169.254/", &allowed),
            Err(UrlError::NotAllowed)
        );
        assert_eq!(
            check_url("http://127.0.0.1:8080/push/../admin", &allowed),
            Err(UrlError::NotAllowed)
        );
        assert_eq!(
            check_url("http://127.0.0.1:8080/push/a b", &allowed),
            Err(UrlError::NotAllowed)
        );
        assert_eq!(
            check_url("http://127.0.0.1:8080/push/a", &[]),
            Err(UrlError::Disabled)
        );
        let long = format!(
            "http://127.0.0.1:8080/push/{}",
            "a".repeat(MAX_PUSH_URL_BYTES)
        );
        assert_eq!(check_url(&long, &allowed), Err(UrlError::TooLong));
        assert_eq!(body(3), r#"{"v":1,"type":"wakeup","unread":3}"#);
    }

    #[test]
    fn prefix_tricks_are_refused() {
        // An operator prefix without a trailing slash: still a host and a path, never a string.
        let allowed = vec!["https://push.example.com".to_string()];
        assert_eq!(
            check_url("https://push.example.com/up/abc", &allowed),
            Ok(())
        );
        assert_eq!(
            check_url("https://push.example.com:443/up", &allowed),
            Ok(())
        );
        for bad in [
            "https://push.example.com.evil.org/up",
            "https://push.example.com@evil.org/",
            "https://user:pw@push.example.com/up",
            "https://push.example.com:8443/up",
            "http://push.example.com/up",
            "https://PUSH.example.com/up",
            "https://push.example.com./up",
            "https://push.example.com/up/%2e%2e/admin",
            "https://push.example.com/up/%2E%2E%2Fadmin",
            "https://push.example.com/up/..",
            "https://push.example.com/up/./x",
            "https://push.example.com/up\\..\\admin",
            "https://push.example.com/up#frag",
            "ftp://push.example.com/up",
        ] {
            assert_eq!(check_url(bad, &allowed), Err(UrlError::NotAllowed), "{bad}");
        }
        // A path prefix matches whole segments only.
        let allowed = vec!["https://push.example.com/push".to_string()];
        assert_eq!(
            check_url("https://push.example.com/push/x", &allowed),
            Ok(())
        );
        assert_eq!(
            check_url("https://push.example.com/pushy", &allowed),
            Err(UrlError::NotAllowed)
        );
        // IP hosts only in canonical form.
        let allowed = vec!["http://127.0.0.1:8080/".to_string()];
        assert_eq!(check_url("http://127.0.0.1:8080/a", &allowed), Ok(()));
        for bad in [
            "http://127.1:8080/a",
            "http://2130706433:8080/a",
            "http://0x7f.0.0.1:8080/a",
            "http://127.000.000.001:8080/a",
        ] {
            assert_eq!(check_url(bad, &allowed), Err(UrlError::NotAllowed), "{bad}");
        }
        assert!(valid_prefix("https://push.example.org/"));
        assert!(!valid_prefix("https://push.example.org@x/"));
    }
}
