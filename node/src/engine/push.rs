//! Push wake-ups: the URL this device registers at every home relay, so a relay that gets
//! mail for it while it is not listening POSTs a content-free wake-up there (see
//! `docs/protocol.md`, `RegisterPush`, and `docs/node.md`, Push wake-ups).
//!
//! - **Kept** in `config.json` (`push_url`), beside the other settings of this device: a
//!   setting of one device, not data of the user (a backup does not carry it), and the
//!   simplest durable place that the node already reads at start. The file is 0600.
//! - **Registered** at every home relay that is up when it is set, and again each time a
//!   home relay comes up (a relay may have lost it, or expired it after long silence). A
//!   request that failed for a passing reason (network, rate limit) is tried again on the
//!   next heartbeat; a refusal (`not_allowed`, `too_large`) only on the next connection.
//! - **Cleared** at every home relay; a clear that some relay has not confirmed is kept
//!   owing (`push_clear_due`) across restarts.
//!
//! The URL is a capability for the push service: it is never logged (only its host is).
//! Network calls run in tasks that report back ([`super::Internal::Push`]).

use std::collections::HashMap;
use tern_relay::rpc::Requests as _;

use libp2p::PeerId;
use tern_relay::wire::{ErrorCode, mailbox::MAX_PUSH_URL_BYTES};

use super::{Engine, Internal, command::Reply, relay_peer};
use crate::{
    error::NodeError,
    net::NetError,
    types::{PushInfo, PushRelayInfo},
};

/// A `push.*` command.
pub(crate) enum PushCommand {
    /// Set (replace) the endpoint.
    Set { url: String, reply: Reply<PushInfo> },
    /// Remove it everywhere.
    Clear(Reply<PushInfo>),
    /// Where it stands.
    Status(Reply<PushInfo>),
}

impl std::fmt::Debug for PushCommand {
    // The URL is a capability: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PushCommand::Set { .. } => "PushCommand::Set(..)",
            PushCommand::Clear(_) => "PushCommand::Clear",
            PushCommand::Status(_) => "PushCommand::Status",
        })
    }
}

/// A relay's answer to one `RegisterPush`.
pub(crate) struct Answer {
    relay: PeerId,
    url: Option<String>,
    result: Result<(), NetError>,
}

/// What a push task reports.
pub(crate) enum Done {
    /// One registration (on a relay coming up, or a retry).
    One(Answer),
    /// A `set` or `clear`: every home relay that was up, then the caller's reply.
    Change {
        prev: Option<String>,
        /// What each relay asked held before (restored where the change is refused).
        prev_at: Vec<(PeerId, Option<AtRelay>)>,
        url: Option<String>,
        answers: Vec<Answer>,
        reply: Reply<PushInfo>,
    },
}

impl std::fmt::Debug for Done {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Done::One(a) => write!(f, "push::Done::One({})", a.relay),
            Done::Change { answers, .. } => write!(f, "push::Done::Change({})", answers.len()),
        }
    }
}

/// What a home relay last did with the value sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Sent, not answered yet.
    Sending,
    /// It holds the value (the URL, or none after a clear).
    Done,
    /// It refused the URL (`not_allowed`, `too_large`): not sent again until it reconnects.
    Refused(ErrorCode),
    /// It failed for a passing reason: tried again on the next heartbeat.
    Failed(String),
}

/// The value last sent to one home relay, and what came of it.
#[derive(Debug, Clone)]
pub(crate) struct AtRelay {
    url: Option<String>,
    outcome: Outcome,
}

/// The push endpoint and where it is registered.
pub(crate) struct Push {
    /// The endpoint in force (as in `config.json`, or being set).
    url: Option<String>,
    /// A clear is owed to some home relay.
    clear_due: bool,
    /// Per home relay, the value last sent there in this run.
    at: HashMap<PeerId, AtRelay>,
}

impl std::fmt::Debug for Push {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Push")
            .field("host", &self.url.as_deref().and_then(host_of))
            .field("clear_due", &self.clear_due)
            .finish_non_exhaustive()
    }
}

impl Push {
    /// The endpoint as the node's settings keep it.
    pub(crate) fn load(config: &crate::home::Config) -> Self {
        Push {
            url: config.push_url.clone(),
            clear_due: config.push_clear_due,
            at: HashMap::new(),
        }
    }
}

/// Checks a push URL before it is sent anywhere: at most [`MAX_PUSH_URL_BYTES`], a plain
/// `http` or `https` URL with a host, no user name or password, no fragment, no spaces or
/// control characters. (Each relay still checks it against its own allow-list.) Returns
/// what may be shown of it: scheme, host and port.
pub(crate) fn check_url(url: &str) -> Result<String, String> {
    if url.len() > MAX_PUSH_URL_BYTES {
        return Err(format!(
            "the push URL is {} bytes, over the {MAX_PUSH_URL_BYTES}-byte limit",
            url.len()
        ));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the push URL must not contain spaces or control characters".into());
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("the push URL does not parse: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the push URL must be an http:// or https:// URL".into());
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("the push URL must not carry a user name or password".into());
    }
    if parsed.fragment().is_some() {
        return Err("the push URL must not have a #fragment".into());
    }
    host_of(url).ok_or_else(|| "the push URL has no host".into())
}

/// `scheme://host[:port]` of a URL: what is shown and logged of a push endpoint.
pub(crate) fn host_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str()?;
    Some(match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    })
}

/// Whether a relay's refusal is final for this URL (sent again only on a new connection).
fn refusal(e: &NetError) -> Option<ErrorCode> {
    match e.code() {
        Some(c @ (ErrorCode::NotAllowed | ErrorCode::TooLarge | ErrorCode::BadRequest)) => Some(c),
        _ => None,
    }
}

fn outcome_of(result: &Result<(), NetError>) -> Outcome {
    match result {
        Ok(()) => Outcome::Done,
        Err(e) => match refusal(e) {
            Some(c) => Outcome::Refused(c),
            None => Outcome::Failed(e.code().map_or("network", |c| c.label()).to_owned()),
        },
    }
}

fn what_code(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NotAllowed => {
            "the URL is not under any prefix the relay allows (push.allowed_prefixes), or the relay has push turned off"
        }
        ErrorCode::TooLarge => "the URL is too long",
        _ => "the relay refused the request",
    }
}

async fn register(net: crate::net::Client, relay: PeerId, url: Option<String>) -> Answer {
    let result = net.at(relay).register_push(url.clone()).await;
    Answer { relay, url, result }
}

impl Engine {
    /// A `push.*` command.
    pub(crate) fn on_push_command(&mut self, cmd: PushCommand) {
        match cmd {
            PushCommand::Set { url, reply } => match check_url(&url) {
                Ok(host) => {
                    tracing::info!(%host, "setting the push endpoint");
                    self.push_change(Some(url), reply);
                }
                Err(e) => {
                    let _ = reply.send(Err(NodeError::BadRequest(e)));
                }
            },
            PushCommand::Clear(reply) => {
                tracing::info!("clearing the push endpoint");
                self.push.clear_due = true;
                if let Err(e) = self.push_save() {
                    let _ = reply.send(Err(e));
                    return;
                }
                self.push_change(None, reply);
            }
            PushCommand::Status(reply) => {
                let _ = reply.send(Ok(self.push_info()));
            }
        }
    }

    /// Sends the new value to every home relay that is up, in one task, and answers the
    /// caller once they all answered ([`Done::Change`]). Relays that are down get it when
    /// they come up.
    fn push_change(&mut self, url: Option<String>, reply: Reply<PushInfo>) {
        let prev = std::mem::replace(&mut self.push.url, url.clone());
        let mut sends = Vec::new();
        let mut prev_at = Vec::new();
        for relay in self.relays.home_relays.iter().filter_map(relay_peer) {
            if self.relays.relay_up.contains(&relay) {
                let before = self.push.at.insert(
                    relay,
                    AtRelay {
                        url: url.clone(),
                        outcome: Outcome::Sending,
                    },
                );
                prev_at.push((relay, before));
                sends.push(register(self.net.clone(), relay, url.clone()));
            } else {
                self.push.at.remove(&relay);
            }
        }
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let answers = futures::future::join_all(sends).await;
            let _ = tx
                .send(Internal::Push(Done::Change {
                    prev,
                    prev_at,
                    url,
                    answers,
                    reply,
                }))
                .await;
        });
    }

    /// A home relay came up: it may have lost or expired the endpoint, so it is sent again.
    pub(crate) fn push_relay_up(&mut self, relay: PeerId) {
        self.push.at.remove(&relay);
        self.push_sync();
    }

    /// Sends the value in force to every home relay that is up and does not hold it (or
    /// failed for a passing reason).
    pub(crate) fn push_sync(&mut self) {
        let url = self.push.url.clone();
        for relay in self.relays.home_relays.iter().filter_map(relay_peer) {
            if !self.relays.relay_up.contains(&relay) {
                continue;
            }
            let due = match self.push.at.get(&relay) {
                None => url.is_some() || self.push.clear_due,
                Some(at) => at.url != url || matches!(at.outcome, Outcome::Failed(_)),
            };
            if !due {
                continue;
            }
            self.push.at.insert(
                relay,
                AtRelay {
                    url: url.clone(),
                    outcome: Outcome::Sending,
                },
            );
            let (net, tx, url) = (self.net.clone(), self.internal.clone(), url.clone());
            tokio::spawn(async move {
                let answer = register(net, relay, url).await;
                let _ = tx.send(Internal::Push(Done::One(answer))).await;
            });
        }
    }

    /// A push task finished.
    pub(crate) fn on_push_done(&mut self, done: Done) {
        match done {
            Done::One(a) => {
                self.push_answer(&a);
                self.push_sync();
                self.push_clear_settled();
            }
            Done::Change {
                prev,
                prev_at,
                url,
                answers,
                reply,
            } => {
                for a in &answers {
                    self.push_answer(a);
                }
                let out = self.push_changed(prev, prev_at, &url, &answers);
                self.push_sync();
                self.push_clear_settled();
                let _ = reply.send(out);
            }
        }
    }

    /// Records a relay's answer. An answer for a value no longer in force means the relay
    /// may hold a stale one: the current value is sent to it again.
    fn push_answer(&mut self, a: &Answer) {
        let host = a.url.as_deref().and_then(host_of);
        let host = host.as_deref().unwrap_or("none (cleared)");
        match &a.result {
            Ok(()) => tracing::debug!(relay = %a.relay, %host, "push endpoint updated"),
            Err(e) => {
                tracing::warn!(relay = %a.relay, %host, "push endpoint not registered: {e}")
            }
        }
        match self.push.at.get_mut(&a.relay) {
            Some(at) if at.url == a.url && at.outcome == Outcome::Sending => {
                at.outcome = outcome_of(&a.result);
            }
            _ => {}
        }
        if a.url != self.push.url {
            self.push.at.remove(&a.relay);
        }
    }

    /// Settles a `set` or `clear` once its relays answered: keeps the URL (saved) if some
    /// relay took it or none was asked; if every relay asked refused it, goes back to the
    /// previous one (nothing changed). Any refusal is an error naming each relay.
    fn push_changed(
        &mut self,
        prev: Option<String>,
        prev_at: Vec<(PeerId, Option<AtRelay>)>,
        url: &Option<String>,
        answers: &[Answer],
    ) -> Result<PushInfo, NodeError> {
        if &self.push.url != url {
            // A later change overtook this one; it answers for itself.
            return Ok(self.push_info());
        }
        if url.is_none() {
            return Ok(self.push_info());
        }
        let refused: Vec<(PeerId, ErrorCode)> = answers
            .iter()
            .filter_map(|a| {
                a.result
                    .as_ref()
                    .err()
                    .and_then(refusal)
                    .map(|c| (a.relay, c))
            })
            .collect();
        let taken = answers.iter().filter(|a| a.result.is_ok()).count();
        let describe = |refused: &[(PeerId, ErrorCode)]| {
            refused
                .iter()
                .map(|(r, c)| format!("relay {r} refused it: {} ({})", c.label(), what_code(*c)))
                .collect::<Vec<_>>()
                .join("; ")
        };
        if !refused.is_empty() && taken == 0 {
            // Nothing holds the new URL: the previous one stays in force everywhere, and
            // each relay that refused holds what it held.
            self.push.url = prev;
            for (relay, before) in prev_at {
                if refused.iter().any(|(r, _)| *r == relay) {
                    match before {
                        Some(at) => self.push.at.insert(relay, at),
                        None => self.push.at.remove(&relay),
                    };
                }
            }
            return Err(NodeError::PushRefused(format!(
                "push endpoint not set: {}; nothing changed",
                describe(&refused)
            )));
        }
        self.push_save()?;
        if refused.is_empty() {
            Ok(self.push_info())
        } else {
            Err(NodeError::PushRefused(format!(
                "push endpoint set at {taken} home relay(s), but {}",
                describe(&refused)
            )))
        }
    }

    /// A clear owed to the home relays is settled once each of them confirmed it.
    fn push_clear_settled(&mut self) {
        if !self.push.clear_due || self.push.url.is_some() {
            return;
        }
        let all = self
            .relays
            .home_relays
            .iter()
            .filter_map(relay_peer)
            .all(|r| {
                self.push
                    .at
                    .get(&r)
                    .is_some_and(|at| at.url.is_none() && at.outcome == Outcome::Done)
            });
        if all {
            self.push.clear_due = false;
            if let Err(e) = self.push_save() {
                tracing::warn!("saving the push setting failed: {e}");
            }
        }
    }

    /// Writes the endpoint to `config.json` (read again first, so nothing else in it is
    /// overwritten with an older copy).
    fn push_save(&mut self) -> Result<(), NodeError> {
        let mut config = self.me.home.config()?;
        config.push_url = self.push.url.clone();
        config.push_clear_due = self.push.clear_due && self.push.url.is_none();
        self.me.home.save_config(&config)?;
        self.me.config.push_url = config.push_url;
        self.me.config.push_clear_due = config.push_clear_due;
        Ok(())
    }

    /// The endpoint and its state at each home relay.
    pub(crate) fn push_info(&self) -> PushInfo {
        let url = self.push.url.clone();
        let relays = self
            .relays
            .home_relays
            .iter()
            .map(|addr| {
                let peer = relay_peer(addr);
                let connected = peer.is_some_and(|p| self.relays.relay_up.contains(&p));
                let at = peer
                    .and_then(|p| self.push.at.get(&p))
                    .filter(|at| at.url == url);
                let (state, code) = match at.map(|at| &at.outcome) {
                    Some(Outcome::Done) if url.is_some() => ("registered", None),
                    Some(Outcome::Done) => ("cleared", None),
                    Some(Outcome::Refused(c)) => ("refused", Some(c.label().to_owned())),
                    Some(Outcome::Failed(c)) => ("failed", Some(c.clone())),
                    Some(Outcome::Sending) => ("pending", None),
                    None if url.is_none() && !self.push.clear_due => ("none", None),
                    None => ("pending", None),
                };
                PushRelayInfo {
                    addr: addr.to_string(),
                    connected,
                    state: state.to_owned(),
                    code,
                }
            })
            .collect();
        PushInfo {
            host: url.as_deref().and_then(host_of),
            url,
            relays,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_before_they_are_sent() {
        assert_eq!(
            check_url("https://push.example.com/wake/abc").unwrap(),
            "https://push.example.com"
        );
        assert_eq!(
            check_url("http://127.0.0.1:8080/bob").unwrap(),
            "http://127.0.0.1:8080"
        );
        for bad in [
            "",
            "push.example.com/wake",
            "ftp://push.example.com/x",
            "file:///etc/passwd",
            "https://user:pw@push.example.com/x",
            "https://user@push.example.com/x",
            "https://push.example.com/x#frag",
            "https://push.example.com/a b",
            "https://push.example.com/\n",
            "http://",
            "http://:80/x",
            "mailto:someone@example.com",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?} accepted");
        }
        let long = format!(
            "https://push.example.com/{}",
            "a".repeat(MAX_PUSH_URL_BYTES)
        );
        assert!(check_url(&long).unwrap_err().contains("limit"));
    }

    #[test]
    fn only_the_host_is_shown() {
        assert_eq!(
            host_of("https://ntfy.example.net/secret-topic?x=1").as_deref(),
            Some("https://ntfy.example.net")
        );
        assert_eq!(
            host_of("http://127.0.0.1:9/t").as_deref(),
            Some("http://127.0.0.1:9")
        );
        let c = PushCommand::Set {
            url: "https://h/secret".into(),
            reply: tokio::sync::oneshot::channel().0,
        };
        assert!(!format!("{c:?}").contains("secret"));
    }
}
