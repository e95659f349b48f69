//! End-to-end tests against the real `tern-relay` binary on 127.0.0.1, through the client.

#[path = "../support/mod.rs"]
mod support;

mod directory;
mod durability;
mod grants;
mod mailboxes;
mod presence;
mod push;

use support::{Relay, WAIT, eventually};
use tern_relay::rpc::Requests as _;
use tern_relay::{
    Multiaddr, PeerId,
    client::{self, Client, Event, Proto, RequestError},
    wire::{
        ErrorCode, Frame,
        mailbox::{self, Envelope},
        presence::{State, Status},
    },
};
use tokio::sync::mpsc;

async fn connect(addr: &Multiaddr) -> (Client, mpsc::Receiver<Event>) {
    let key = libp2p_key();
    Client::connect(key, addr.clone(), client::Config::default())
        .await
        .expect("connect to relay")
}

fn libp2p_key() -> tern_relay::client::Keypair {
    tern_relay::client::Keypair::generate_ed25519()
}

async fn next_event(rx: &mut mpsc::Receiver<Event>) -> Event {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("event in time")
        .expect("client alive")
}

fn rejected(e: RequestError) -> ErrorCode {
    match e {
        RequestError::Rejected(r) => r.code,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

async fn fetch_all(c: &Client) -> Vec<Envelope> {
    let mut out = Vec::new();
    let mut after = 0;
    loop {
        let (page, more) = c.fetch(after, 256).await.unwrap();
        if let Some(last) = page.last() {
            after = last.id;
        }
        out.extend(page);
        if !more {
            return out;
        }
    }
}
