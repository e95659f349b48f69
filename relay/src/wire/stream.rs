//! Length-prefixed frames on a long-lived stream (`/tern/live/1`, `/tern/deposit/1`,
//! `/tern/blob/1`): a `u32`
//! big-endian length, then a frame in the wire format (version byte, CBOR).
//!
//! The reader is told the cap for the frame it expects next and refuses a longer length
//! prefix before reading a byte of the frame, so a peer cannot make it buffer more.

use std::io;

use futures::{AsyncReadExt, AsyncWriteExt};

/// Reads one length-prefixed frame of at most `max` bytes. `Ok(None)` at a clean end of the
/// stream (before a length prefix); a longer frame is an [`io::ErrorKind::InvalidData`] error.
pub async fn read_frame<S: futures::AsyncRead + Unpin>(
    io: &mut S,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    let Some(len) = read_prefix(io, max).await? else {
        return Ok(None);
    };
    read_body(io, len).await.map(Some)
}

/// Reads a length prefix of at most `max`: what [`read_frame`] does before the frame, for a
/// reader that reserves room for the frame before reading it ([`read_body`]).
pub async fn read_prefix<S: futures::AsyncRead + Unpin>(
    io: &mut S,
    max: usize,
) -> io::Result<Option<usize>> {
    let mut len = [0u8; 4];
    match io.read_exact(&mut len).await {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes is over the {max}-byte limit"),
        ));
    }
    Ok(Some(len))
}

/// Reads the `len` bytes of a frame whose prefix [`read_prefix`] read.
pub async fn read_body<S: futures::AsyncRead + Unpin>(
    io: &mut S,
    len: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one length-prefixed frame and flushes it. Prefix and frame go in one write: on
/// Yamux every write is a frame of its own, sealed and sent by itself.
pub async fn write_frame<S: futures::AsyncWrite + Unpin>(
    io: &mut S,
    frame: &[u8],
) -> io::Result<()> {
    let mut buf = Vec::with_capacity(4 + frame.len());
    append_frame(&mut buf, frame)?;
    write_batch(io, &buf).await
}

/// Appends one length-prefixed frame to `buf`, so that several frames go in one write
/// ([`write_batch`]): one Yamux frame, one Noise frame, one system call for all of them.
pub fn append_frame(buf: &mut Vec<u8>, frame: &[u8]) -> io::Result<()> {
    let len = u32::try_from(frame.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(frame);
    Ok(())
}

/// Writes frames gathered with [`append_frame`] and flushes them.
pub async fn write_batch<S: futures::AsyncWrite + Unpin>(io: &mut S, buf: &[u8]) -> io::Result<()> {
    io.write_all(buf).await?;
    io.flush().await
}

/// Bytes of frames a writer gathers into one write before it writes them.
pub const BATCH_BYTES: usize = 64 * 1024;
