//! `tern init` and `tern id`: creating an identity, showing it, backing it up and restoring
//! it, and the passphrase of the store.

use std::path::{Path, PathBuf};

use serde_json::json;
use tern_node::{
    Home,
    api::client::ApiClient,
    types::{BackupInfo, IdInfo},
};

use crate::{
    client,
    exit::{self, Failure},
    input::{new_passphrase, passphrase},
    opts::IdCmd,
    render::{print_created, print_json, show},
};

/// `tern init`.
pub(crate) fn init(home: &Home, json: bool, name: &str, device_name: &str) -> Result<(), Failure> {
    let created = home.init(name, device_name).map_err(|e| match e {
        tern_node::home::HomeError::AlreadyInitialised { .. } => {
            Failure::new(exit::HOME, e.to_string())
        }
        tern_node::home::HomeError::BadName => Failure::new(exit::BAD_INPUT, e.to_string()),
        other => Failure::new(exit::FAILURE, other.to_string()),
    })?;
    if json {
        print_json(
            &json!({"user_id": created.user_id, "device_id": created.device_id, "home": home.dir()}),
        );
    } else {
        outln!("created identity in {}", home.dir().display());
        outln!("user id   {}", created.user_id);
        outln!("device id {}", created.device_id);
        outln!("next: tern --home {} up", home.dir().display());
    }
    Ok(())
}

/// `tern id ...`.
pub(crate) async fn run(home: &Home, json: bool, cmd: IdCmd) -> Result<(), Failure> {
    match cmd {
        IdCmd::Show => {
            let v = client(home).await?.call("id.show", json!({})).await?;
            show(&v, json, |id: IdInfo| {
                outln!("name        {}", id.name);
                outln!("user id     {}", id.user_id);
                outln!("device id   {}", id.device_id);
                outln!("fingerprint {}", id.fingerprint);
            })
        }
        IdCmd::Backup {
            file,
            passphrase_file,
        } => backup(home, json, file, passphrase_file.as_deref()).await,
        IdCmd::Restore {
            file,
            relay,
            name,
            passphrase_file,
        } => restore(home, json, &file, relay, &name, passphrase_file.as_deref()),
        IdCmd::Passphrase {
            passphrase_file,
            new_passphrase_file,
            keyfile,
        } => {
            change_passphrase(
                home,
                json,
                passphrase_file.as_deref(),
                new_passphrase_file.as_deref(),
                keyfile,
            )
            .await
        }
    }
}

async fn backup(
    home: &Home,
    json: bool,
    file: PathBuf,
    passphrase_file: Option<&Path>,
) -> Result<(), Failure> {
    let file = std::env::current_dir()
        .map_err(|e| Failure::new(exit::FAILURE, format!("current directory: {e}")))?
        .join(file);
    let mut api = client(home).await?;
    let p = new_passphrase(passphrase_file, "backup passphrase")?;
    let v = api
        .call("id.backup", json!({"path": file, "passphrase": p.as_str()}))
        .await?;
    show(&v, json, |b: BackupInfo| {
        outln!(
            "backup written to {} ({} contacts, {} groups); keep it and its passphrase apart",
            b.path,
            b.contacts,
            b.groups
        );
    })
}

fn restore(
    home: &Home,
    json: bool,
    file: &Path,
    relay: Vec<String>,
    name: &str,
    passphrase_file: Option<&Path>,
) -> Result<(), Failure> {
    use tern_node::backup::BackupError;
    if home.is_initialised() {
        return Err(Failure::new(
            exit::HOME,
            format!(
                "{} already holds a Tern identity; restore into an empty home",
                home.dir().display()
            ),
        ));
    }
    let bytes = tern_node::backup::read_file(file)
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    let p = passphrase(passphrase_file, "backup passphrase: ")?;
    let relays = if relay.is_empty() { None } else { Some(relay) };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let created = tern_node::backup::restore(home, &bytes, &p, relays, name, now).map_err(|e| {
        let code = match &e {
            BackupError::File(_) | BackupError::Contents(_) => exit::PASSPHRASE,
            BackupError::BadInput(_) | BackupError::Weak(_) => exit::BAD_INPUT,
            BackupError::Home(tern_node::home::HomeError::AlreadyInitialised { .. }) => exit::HOME,
            _ => exit::FAILURE,
        };
        Failure::new(code, e.to_string())
    })?;
    print_created(json, home, &created, "restored", "new device id");
    Ok(())
}

async fn change_passphrase(
    home: &Home,
    json: bool,
    passphrase_file: Option<&Path>,
    new_passphrase_file: Option<&Path>,
    keyfile: bool,
) -> Result<(), Failure> {
    use tern_node::{home::HomeError, unlock};
    if !home.is_initialised() {
        return Err(Failure::new(
            exit::HOME,
            format!("no Tern identity in {}", home.dir().display()),
        ));
    }
    // Rekeying rewrites every page: a running node has the store open (and one with every
    // API session taken is running too). The home is this command's while it runs.
    let _lock = match home.lock() {
        Ok(lock) => lock,
        Err(HomeError::InUse { .. }) => {
            return Err(Failure::new(
                exit::NODE_RUNNING,
                "the node is running for this home: stop it (`tern down`) and run this again",
            ));
        }
        Err(e) => return Err(Failure::new(exit::FAILURE, e.to_string())),
    };
    if matches!(
        ApiClient::for_home(home).await,
        Ok(_) | Err(tern_node::api::client::ClientError::Busy)
    ) {
        return Err(Failure::new(
            exit::NODE_RUNNING,
            "the node is running for this home: stop it (Ctrl-C on `tern up`) and run this again",
        ));
    }
    let home = if unlock::uses_passphrase(home) {
        let p = passphrase(passphrase_file, "current store passphrase: ")?;
        home.clone().with_passphrase(&p)
    } else {
        home.clone()
    };
    let home_err = |e: HomeError| {
        let code = match &e {
            HomeError::WrongPassphrase { .. } | HomeError::PassphraseNeeded => exit::PASSPHRASE,
            HomeError::WeakPassphrase(_) => exit::BAD_INPUT,
            _ => exit::FAILURE,
        };
        Failure::new(code, e.to_string())
    };
    let mut store = home.open_store().map_err(home_err)?;
    let new = if keyfile {
        None
    } else {
        Some(new_passphrase(new_passphrase_file, "store passphrase")?)
    };
    let target = match &new {
        Some(p) => unlock::Target::Passphrase(p),
        None => unlock::Target::Keyfile,
    };
    unlock::change(&home, &mut store, target).map_err(home_err)?;
    let mode = if keyfile { "keyfile" } else { "passphrase" };
    if json {
        print_json(&json!({"unlock": mode}));
    } else if keyfile {
        outln!(
            "the store is now unlocked by a new random key in {}",
            home.store_key_path().display()
        );
    } else {
        outln!(
            "the store is now unlocked by the new passphrase; `tern up` asks for it (or --passphrase-file)"
        );
    }
    Ok(())
}
