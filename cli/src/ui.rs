//! `tern ui`: opens the running node's web UI in a browser with a one-time code, or ends
//! every web UI session (`--sign-out`).

use serde::Deserialize;
use serde_json::json;
use tern_node::Home;

use crate::{
    client,
    exit::{self, Failure},
    render::parse,
};

/// The node's answer to `ui.code`.
#[derive(Debug, Deserialize)]
struct UiCode {
    /// The web UI's address with the one-time code in its fragment.
    url: String,
}

/// The node's answer to `ui.sign_out`.
#[derive(Debug, Deserialize)]
struct SignedOut {
    /// How many sessions were live.
    ended: u64,
}

/// `tern ui --sign-out`: ends every web UI session; their pages lose the node at once.
pub(crate) async fn sign_out(home: &Home) -> Result<(), Failure> {
    let mut c = client(home).await?;
    let v = c.call("ui.sign_out", json!({"all": true})).await?;
    let ended = parse::<SignedOut>(&v)?.ended;
    match ended {
        0 => outln!("no web UI session was open"),
        1 => outln!("ended 1 web UI session"),
        n => outln!("ended {n} web UI sessions"),
    }
    Ok(())
}

/// `tern ui`: prints the one-time URL with `print`, else opens it in a browser.
pub(crate) async fn open(home: &Home, print: bool) -> Result<(), Failure> {
    let mut c = client(home).await?;
    let v = c.call("ui.code", json!({})).await?;
    let url = parse::<UiCode>(&v)?.url;
    if print {
        outln!("{url}");
        return Ok(());
    }
    // The code travels in the URL's fragment, which the browser never sends; the file
    // that redirects to it is readable by this user only.
    let page = home.dir().join("ui-open.html");
    let html = format!(
        "<!doctype html><meta charset=utf-8><meta name=referrer content=no-referrer>\
         <meta http-equiv=refresh content=\"0;url={url}\"><title>Tern</title>"
    );
    tern_node::home::write_atomic(&page, html.as_bytes(), true)
        .map_err(|e| Failure::new(exit::FAILURE, e.to_string()))?;
    let opener = std::env::var("BROWSER").ok().unwrap_or_else(|| {
        if cfg!(target_os = "macos") {
            "open"
        } else {
            "xdg-open"
        }
        .to_owned()
    });
    match std::process::Command::new(&opener).arg(&page).status() {
        Ok(st) if st.success() => {
            outln!("opened the web UI ({})", page.display());
            Ok(())
        }
        _ => Err(Failure::new(
            exit::FAILURE,
            format!(
                "could not start {opener}; open {} in a browser (valid 60 s), or run `tern ui --print`",
                page.display()
            ),
        )),
    }
}
