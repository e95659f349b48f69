//! Commands from [`crate::Node`] handles, and the one place each goes to the part that
//! answers it.

use std::future::Future;

use tokio::sync::oneshot;

use super::{Engine, Internal, push};
use crate::{consts::MAX_COMMANDS_IN_FLIGHT, error::NodeError, types::*};

pub(crate) type Reply<T> = oneshot::Sender<Result<T, NodeError>>;

/// The rest of a command whose network part ran in a task: it finishes the state change
/// on the engine and answers the command.
pub(crate) struct Finish(Box<dyn FnOnce(&mut Engine) + Send>);

impl Finish {
    pub(super) fn run(self, engine: &mut Engine) {
        engine.answering = engine.answering.saturating_sub(1);
        (self.0)(engine);
    }
}

impl std::fmt::Debug for Finish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Finish")
    }
}

impl Engine {
    /// Runs a command's network part, `work`, in a task, so the engine serves other
    /// commands meanwhile; its result comes back as [`Internal::Answer`] and `finish`
    /// completes the command on the engine with it (answering `reply`, at once or after
    /// more work off the engine). At most [`MAX_COMMANDS_IN_FLIGHT`] run at once: beyond
    /// that the command is refused.
    pub(crate) fn off_task<T, R>(
        &mut self,
        reply: Reply<T>,
        work: impl Future<Output = R> + Send + 'static,
        finish: impl FnOnce(&mut Engine, R, Reply<T>) + Send + 'static,
    ) where
        T: Send + 'static,
        R: Send + 'static,
    {
        if self.answering >= MAX_COMMANDS_IN_FLIGHT {
            let _ = reply.send(Err(NodeError::unreachable(format!(
                "{MAX_COMMANDS_IN_FLIGHT} commands are waiting for the network; try again \
                 when some have answered"
            ))));
            return;
        }
        self.answering += 1;
        let tx = self.internal.clone();
        tokio::spawn(async move {
            let result = work.await;
            let finish = Finish(Box::new(move |engine: &mut Engine| {
                finish(engine, result, reply);
            }));
            // The engine has stopped if this fails: the reply is dropped with it, and the
            // caller sees the node stopped.
            let _ = tx.send(Internal::Answer(finish)).await;
        });
    }
}

/// A command from a [`crate::Node`] handle.
#[derive(Debug)]
pub(crate) enum Command {
    Id(Reply<IdInfo>),
    Link(Reply<LinkInfo>),
    AddContact {
        link: String,
        name: Option<String>,
        accept_new_key: bool,
        reply: Reply<AddedContact>,
    },
    AcceptIdentity {
        contact: String,
        reply: Reply<AddedContact>,
    },
    Contacts(Reply<Vec<ContactInfo>>),
    /// Look a contact up in the DHT now; answers with the contact as it is after.
    FindContact {
        contact: String,
        reply: Reply<ContactInfo>,
    },
    Send {
        contact: String,
        text: String,
        /// The client's key for the text (`client_id`): sent once under it.
        client: Option<String>,
        reply: Reply<MessageInfo>,
    },
    History {
        contact: String,
        limit: Option<u32>,
        before: Option<String>,
        mark_read: MarkRead,
        reply: Reply<Vec<MessageInfo>>,
    },
    Conversations(Reply<Vec<ConversationInfo>>),
    Presence {
        contact: Option<String>,
        reply: Reply<Vec<PresenceInfo>>,
    },
    SetStatus {
        away: bool,
        reply: Reply<()>,
    },
    Status(Reply<StatusInfo>),
    Search {
        query: String,
        /// Most hits (20 unless said, at most 500).
        limit: Option<u32>,
        reply: Reply<Vec<SearchHitInfo>>,
    },
    Safety {
        contact: String,
        reply: Reply<SafetyInfo>,
    },
    Verify {
        contact: String,
        scanned: Option<String>,
        reply: Reply<ContactInfo>,
    },
    RenameContact {
        contact: String,
        name: String,
        reply: Reply<ContactInfo>,
    },
    Group(GroupCommand),
    DeviceAdd {
        code: String,
        reply: Reply<DeviceInfo>,
    },
    Devices(Reply<Vec<DeviceInfo>>),
    /// Send a file to a contact or a group.
    FileSend {
        contact: Option<String>,
        group: Option<String>,
        path: String,
        caption: String,
        prepare: Prepare,
        reply: Reply<TransferInfo>,
    },
    /// Save a message's file (downloading it first if needed).
    FileGet {
        message: String,
        to: Option<String>,
        reply: Reply<TransferInfo>,
    },
    /// The transfers not finished, and those finished lately.
    Transfers(Reply<Vec<TransferInfo>>),
    /// Where a message's file is on this device, to decrypt on read.
    FileOpen {
        message: String,
        reply: Reply<crate::media::LocalFile>,
    },
    DeviceRevoke {
        device: String,
        reply: Reply<DeviceInfo>,
    },
    /// What an identity backup holds (sealed by the caller).
    BackupBundle(Reply<crate::device_link::Bundle>),
    /// Set, clear or show the push endpoint.
    Push(push::PushCommand),
    /// Add, remove or list home relays.
    Relay(super::relay_set::RelayCommand),
}

/// A group command.
#[derive(Debug)]
pub(crate) enum GroupCommand {
    Create {
        title: String,
        members: Vec<String>,
        reply: Reply<GroupInfo>,
    },
    Add {
        group: String,
        members: Vec<String>,
        /// Added as admins.
        admin: bool,
        reply: Reply<GroupInfo>,
    },
    Remove {
        group: String,
        members: Vec<String>,
        reply: Reply<GroupInfo>,
    },
    Leave {
        group: String,
        reply: Reply<GroupInfo>,
    },
    Info {
        group: String,
        reply: Reply<GroupInfo>,
    },
    List(Reply<Vec<GroupInfo>>),
    Send {
        group: String,
        text: String,
        /// The client's key for the text (`client_id`): sent once under it.
        client: Option<String>,
        reply: Reply<MessageInfo>,
    },
    History {
        group: String,
        limit: Option<u32>,
        before: Option<String>,
        mark_read: MarkRead,
        reply: Reply<Vec<MessageInfo>>,
    },
}

impl Engine {
    /// Commands that were waiting together, in their order. Texts to send that follow one
    /// another go as one batch ([`Engine::send_texts`]).
    pub(super) fn on_commands(&mut self, cmds: Vec<Command>) {
        let mut sends = Vec::new();
        for cmd in cmds {
            match cmd {
                Command::Send {
                    contact,
                    text,
                    client,
                    reply,
                } => sends.push(super::send::TextToSend {
                    contact,
                    text,
                    client,
                    reply,
                }),
                other => {
                    self.send_texts(std::mem::take(&mut sends));
                    self.on_command(other);
                }
            }
        }
        self.send_texts(sends);
    }

    pub(super) fn on_command(&mut self, cmd: Command) {
        match cmd {
            Command::Id(r) => {
                let _ = r.send(Ok(self.id_info()));
            }
            Command::Link(r) => {
                let _ = r.send(self.contact_link());
            }
            Command::AddContact {
                link,
                name,
                accept_new_key,
                reply,
            } => {
                self.add_contact(link, name, accept_new_key, reply);
            }
            Command::AcceptIdentity { contact, reply } => {
                self.accept_identity(&contact, reply);
            }
            Command::FindContact { contact, reply } => match self.resolve(&contact) {
                Ok(user) => self.find_contact(&user, reply),
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Contacts(r) => {
                let _ = r.send(Ok(self.contact_list()));
            }
            Command::Send {
                contact,
                text,
                client,
                reply,
            } => {
                let out = self.send_text_once(&contact, text, client.as_deref());
                let _ = reply.send(out);
            }
            Command::History {
                contact,
                limit,
                before,
                mark_read,
                reply,
            } => {
                let out = self.history(&contact, limit, before.as_deref(), &mark_read);
                let _ = reply.send(out);
            }
            Command::Conversations(r) => {
                let _ = r.send(self.conversations());
            }
            Command::Presence { contact, reply } => {
                self.query_presence(contact.as_deref(), reply);
            }
            Command::SetStatus { away, reply } => {
                self.relays.away = away;
                self.heartbeat();
                let _ = reply.send(Ok(()));
            }
            Command::Status(reply) => {
                // The connections are the network task's to tell, and the mailbox figures
                // each home relay's: asked from a task, so a busy network task or a slow
                // relay holds up only this answer (a relay that does not answer within
                // `STATUS_USAGE_WAIT` is shown with the figures it gave last).
                let net = self.net.clone();
                let usage = self.usage_requests();
                self.off_task(
                    reply,
                    async move {
                        let usage = futures::future::join_all(usage.into_iter().map(|ask| {
                            tokio::time::timeout(crate::consts::STATUS_USAGE_WAIT, ask)
                        }));
                        tokio::join!(net.peers(), usage)
                    },
                    |engine, (peers, usage), reply| {
                        for (relay, u) in usage.into_iter().flatten().flatten() {
                            engine.on_usage(relay, u);
                        }
                        let _ = reply.send(engine.status_info(peers));
                    },
                );
            }
            Command::Search {
                query,
                limit,
                reply,
            } => {
                let _ = reply.send(self.search(&query, limit));
            }
            Command::Safety { contact, reply } => {
                let _ = reply.send(self.safety(&contact));
            }
            Command::Verify {
                contact,
                scanned,
                reply,
            } => {
                let _ = reply.send(self.verify(&contact, scanned.as_deref()));
            }
            Command::RenameContact {
                contact,
                name,
                reply,
            } => {
                let _ = reply.send(self.rename_contact(&contact, &name));
            }
            Command::Group(cmd) => self.on_group_command(cmd),
            Command::DeviceAdd { code, reply } => {
                self.device_add(&code, reply);
            }
            Command::Devices(reply) => {
                let _ = reply.send(Ok(self.devices()));
            }
            Command::FileSend {
                contact,
                group,
                path,
                caption,
                prepare,
                reply,
            } => {
                let _ = reply.send(self.file_send(
                    contact.as_deref(),
                    group.as_deref(),
                    &path,
                    caption,
                    prepare,
                ));
            }
            Command::FileGet { message, to, reply } => self.file_get(&message, to, reply),
            Command::Transfers(reply) => {
                let _ = reply.send(self.transfers());
            }
            Command::FileOpen { message, reply } => {
                let _ = reply.send(self.file_open(&message));
            }
            Command::DeviceRevoke { device, reply } => {
                self.device_revoke(&device, reply);
            }
            Command::BackupBundle(reply) => {
                let _ = reply.send(self.backup_bundle());
            }
            Command::Push(cmd) => self.on_push_command(cmd),
            Command::Relay(cmd) => self.on_relay_command(cmd),
        }
    }
}
