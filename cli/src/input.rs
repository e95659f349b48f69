//! What `tern` reads besides its arguments: passphrases (from a file or the terminal), a TEXT
//! argument from standard input, and answers typed on standard input.

use std::io::Read;

use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use tern_node::consts::MAX_TEXT_BYTES;

use crate::exit::{self, Failure};

/// Reads a passphrase from the first line of `path` (a trailing newline is not part of it).
fn read_passphrase_file(path: &std::path::Path) -> Result<Zeroizing<String>, Failure> {
    let limit = tern_node::backup::MAX_PASSPHRASE_FILE_BYTES;
    let mut bytes = Zeroizing::new(Vec::new());
    std::fs::File::open(path)
        .and_then(|f| f.take(limit as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| {
            Failure::new(
                exit::FAILURE,
                format!("passphrase file {}: {e}", path.display()),
            )
        })?;
    if bytes.len() > limit {
        return Err(Failure::new(
            exit::BAD_INPUT,
            format!("passphrase file {} is over {limit} bytes", path.display()),
        ));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| {
        Failure::new(
            exit::BAD_INPUT,
            format!("passphrase file {} is not UTF-8", path.display()),
        )
    })?;
    let line = text.strip_suffix('\n').unwrap_or(text);
    let line = line.strip_suffix('\r').unwrap_or(line);
    Ok(Zeroizing::new(line.to_owned()))
}

/// A passphrase from `file`, else asked at the terminal without echo.
pub(crate) fn passphrase(
    file: Option<&std::path::Path>,
    prompt: &str,
) -> Result<Zeroizing<String>, Failure> {
    match file {
        Some(f) => read_passphrase_file(f),
        None => rpassword::prompt_password(prompt)
            .map(Zeroizing::new)
            .map_err(|e| {
                Failure::new(
                    exit::USAGE,
                    format!(
                        "cannot read a passphrase at the terminal ({e}); use --passphrase-file"
                    ),
                )
            }),
    }
}

/// A new passphrase: from `file`, else asked twice; checked against the strength rule.
pub(crate) fn new_passphrase(
    file: Option<&std::path::Path>,
    what: &str,
) -> Result<Zeroizing<String>, Failure> {
    let p = match file {
        Some(f) => read_passphrase_file(f)?,
        None => {
            let first = passphrase(None, &format!("new {what}: "))?;
            check_strength(&first)?;
            let again = passphrase(None, &format!("new {what} again: "))?;
            if !bool::from(first.as_bytes().ct_eq(again.as_bytes())) {
                return Err(Failure::new(exit::BAD_INPUT, "the two passphrases differ"));
            }
            first
        }
    };
    check_strength(&p)?;
    Ok(p)
}

/// Whether `p` is strong enough for a backup or a store (the node's rule).
fn check_strength(p: &str) -> Result<(), Failure> {
    tern_node::backup::check_strength(p).map_err(|e| Failure::new(exit::BAD_INPUT, e.to_string()))
}

/// A TEXT argument: `-` reads standard input (without its trailing newlines). A text over
/// the node's limit is refused here, as the node would refuse it: a request that large
/// would not even reach it (the local API takes messages of at most 256 KiB). Standard
/// input is read only up to the limit; the rest is counted, not kept.
pub(crate) fn text_arg(text: String) -> Result<String, Failure> {
    let too_long = |len: usize| {
        Failure::new(
            exit::BAD_INPUT,
            tern_node::NodeError::TextTooLong {
                len,
                max: MAX_TEXT_BYTES,
            }
            .to_string(),
        )
    };
    if text != "-" {
        if text.len() > MAX_TEXT_BYTES {
            return Err(too_long(text.len()));
        }
        return Ok(text);
    }
    let reading =
        |e: std::io::Error| Failure::new(exit::BAD_INPUT, format!("reading standard input: {e}"));
    let mut stdin = std::io::stdin().lock();
    let mut buf = Vec::new();
    // Room for the text and its trailing newlines: what fills it is over the limit.
    let room = MAX_TEXT_BYTES as u64 + TRAILING_NEWLINES;
    (&mut stdin)
        .take(room)
        .read_to_end(&mut buf)
        .map_err(reading)?;
    if buf.len() as u64 == room {
        let rest = std::io::copy(&mut stdin, &mut std::io::sink()).map_err(reading)?;
        return Err(too_long(usize::try_from(room + rest).unwrap_or(usize::MAX)));
    }
    let text = String::from_utf8(buf)
        .map_err(|_| Failure::new(exit::BAD_INPUT, "standard input is not UTF-8 text"))?;
    let text = text.trim_end_matches('\n');
    if text.len() > MAX_TEXT_BYTES {
        return Err(too_long(text.len()));
    }
    Ok(text.to_owned())
}

/// Bytes of trailing newlines a text on standard input may have past the limit (they are
/// dropped); input longer than that is refused unread.
const TRAILING_NEWLINES: u64 = 4096;

/// Lines of standard input, read by a thread of their own as they come (the channel closes
/// at end of input), shared by the answers to a device link's offers.
pub(crate) fn stdin_lines()
-> std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<String>>> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    std::sync::Arc::new(tokio::sync::Mutex::new(rx))
}
