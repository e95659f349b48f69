//! Counters and gauges, rendered in the Prometheus text format.

use std::{
    fmt::Write as _,
    sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use super::iplimit::Refusal;
use crate::wire::ErrorCode;

/// Upper bounds (seconds) of the commit-latency histogram buckets.
const COMMIT_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024,
];

/// Every figure the relay exports. Shared by the event loop, the writer and the push task.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Open connections.
    pub connections: AtomicI64,
    /// Connections ever established.
    pub connections_total: AtomicU64,
    /// Deposits acknowledged.
    pub deposits: AtomicU64,
    /// Mailbox entries created by acknowledged deposits.
    pub deposit_recipients: AtomicU64,
    /// Ciphertext bytes acknowledged (once per deposit).
    pub deposit_bytes: AtomicU64,
    /// Messages delivered live to a connected recipient.
    pub live_deliveries: AtomicU64,
    /// Of those, the ones sent on a live stream (`/tern/live/1`), not as a request.
    pub live_stream_pushes: AtomicU64,
    /// Acknowledgement frames that came on live streams.
    pub live_stream_acks: AtomicU64,
    /// Open deposit streams (`/tern/deposit/1`).
    pub deposit_streams: AtomicI64,
    /// Deposits read from deposit streams (served, refused or dropped alike).
    pub stream_deposits: AtomicU64,
    /// Mailbox fetch requests past the rate limits (each asks for a page; one refused
    /// after that, for a busy store, is counted as a reject too).
    pub fetches: AtomicU64,
    /// Messages acknowledged (deleted) by recipients.
    pub acked: AtomicU64,
    /// Mailbox entries deleted by TTL expiry.
    pub expired: AtomicU64,
    /// Times the writer copied back the end of the write-ahead log so that its next commit
    /// starts the log over (`storage::checkpoint`).
    pub log_restarts: AtomicU64,
    /// Mailbox entries currently stored.
    mailbox_messages: AtomicI64,
    /// Ciphertext bytes currently referenced by mailboxes.
    mailbox_bytes: AtomicI64,
    /// Rejected requests, by [`ErrorCode::ALL`] index.
    rejects: [AtomicU64; ErrorCode::ALL.len()],
    /// Storage transactions committed.
    commits: AtomicU64,
    /// Operations committed (sum of batch sizes).
    committed_ops: AtomicU64,
    /// Commit latency histogram: cumulative counts per bucket of [`COMMIT_BUCKETS`].
    commit_buckets: [AtomicU64; COMMIT_BUCKETS.len()],
    /// Sum of commit latencies, microseconds.
    commit_micros: AtomicU64,
    /// Push wake-ups sent successfully.
    pub push_sent: AtomicU64,
    /// Push wake-ups that failed.
    pub push_failed: AtomicU64,
    /// Push wake-ups dropped because the push queue was full.
    pub push_dropped: AtomicU64,
    /// Circuit relay reservations accepted.
    pub reservations: AtomicU64,
    /// Relayed circuits opened.
    pub circuits: AtomicU64,
    /// DHT relay records stored (verified and newer than what was held).
    pub dht_stored: AtomicU64,
    /// DHT records refused (rate, size, signature, key, stale version, full store).
    pub dht_refused: AtomicU64,
    /// Blobs stored, complete or being uploaded.
    pub blobs: AtomicI64,
    /// Bytes of those blobs (an unfinished upload counts at its full size, as in quotas).
    pub blob_bytes: AtomicI64,
    /// Blob uploads completed.
    pub blob_uploads: AtomicU64,
    /// Blob chunk bytes received and made durable.
    pub blob_upload_bytes: AtomicU64,
    /// Blob downloads opened (a matching read capability for a complete blob).
    pub blob_downloads: AtomicU64,
    /// Blobs deleted because they expired or their upload was abandoned.
    pub blobs_collected: AtomicU64,
    /// Connections refused, by [`Refusal::ALL`] index.
    connections_refused: [AtomicU64; Refusal::ALL.len()],
    /// Requests refused by the per-IP (IPv6 /64) request limit.
    pub rate_limited_by_ip: AtomicU64,
    /// Peers banned for collecting too many grant refusals (see `penalty.rs`).
    pub peers_banned: AtomicU64,
    /// Peers disconnected for sending on while told `RateLimited`.
    pub peers_cut_off: AtomicU64,
    /// Prekey claims answered with the fallback key because the claimer or the device was
    /// over its one-time-key claim limit (while one-time keys may have been left).
    pub claims_limited: AtomicU64,
}

impl Metrics {
    /// Counts a rejected request.
    pub fn reject(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.rejects[i].fetch_add(1, Relaxed);
        }
    }

    /// Counts a refused connection.
    pub fn refused(&self, reason: Refusal) {
        if let Some(i) = Refusal::ALL.iter().position(|r| *r == reason) {
            self.connections_refused[i].fetch_add(1, Relaxed);
        }
    }

    /// Sets the mailbox totals (at start-up).
    pub fn set_mailbox_totals(&self, messages: u64, bytes: u64) {
        self.mailbox_messages.store(messages as i64, Relaxed);
        self.mailbox_bytes.store(bytes as i64, Relaxed);
    }

    /// Adds committed changes to the mailbox totals.
    pub fn add_mailbox_totals(&self, messages: i64, bytes: i64) {
        self.mailbox_messages.fetch_add(messages, Relaxed);
        self.mailbox_bytes.fetch_add(bytes, Relaxed);
    }

    /// Records one commit of `ops` operations that took `took`.
    pub fn observe_commit(&self, took: Duration, ops: usize) {
        self.commits.fetch_add(1, Relaxed);
        self.committed_ops.fetch_add(ops as u64, Relaxed);
        self.commit_micros
            .fetch_add(took.as_micros() as u64, Relaxed);
        let secs = took.as_secs_f64();
        for (i, le) in COMMIT_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.commit_buckets[i].fetch_add(1, Relaxed);
            }
        }
    }

    /// Renders every figure in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, kind: &str, v: String| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        };
        let g = |a: &AtomicU64| a.load(Relaxed).to_string();
        counter(
            "tern_relay_connections",
            "Open connections.",
            "gauge",
            self.connections.load(Relaxed).to_string(),
        );
        counter(
            "tern_relay_connections_total",
            "Connections established.",
            "counter",
            g(&self.connections_total),
        );
        counter(
            "tern_relay_deposits_total",
            "Deposits acknowledged durable.",
            "counter",
            g(&self.deposits),
        );
        counter(
            "tern_relay_deposit_recipients_total",
            "Mailbox entries created by deposits.",
            "counter",
            g(&self.deposit_recipients),
        );
        counter(
            "tern_relay_deposit_bytes_total",
            "Ciphertext bytes deposited.",
            "counter",
            g(&self.deposit_bytes),
        );
        counter(
            "tern_relay_live_deliveries_total",
            "Messages pushed to connected recipients.",
            "counter",
            g(&self.live_deliveries),
        );
        counter(
            "tern_relay_live_stream_pushes_total",
            "Of the messages pushed, those sent on a live stream.",
            "counter",
            g(&self.live_stream_pushes),
        );
        counter(
            "tern_relay_live_stream_acks_total",
            "Acknowledgement frames received on live streams.",
            "counter",
            g(&self.live_stream_acks),
        );
        counter(
            "tern_relay_deposit_streams",
            "Open deposit streams.",
            "gauge",
            self.deposit_streams.load(Relaxed).to_string(),
        );
        counter(
            "tern_relay_stream_deposits_total",
            "Deposits that came on deposit streams.",
            "counter",
            g(&self.stream_deposits),
        );
        counter(
            "tern_relay_fetches_total",
            "Mailbox fetch requests past the rate limits (a page each).",
            "counter",
            g(&self.fetches),
        );
        counter(
            "tern_relay_acked_total",
            "Messages acknowledged by recipients.",
            "counter",
            g(&self.acked),
        );
        counter(
            "tern_relay_expired_total",
            "Mailbox entries expired.",
            "counter",
            g(&self.expired),
        );
        counter(
            "tern_relay_log_restarts_total",
            "Write-ahead log restarts asked by the checkpointer and done by the writer.",
            "counter",
            g(&self.log_restarts),
        );
        counter(
            "tern_relay_mailbox_messages",
            "Mailbox entries stored (total mailbox depth).",
            "gauge",
            self.mailbox_messages.load(Relaxed).to_string(),
        );
        counter(
            "tern_relay_mailbox_bytes",
            "Ciphertext bytes referenced by mailboxes.",
            "gauge",
            self.mailbox_bytes.load(Relaxed).to_string(),
        );
        counter(
            "tern_relay_push_sent_total",
            "Push wake-ups delivered.",
            "counter",
            g(&self.push_sent),
        );
        counter(
            "tern_relay_push_failed_total",
            "Push wake-ups that failed.",
            "counter",
            g(&self.push_failed),
        );
        counter(
            "tern_relay_push_dropped_total",
            "Push wake-ups dropped (queue full).",
            "counter",
            g(&self.push_dropped),
        );
        counter(
            "tern_relay_reservations_total",
            "Circuit relay reservations accepted.",
            "counter",
            g(&self.reservations),
        );
        counter(
            "tern_relay_circuits_total",
            "Relayed circuits opened.",
            "counter",
            g(&self.circuits),
        );
        counter(
            "tern_relay_dht_records_stored_total",
            "DHT relay records stored (verified and newer than what was held).",
            "counter",
            g(&self.dht_stored),
        );
        counter(
            "tern_relay_dht_records_refused_total",
            "DHT records refused (rate, size, signature, key, stale version, full store).",
            "counter",
            g(&self.dht_refused),
        );
        counter(
            "tern_relay_blobs",
            "Blobs stored, complete or being uploaded.",
            "gauge",
            self.blobs.load(Relaxed).to_string(),
        );
        counter(
            "tern_relay_blob_bytes",
            "Bytes of stored blobs (unfinished uploads at full size).",
            "gauge",
            self.blob_bytes.load(Relaxed).to_string(),
        );
        counter(
            "tern_relay_blob_uploads_total",
            "Blob uploads completed.",
            "counter",
            g(&self.blob_uploads),
        );
        counter(
            "tern_relay_blob_upload_bytes_total",
            "Blob bytes received and made durable.",
            "counter",
            g(&self.blob_upload_bytes),
        );
        counter(
            "tern_relay_blob_downloads_total",
            "Blob downloads opened with a valid read capability.",
            "counter",
            g(&self.blob_downloads),
        );
        counter(
            "tern_relay_blobs_collected_total",
            "Blobs deleted as expired or abandoned.",
            "counter",
            g(&self.blobs_collected),
        );
        counter(
            "tern_relay_rate_limited_by_ip_total",
            "Requests refused by the per-IP (IPv6 /64) request limit.",
            "counter",
            g(&self.rate_limited_by_ip),
        );
        counter(
            "tern_relay_peers_banned_total",
            "Peers disconnected and banned for collecting too many intro_full/no_grant refusals.",
            "counter",
            g(&self.peers_banned),
        );
        counter(
            "tern_relay_peers_cut_off_total",
            "Peers disconnected for sending on while told rate_limited.",
            "counter",
            g(&self.peers_cut_off),
        );
        counter(
            "tern_relay_prekey_claims_limited_total",
            "Prekey claims given the fallback key by the claim limits.",
            "counter",
            g(&self.claims_limited),
        );
        let _ = writeln!(
            out,
            "# HELP tern_relay_connections_refused_total Connections refused, by limit.\n# TYPE tern_relay_connections_refused_total counter"
        );
        for (i, r) in Refusal::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "tern_relay_connections_refused_total{{reason=\"{}\"}} {}",
                r.label(),
                self.connections_refused[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tern_relay_rejects_total Requests rejected, by reason.\n# TYPE tern_relay_rejects_total counter"
        );
        for (i, code) in ErrorCode::ALL.iter().enumerate() {
            let _ = writeln!(
                out,
                "tern_relay_rejects_total{{reason=\"{}\"}} {}",
                code.label(),
                self.rejects[i].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP tern_relay_commit_seconds Storage group-commit latency.\n# TYPE tern_relay_commit_seconds histogram"
        );
        for (i, le) in COMMIT_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "tern_relay_commit_seconds_bucket{{le=\"{le}\"}} {}",
                self.commit_buckets[i].load(Relaxed)
            );
        }
        let commits = self.commits.load(Relaxed);
        let _ = writeln!(
            out,
            "tern_relay_commit_seconds_bucket{{le=\"+Inf\"}} {commits}"
        );
        let _ = writeln!(
            out,
            "tern_relay_commit_seconds_sum {}",
            self.commit_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "tern_relay_commit_seconds_count {commits}");
        let _ = writeln!(
            out,
            "# HELP tern_relay_committed_ops_total Operations committed.\n# TYPE tern_relay_committed_ops_total counter\ntern_relay_committed_ops_total {}",
            self.committed_ops.load(Relaxed)
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_histogram_and_rejects() {
        let m = Metrics::default();
        m.observe_commit(Duration::from_micros(1500), 3);
        m.reject(ErrorCode::RateLimited);
        m.refused(Refusal::PerIp);
        m.refused(Refusal::PerIp);
        let text = m.render();
        assert!(text.contains("tern_relay_connections_refused_total{reason=\"per_ip\"} 2"));
        assert!(text.contains("tern_relay_connections_refused_total{reason=\"total\"} 0"));
        assert!(text.contains("tern_relay_rate_limited_by_ip_total 0"));
        assert!(text.contains("tern_relay_commit_seconds_bucket{le=\"0.001\"} 0"));
        assert!(text.contains("tern_relay_commit_seconds_bucket{le=\"0.002\"} 1"));
        assert!(text.contains("tern_relay_rejects_total{reason=\"rate_limited\"} 1"));
        assert!(text.contains("tern_relay_committed_ops_total 3"));
    }
}
