//! A network link with a real round trip, on loopback: a TCP proxy that delays every byte
//! by a fixed time in each direction, so what runs through it meets a phone's or a
//! continent's round trip rather than loopback's microseconds.

use std::{net::SocketAddr, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
    task::JoinHandle,
    time::Instant,
};

/// Size of each read the proxy forwards.
const PIECE: usize = 64 << 10;

/// A running delay proxy; stopped (with every connection through it) on drop.
#[derive(Debug)]
pub struct DelayProxy {
    /// Where to connect instead of the target.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Forwards every TCP connection accepted on a loopback port to `to`, delaying every byte
/// by `one_way` in each direction. Buffers without limit: what runs through it (Yamux's
/// windows, a request and its answer) bounds what is in flight.
pub async fn delay_proxy(to: SocketAddr, one_way: Duration) -> std::io::Result<DelayProxy> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut links = tokio::task::JoinSet::new();
        while let Ok((inbound, _)) = listener.accept().await {
            links.spawn(async move {
                let Ok(outbound) = TcpStream::connect(to).await else {
                    return;
                };
                let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
                let (in_r, in_w) = inbound.into_split();
                let (out_r, out_w) = outbound.into_split();
                tokio::join!(delayed(in_r, out_w, one_way), delayed(out_r, in_w, one_way));
            });
        }
    });
    Ok(DelayProxy { addr, task })
}

/// Copies `from` to `to`, each piece `one_way` after it was read.
async fn delayed(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, one_way: Duration) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; PIECE];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            if tx
                .send((Instant::now() + one_way, buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

/// `samples` round trips of one byte over plain TCP through a delay proxy of `one_way` to an
/// echo: the link's own round trip, the baseline of what is measured over it.
pub async fn link_round_trips(
    samples: usize,
    one_way: Duration,
) -> std::io::Result<Vec<std::time::Duration>> {
    let echo = TcpListener::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    let server = tokio::spawn(async move {
        let Ok((mut s, _)) = echo.accept().await else {
            return;
        };
        let _ = s.set_nodelay(true);
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).await.is_ok() {
            if s.write_all(&b).await.is_err() {
                return;
            }
        }
    });
    let proxy = delay_proxy(echo_addr, one_way).await?;
    let mut s = TcpStream::connect(proxy.addr).await?;
    s.set_nodelay(true)?;
    let mut out = Vec::with_capacity(samples);
    let mut b = [0u8; 1];
    for _ in 0..samples {
        let t = Instant::now();
        s.write_all(&b).await?;
        s.read_exact(&mut b).await?;
        out.push(t.elapsed());
    }
    drop(s);
    server.abort();
    Ok(out)
}

/// The parts of a relay address `/ip4/<ip>/tcp/<port>/p2p/<id>`: its TCP socket address and
/// its peer id.
fn tcp_parts(addr: &str) -> anyhow::Result<(SocketAddr, &str)> {
    match addr.split('/').collect::<Vec<_>>().as_slice() {
        ["", "ip4", ip, "tcp", port, "p2p", id] => Ok((format!("{ip}:{port}").parse()?, id)),
        _ => anyhow::bail!("not an /ip4/…/tcp/…/p2p/… address: {addr}"),
    }
}

/// The TCP socket address a relay address (`/ip4/<ip>/tcp/<port>/p2p/<id>`) names: what a
/// proxy forwards to.
pub fn tcp_target(addr: &str) -> anyhow::Result<SocketAddr> {
    tcp_parts(addr).map(|(target, _)| target)
}

/// The relay address `addr` with its TCP part replaced by `proxy`: what to dial to reach
/// the relay through the proxy.
pub fn via(addr: &str, proxy: SocketAddr) -> anyhow::Result<String> {
    let (_, id) = tcp_parts(addr)?;
    Ok(format!("/ip4/{}/tcp/{}/p2p/{id}", proxy.ip(), proxy.port()))
}
