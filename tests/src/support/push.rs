//! A local HTTP receiver of push wake-ups.

use super::*;

/// A POST a [`PushReceiver`] got.
#[derive(Debug, Clone)]
pub struct PushPost {
    /// When it arrived.
    pub at: Instant,
    /// The request path.
    pub path: String,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body.
    pub body: String,
}

/// A local HTTP server standing in for a push gateway (e.g. a UnifiedPush distributor) on
/// 127.0.0.1, port chosen by the system: records every request and answers `200`.
#[derive(Debug)]
pub struct PushReceiver {
    /// Its port.
    pub port: u16,
    posts: mpsc::Receiver<PushPost>,
}

impl PushReceiver {
    /// Binds 127.0.0.1:0 and serves on a thread (one connection at a time, which is all a
    /// relay's debounced wake-ups need).
    pub fn start() -> anyhow::Result<PushReceiver> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let (tx, posts) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                match read_post(stream) {
                    Ok(post) => {
                        if tx.send(post).is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("push receiver: {e:#}"),
                }
            }
        });
        Ok(PushReceiver { port, posts })
    }

    /// The next request, waiting at most `timeout` (`None`: none came).
    pub fn next(&self, timeout: Duration) -> Option<PushPost> {
        self.posts.recv_timeout(timeout).ok()
    }
}

fn read_post(stream: std::net::TcpStream) -> anyhow::Result<PushPost> {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let path = parts.next().unwrap_or_default().to_owned();
    let (mut length, mut content_type) = (0usize, String::new());
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = header.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse()?,
                "content-type" => content_type = v.trim().to_owned(),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let mut stream = stream;
    stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
    if method != "POST" {
        bail!("push receiver got {method} {path}");
    }
    Ok(PushPost {
        at: Instant::now(),
        path,
        content_type,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
