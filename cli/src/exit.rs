//! Failures and the exit codes they end with (also in `tern --help`):
//!
//! | code | meaning |
//! | ---: | --- |
//! | 0 | success |
//! | 1 | any other failure |
//! | 2 | bad command-line usage |
//! | 3 | no node is running for this home (start one with `tern up`) |
//! | 4 | unknown or ambiguous contact or group, or unknown message |
//! | 5 | bad input: malformed or tampered contact link, empty or oversize text |
//! | 6 | the contact's identity key changed: sending is blocked until accepted |
//! | 7 | network: relay unreachable (for a first message to a contact) |
//! | 8 | home: no identity yet (`tern init`), or one exists already |
//! | 9 | group: not an admin, not (or no longer) a member, or the group would be over its size limit |
//! | 10 | passphrase or backup refused: wrong passphrase, or a backup file that is altered, truncated, not a backup or of an unknown version |
//! | 11 | the node is running: stop it first (`tern id passphrase`) |
//! | 12 | this device was revoked by another device of the user: it no longer sends |
//! | 13 | a file could not be sent or fetched |
//! | 14 | a new device's link was not confirmed: the words typed are not the record's, or no answer came; nothing was applied |
//! | 15 | a home relay refused the push endpoint (`not_allowed`: outside its allow-list) |
//!
//! The node's API errors map onto them by their JSON-RPC code (`docs/api.md`).

use tern_node::api::client::ClientError;

/// Any other failure.
pub(crate) const FAILURE: u8 = 1;
/// Bad command-line usage (also what clap exits with).
pub(crate) const USAGE: u8 = 2;
/// No node is running for this home.
pub(crate) const NOT_RUNNING: u8 = 3;
/// Unknown or ambiguous contact or group, or unknown message.
pub(crate) const UNKNOWN: u8 = 4;
/// Bad input: a malformed link, an empty or oversize text, a bad argument.
pub(crate) const BAD_INPUT: u8 = 5;
/// The contact's identity key changed.
pub(crate) const IDENTITY_CHANGED: u8 = 6;
/// A relay could not be reached.
pub(crate) const NETWORK: u8 = 7;
/// The home has no identity yet, or has one already.
pub(crate) const HOME: u8 = 8;
/// The group refused it.
pub(crate) const GROUP: u8 = 9;
/// A wrong passphrase, or a damaged backup.
pub(crate) const PASSPHRASE: u8 = 10;
/// The node must be stopped first.
pub(crate) const NODE_RUNNING: u8 = 11;
/// This device was revoked.
pub(crate) const REVOKED: u8 = 12;
/// A file could not be sent or fetched.
pub(crate) const FILE: u8 = 13;
/// A new device's link was not confirmed.
pub(crate) const LINK_NOT_CONFIRMED: u8 = 14;
/// A home relay refused the push endpoint.
pub(crate) const PUSH_REFUSED: u8 = 15;

/// A failure with its exit code.
#[derive(Debug)]
pub(crate) struct Failure {
    /// The exit code (one of the constants above).
    pub(crate) code: u8,
    /// What is printed after `tern: `.
    pub(crate) message: String,
}

impl Failure {
    pub(crate) fn new(code: u8, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }
}

/// The exit code for an error code of the node's API.
fn api_code(code: i64) -> u8 {
    match code {
        1001 | 1002 | 1006 | 1012 | 1013 => UNKNOWN,
        1003 | 1005 | -32602 => BAD_INPUT,
        1004 | 1010 => IDENTITY_CHANGED,
        1009 => NETWORK,
        1014..=1016 => GROUP,
        1017 => BAD_INPUT,
        1019 => REVOKED,
        1020 => FILE,
        1021 => LINK_NOT_CONFIRMED,
        1022 => PUSH_REFUSED,
        _ => FAILURE,
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        let code = match &e {
            ClientError::NotRunning { .. } => NOT_RUNNING,
            ClientError::Rpc { code, .. } => api_code(*code),
            _ => FAILURE,
        };
        Failure::new(code, e.to_string())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::new(FAILURE, format!("{e:#}"))
    }
}
