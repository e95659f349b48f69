//! The local API: JSON-RPC 2.0 over WebSocket on 127.0.0.1, with a bearer token.
//!
//! `docs/api.md` lists every method, its parameters and results, the events and the error
//! codes. [`server::serve`] runs it for a [`crate::Node`]; [`client::ApiClient`] is what the
//! `tern` CLI (and the tests) use.

pub mod client;
mod http;
pub mod server;
pub mod ui;

use std::{net::SocketAddr, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    consts::API_TOKEN_BYTES,
    home::{Home, HomeError, read_private, write_atomic},
};

/// What a running node writes to `node.json` in its home.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeFile {
    /// The API address.
    pub api: SocketAddr,
    /// The node's process id.
    pub pid: u32,
}

/// Makes a new random API token and writes it (0600) to the home.
pub fn new_token(home: &Home) -> Result<String, HomeError> {
    let mut bytes = [0u8; API_TOKEN_BYTES];
    getrandom::fill(&mut bytes).map_err(|e| HomeError::Crypto(e.to_string()))?;
    let token = tern_crypto::hex::encode(&bytes);
    zeroize::Zeroize::zeroize(&mut bytes);
    write_atomic(&home.token_path(), token.as_bytes(), true)?;
    Ok(token)
}

/// Reads the API token from the home.
pub fn read_token(home: &Home) -> Result<String, HomeError> {
    let bytes = read_private(&home.token_path(), 4 * API_TOKEN_BYTES)?;
    Ok(String::from_utf8_lossy(&bytes).trim().to_owned())
}

/// Writes `node.json`.
pub fn write_node_file(home: &Home, file: &NodeFile) -> Result<(), HomeError> {
    let bytes = serde_json::to_vec(file).map_err(|e| HomeError::Config {
        path: home.node_file_path(),
        reason: e.to_string(),
    })?;
    write_atomic(&home.node_file_path(), &bytes, false)
}

/// Reads `node.json`, if there is one.
pub fn read_node_file(path: &Path) -> Option<NodeFile> {
    let bytes = std::fs::read(path).ok()?;
    serde_json::from_slice(&bytes).ok()
}
