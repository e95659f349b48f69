//! # tern-node
//!
//! Tern's device engine: the libp2p swarm ([`net`]), the engine that owns the store and
//! the keys and turns commands into encrypted deliveries and received ciphertexts into
//! stored messages, and the local API ([`api`]) that the `tern` CLI and UIs use.
//!
//! ```text
//!  API clients ──JSON-RPC/WebSocket──▶ api::server ──▶ Node (handle) ──cmd──▶ Engine ─┐
//!                                                      ▲  events (broadcast)          │ store,
//!                                                      └──────────────────────────────┤ crypto
//!                                   net::Client ◀──cmd── Engine ──events◀── net::EventLoop (Swarm)
//! ```
//!
//! Formats: the plaintext [`envelope`], [`link`]s, `/tern/direct/1` ([`net::direct`]);
//! `docs/api.md` documents the API and `docs/node.md` the node.
#![deny(missing_docs)]
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod api;
pub mod backup;
pub mod consts;
pub mod daemon;
pub mod device_link;
mod engine;
pub mod envelope;
pub mod error;
pub mod group;
pub mod home;
pub mod link;
pub mod media;
pub mod net;
pub mod text;
pub mod types;
pub mod unlock;

use libp2p::{Multiaddr, identity::Keypair};
use tokio::sync::{broadcast, mpsc, oneshot};

pub use device_link::{LinkAnswer, LinkOffer, link_new_device};
use engine::{Command, GroupCommand};
pub use error::NodeError;
pub use home::Home;
pub use libp2p;
use types::*;

/// How to start a node.
#[derive(Debug, Clone)]
pub struct Config {
    /// The home directory (must hold an identity: see [`Home::init`]).
    pub home: Home,
    /// Home relays (each ending in `/p2p/<peer id>`); at least one.
    pub relays: Vec<Multiaddr>,
    /// Addresses for the swarm to listen on.
    pub listen: Vec<Multiaddr>,
    /// Connect to contacts' devices directly (through relay circuits upgraded by DCUtR)
    /// and deliver over `/tern/direct/1`. `false`: everything goes through mailboxes, and
    /// contacts never learn this device's addresses.
    pub direct: bool,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The home could not be opened.
    #[error(transparent)]
    Home(#[from] home::HomeError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] net::StartError),
    /// Something else failed while loading.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// No relay was given.
    #[error("a node needs at least one relay")]
    NoRelay,
    /// The lock given is another home's.
    #[error("the home lock given is another home's")]
    NotLocked,
}

/// A handle to a running node. Cheap to clone; the node stops when every handle is dropped.
#[derive(Debug, Clone)]
pub struct Node {
    cmd: mpsc::Sender<Command>,
    events: broadcast::Sender<Event>,
    /// Set when a stop is asked for over the API (`tern down`).
    stop: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

impl Node {
    /// Opens the home, starts the network and the engine. `lock` is the home taken for this
    /// process ([`Home::lock`]): one node per home, held for as long as its engine runs.
    pub async fn start(config: Config, lock: home::HomeLock) -> Result<Node, StartError> {
        if config.relays.is_empty() {
            return Err(StartError::NoRelay);
        }
        if !lock.holds(&config.home) {
            return Err(StartError::NotLocked);
        }
        let (store, keys) = config.home.open()?;
        let keypair =
            Keypair::ed25519_from_bytes(*keys.device.network_secret()).map_err(NodeError::from)?;
        let (net, net_events, event_loop) = net::new(
            keypair.clone(),
            net::Config {
                listen: config.listen.clone(),
                direct: config.direct,
            },
        )?;
        tokio::spawn(event_loop.run());
        let (events, _) = broadcast::channel(consts::EVENT_BROADCAST);
        let (cmd_tx, cmd_rx) = mpsc::channel(consts::COMMAND_QUEUE);
        let (internal_tx, internal_rx) = mpsc::channel(consts::NETWORK_EVENT_QUEUE);
        let engine = engine::Engine::new(
            engine::Setup {
                home: config.home.clone(),
                store,
                config: config.home.config()?,
                keys,
                keypair,
                net,
                home_relays: config.relays.clone(),
                direct: config.direct,
                clock: engine::Clock::system(),
                courier: None,
            },
            events.clone(),
            internal_tx,
        )?;
        tokio::spawn(async move {
            engine.run(cmd_rx, net_events, internal_rx).await;
            drop(lock);
        });
        Ok(Node {
            cmd: cmd_tx,
            events,
            stop: std::sync::Arc::new(tokio::sync::watch::Sender::new(false)),
        })
    }

    /// Asks the process running this node to stop, as Ctrl-C would (`tern down`, API
    /// `node.stop`).
    pub fn request_stop(&self) {
        self.stop.send_replace(true);
    }

    /// Resolves once a stop was asked for with [`Node::request_stop`].
    pub async fn stop_requested(&self) {
        let mut asked = self.stop.subscribe();
        let _ = asked.wait_for(|s| *s).await;
    }

    /// Subscribes to node events.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, NodeError>>) -> Command,
    ) -> Result<T, NodeError> {
        self.queue(make).await?.wait().await
    }

    /// Queues a command now and returns its pending reply: commands queued one after another
    /// reach the engine in that order, however long their replies take.
    async fn queue<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, NodeError>>) -> Command,
    ) -> Result<Pending<T>, NodeError> {
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send(make(tx))
            .await
            .map_err(|_| NodeError::Stopped)?;
        Ok(Pending(rx))
    }

    /// Queues a text to a contact and returns its pending reply (see [`Pending`]): texts
    /// queued one after another are sent in that order. [`Node::send`] waits for it.
    ///
    /// `client` is the caller's own key for the text (`client_id` in the API, 1 to 64
    /// visible ASCII characters): a text sent again under a key it was sent under in the
    /// last 30 days is not sent twice; the answer is the message already sent, as it
    /// stands now. A key used for another text or conversation is refused.
    pub async fn queue_send(
        &self,
        contact: String,
        text: String,
        client: Option<String>,
    ) -> Result<Pending<MessageInfo>, NodeError> {
        self.queue(|reply| Command::Send {
            contact,
            text,
            client,
            reply,
        })
        .await
    }

    /// Queues a text to a group, like [`Node::queue_send`].
    pub async fn queue_group_send(
        &self,
        group: String,
        text: String,
        client: Option<String>,
    ) -> Result<Pending<MessageInfo>, NodeError> {
        self.queue(|reply| {
            Command::Group(GroupCommand::Send {
                group,
                text,
                client,
                reply,
            })
        })
        .await
    }

    /// This user and device.
    pub async fn id(&self) -> Result<IdInfo, NodeError> {
        self.call(Command::Id).await
    }

    /// A signed contact link for this user.
    pub async fn contact_link(&self) -> Result<LinkInfo, NodeError> {
        self.call(Command::Link).await
    }

    /// Adds (or updates) a contact from a link. A link with a different identity key for a
    /// known contact is refused with [`NodeError::IdentityChanged`] unless `accept_new_key`.
    pub async fn add_contact(
        &self,
        link: String,
        name: Option<String>,
        accept_new_key: bool,
    ) -> Result<AddedContact, NodeError> {
        self.call(|reply| Command::AddContact {
            link,
            name,
            accept_new_key,
            reply,
        })
        .await
    }

    /// Accepts a pending identity key change for a contact.
    pub async fn accept_identity(&self, contact: String) -> Result<AddedContact, NodeError> {
        self.call(|reply| Command::AcceptIdentity { contact, reply })
            .await
    }

    /// Looks a contact (name or user id) up in the DHT now and answers with the contact as
    /// it is afterwards: with the relays of their newest record, if that verified and was
    /// newer than what was known.
    pub async fn find_contact(&self, contact: String) -> Result<ContactInfo, NodeError> {
        self.call(|reply| Command::FindContact { contact, reply })
            .await
    }

    /// The contacts.
    pub async fn contacts(&self) -> Result<Vec<ContactInfo>, NodeError> {
        self.call(Command::Contacts).await
    }

    /// Sends a text to a contact (name or user id).
    pub async fn send(&self, contact: String, text: String) -> Result<MessageInfo, NodeError> {
        self.queue_send(contact, text, None).await?.wait().await
    }

    /// A page of a conversation in display order; `mark_read` marks it read and sends read
    /// receipts.
    pub async fn history(
        &self,
        contact: String,
        limit: Option<u32>,
        before: Option<String>,
        mark_read: types::MarkRead,
    ) -> Result<Vec<MessageInfo>, NodeError> {
        self.call(|reply| Command::History {
            contact,
            limit,
            before,
            mark_read,
            reply,
        })
        .await
    }

    /// The conversation list.
    pub async fn conversations(&self) -> Result<Vec<ConversationInfo>, NodeError> {
        self.call(Command::Conversations).await
    }

    /// Contacts' presence (one or all), asked from their relays.
    pub async fn presence(&self, contact: Option<String>) -> Result<Vec<PresenceInfo>, NodeError> {
        self.call(|reply| Command::Presence { contact, reply })
            .await
    }

    /// Sets this device online or away.
    pub async fn set_status(&self, away: bool) -> Result<(), NodeError> {
        self.call(|reply| Command::SetStatus { away, reply }).await
    }

    /// The node's state.
    pub async fn status(&self) -> Result<StatusInfo, NodeError> {
        self.call(Command::Status).await
    }

    /// Full-text search over all conversations.
    pub async fn search(
        &self,
        query: String,
        limit: Option<u32>,
    ) -> Result<Vec<SearchHitInfo>, NodeError> {
        self.call(|reply| Command::Search {
            query,
            limit,
            reply,
        })
        .await
    }

    /// The safety number with a contact.
    pub async fn safety_number(&self, contact: String) -> Result<SafetyInfo, NodeError> {
        self.call(|reply| Command::Safety { contact, reply }).await
    }

    /// Marks a contact verified (after comparing safety numbers; `scanned` is the other
    /// side's QR payload in hex, checked if given).
    pub async fn verify(
        &self,
        contact: String,
        scanned: Option<String>,
    ) -> Result<ContactInfo, NodeError> {
        self.call(|reply| Command::Verify {
            contact,
            scanned,
            reply,
        })
        .await
    }

    /// Gives a contact (name or user id) another name, as this user sees them.
    pub async fn rename_contact(
        &self,
        contact: String,
        name: String,
    ) -> Result<ContactInfo, NodeError> {
        self.call(|reply| Command::RenameContact {
            contact,
            name,
            reply,
        })
        .await
    }

    /// Links a new device of this user from the code it shows (`tern device link`); the
    /// answer carries the record's link words, which the new device must show too.
    pub async fn device_add(&self, code: String) -> Result<DeviceInfo, NodeError> {
        self.call(|reply| Command::DeviceAdd { code, reply }).await
    }

    /// Writes an identity backup to `path` (absolute), sealed under `passphrase` (which
    /// must meet [`tern_crypto::passphrase::check_strength`]). The engine only gathers the
    /// record; Argon2id and the write run on a blocking thread, so the node keeps working.
    pub async fn id_backup(
        &self,
        path: std::path::PathBuf,
        passphrase: zeroize::Zeroizing<String>,
    ) -> Result<types::BackupInfo, NodeError> {
        if !path.is_absolute() {
            return Err(NodeError::BadRequest(
                "the backup path must be absolute".into(),
            ));
        }
        tern_crypto::passphrase::check_strength(&passphrase)
            .map_err(|e| NodeError::WeakPassphrase(e.to_string()))?;
        let bundle = self.call(Command::BackupBundle).await?;
        tokio::task::spawn_blocking(move || {
            let sealed = backup::seal(&bundle, &passphrase)?;
            backup::write_file(&path, &sealed)?;
            let groups: std::collections::HashSet<&String> =
                bundle.group_ops.iter().map(|(g, _)| g).collect();
            Ok(types::BackupInfo {
                path: path.display().to_string(),
                bytes: sealed.len() as u64,
                contacts: bundle.contacts.len(),
                groups: groups.len(),
            })
        })
        .await
        .map_err(|e| NodeError::Io(format!("the backup task failed: {e}")))?
    }

    /// Sets this device's push endpoint (an `http(s)` URL under the home relays'
    /// `push.allowed_prefixes`) and registers it at every home relay that is up (the others
    /// get it when they come up). A relay's refusal is [`NodeError::PushRefused`].
    pub async fn push_set(&self, url: String) -> Result<PushInfo, NodeError> {
        self.call(|reply| Command::Push(engine::push::PushCommand::Set { url, reply }))
            .await
    }

    /// Removes the push endpoint at every home relay (those down now, when they come up).
    pub async fn push_clear(&self) -> Result<PushInfo, NodeError> {
        self.call(|reply| Command::Push(engine::push::PushCommand::Clear(reply)))
            .await
    }

    /// The push endpoint and its registration at each home relay.
    pub async fn push_status(&self) -> Result<PushInfo, NodeError> {
        self.call(|reply| Command::Push(engine::push::PushCommand::Status(reply)))
            .await
    }

    /// Adds a home relay (a multiaddr ending in `/p2p/<peer id>`): saved, connected and set
    /// up, and told to contacts and this user's other devices, whose messages then go to it
    /// too. Answers the home relays.
    pub async fn relay_add(&self, addr: String) -> Result<Vec<types::RelayInfo>, NodeError> {
        self.call(|reply| Command::Relay(engine::relay_set::RelayCommand::Add { addr, reply }))
            .await
    }

    /// Removes a home relay (the last one stays), telling contacts and own devices.
    /// Answers the home relays.
    pub async fn relay_remove(&self, addr: String) -> Result<Vec<types::RelayInfo>, NodeError> {
        self.call(|reply| Command::Relay(engine::relay_set::RelayCommand::Remove { addr, reply }))
            .await
    }

    /// The home relays and where each stands.
    pub async fn relay_list(&self) -> Result<Vec<types::RelayInfo>, NodeError> {
        self.call(|reply| Command::Relay(engine::relay_set::RelayCommand::List(reply)))
            .await
    }

    /// This user's devices.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>, NodeError> {
        self.call(Command::Devices).await
    }

    /// Sends a file (an image is prepared first as `prepare` says: metadata stripped, scaled
    /// unless [`types::Prepare::Original`], or sent as it is) to a contact or a group; answers
    /// once it is staged for upload. `transfer` events follow it; the message is sent once
    /// the relay holds the whole file.
    pub async fn file_send(
        &self,
        contact: Option<String>,
        group: Option<String>,
        path: String,
        caption: String,
        prepare: types::Prepare,
    ) -> Result<TransferInfo, NodeError> {
        self.call(|reply| Command::FileSend {
            contact,
            group,
            path,
            caption,
            prepare,
            reply,
        })
        .await
    }

    /// Saves a message's file to `to` (which must not exist), downloading it first when this
    /// device does not hold it yet (then the answer says `downloading` and a `transfer` event
    /// says when it is saved). Without `to`, only makes sure the file is here.
    pub async fn file_get(
        &self,
        message: String,
        to: Option<String>,
    ) -> Result<TransferInfo, NodeError> {
        self.call(|reply| Command::FileGet { message, to, reply })
            .await
    }

    /// A message's file as this device holds it (encrypted), to decrypt on read: for the
    /// web UI, which shows files from memory rather than from a path.
    pub async fn file_open(&self, message: String) -> Result<media::LocalFile, NodeError> {
        self.call(|reply| Command::FileOpen { message, reply })
            .await
    }

    /// File transfers not finished, and those finished in the last day.
    pub async fn transfers(&self) -> Result<Vec<TransferInfo>, NodeError> {
        self.call(Command::Transfers).await
    }

    /// Revokes another device of this user (by device id or name): it gets nothing sent
    /// from now on, and its messages are refused.
    pub async fn device_revoke(&self, device: String) -> Result<DeviceInfo, NodeError> {
        self.call(|reply| Command::DeviceRevoke { device, reply })
            .await
    }

    /// Creates a group with this user as admin and the given contacts (names or user ids)
    /// as members.
    pub async fn group_create(
        &self,
        title: String,
        members: Vec<String>,
    ) -> Result<GroupInfo, NodeError> {
        self.call(|reply| {
            Command::Group(GroupCommand::Create {
                title,
                members,
                reply,
            })
        })
        .await
    }

    /// Adds contacts to a group (admins only; at most
    /// [`consts::MAX_GROUP_MEMBERS`] members in all), as admins when `admin` (junior to
    /// every admin there is: see [`group`]).
    pub async fn group_add(
        &self,
        group: String,
        members: Vec<String>,
        admin: bool,
    ) -> Result<GroupInfo, NodeError> {
        self.call(|reply| {
            Command::Group(GroupCommand::Add {
                group,
                members,
                admin,
                reply,
            })
        })
        .await
    }

    /// Removes members (names or user ids) from a group (admins only).
    pub async fn group_remove(
        &self,
        group: String,
        members: Vec<String>,
    ) -> Result<GroupInfo, NodeError> {
        self.call(|reply| {
            Command::Group(GroupCommand::Remove {
                group,
                members,
                reply,
            })
        })
        .await
    }

    /// Leaves a group.
    pub async fn group_leave(&self, group: String) -> Result<GroupInfo, NodeError> {
        self.call(|reply| Command::Group(GroupCommand::Leave { group, reply }))
            .await
    }

    /// A group (by id or title).
    pub async fn group_info(&self, group: String) -> Result<GroupInfo, NodeError> {
        self.call(|reply| Command::Group(GroupCommand::Info { group, reply }))
            .await
    }

    /// The groups this device knows.
    pub async fn groups(&self) -> Result<Vec<GroupInfo>, NodeError> {
        self.call(|reply| Command::Group(GroupCommand::List(reply)))
            .await
    }

    /// Sends a text to a group: encrypted once with this device's sender key.
    pub async fn group_send(&self, group: String, text: String) -> Result<MessageInfo, NodeError> {
        self.queue_group_send(group, text, None).await?.wait().await
    }

    /// A page of a group's history in display order (the same order on every member
    /// device); `mark_read` marks it read.
    pub async fn group_history(
        &self,
        group: String,
        limit: Option<u32>,
        before: Option<String>,
        mark_read: types::MarkRead,
    ) -> Result<Vec<MessageInfo>, NodeError> {
        self.call(|reply| {
            Command::Group(GroupCommand::History {
                group,
                limit,
                before,
                mark_read,
                reply,
            })
        })
        .await
    }
}

/// The reply to a command already queued at the engine ([`Node::queue_send`]).
#[derive(Debug)]
pub struct Pending<T>(oneshot::Receiver<Result<T, NodeError>>);

impl<T> Pending<T> {
    /// Waits for the engine's reply.
    pub async fn wait(self) -> Result<T, NodeError> {
        self.0.await.map_err(|_| NodeError::Stopped)?
    }
}
