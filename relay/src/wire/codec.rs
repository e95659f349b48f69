//! A request/response codec that moves whole frames as bytes, capped in length.
//!
//! Decoding into typed messages happens above the codec, so a malformed frame becomes an
//! `Error` reply with a code instead of a silently dropped stream.
//!
//! A relay reads requests under a **read budget** shared by every connection
//! ([`FrameCodec::with_budget`]): each [`READ_CHUNK`] of a request being read takes that many
//! bytes of the budget until the whole frame is in, so peers that open many streams and send
//! slowly (or never finish) make reads wait, not the relay's memory grow. Without a budget
//! (clients) a frame is read as it comes, up to its cap.

use std::{io, sync::Arc};

use tokio::sync::Semaphore;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;

/// One frame as read from or written to a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The frame's bytes (version byte first).
    Data(Vec<u8>),
    /// The peer sent more than the cap; the bytes were discarded unread.
    Oversize {
        /// The cap that was exceeded.
        limit: usize,
    },
}

impl Frame {
    /// Decodes the frame as `T` with [`super::decode`].
    pub fn decode<T: serde::de::DeserializeOwned>(
        &self,
        what: &'static str,
        max: usize,
    ) -> Result<T, super::DecodeError> {
        match self {
            Frame::Data(bytes) => super::decode(what, bytes, max),
            Frame::Oversize { limit } => Err(super::DecodeError::TooLarge {
                what,
                len: limit.saturating_add(1),
                max: *limit,
            }),
        }
    }
}

/// Bytes a request read takes from the budget at a time.
pub const READ_CHUNK: usize = 16 * 1024;

/// Caps for one protocol: how many bytes a request and a response may have.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    /// Longest request frame read.
    pub max_request: usize,
    /// Longest response frame read.
    pub max_response: usize,
    /// Bytes all requests being read may hold together (a relay's; `None`: no budget).
    budget: Option<Arc<Semaphore>>,
}

impl FrameCodec {
    /// A codec with the given caps.
    pub fn new(max_request: usize, max_response: usize) -> Self {
        Self {
            max_request,
            max_response,
            budget: None,
        }
    }

    /// Reads requests under `budget` (bytes, shared by every codec it is given to).
    pub fn with_budget(mut self, budget: Arc<Semaphore>) -> Self {
        self.budget = Some(budget);
        self
    }
}

/// Reads a frame of at most `limit` bytes, each [`READ_CHUNK`] of it holding that much of
/// `budget` until the frame is complete.
async fn read_budgeted<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
    budget: &Arc<Semaphore>,
) -> io::Result<Frame> {
    let mut buf = Vec::new();
    let mut held = Vec::new();
    loop {
        if buf.len() > limit {
            return Ok(Frame::Oversize { limit });
        }
        let permit = budget
            .clone()
            .acquire_many_owned(READ_CHUNK as u32)
            .await
            .map_err(|_| io::Error::other("read budget closed"))?;
        held.push(permit);
        let start = buf.len();
        // Never more than the cap (plus one byte to see it was exceeded).
        let want = READ_CHUNK.min(limit + 1 - start);
        buf.resize(start + want, 0);
        let n = io.read(&mut buf[start..]).await?;
        buf.truncate(start + n);
        if n == 0 {
            return Ok(Frame::Data(buf));
        }
    }
}

async fn read_capped<T: AsyncRead + Unpin + Send>(io: &mut T, limit: usize) -> io::Result<Frame> {
    let mut buf = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    io.take(cap).read_to_end(&mut buf).await?;
    if buf.len() > limit {
        return Ok(Frame::Oversize { limit });
    }
    Ok(Frame::Data(buf))
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, frame: Frame) -> io::Result<()> {
    match frame {
        Frame::Data(bytes) => io.write_all(&bytes).await?,
        Frame::Oversize { .. } => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot write an oversize frame",
            ));
        }
    }
    io.close().await
}

impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frame;
    type Response = Frame;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        match &self.budget {
            Some(b) => read_budgeted(io, self.max_request, b).await,
            None => read_capped(io, self.max_request).await,
        }
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Frame>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_capped(io, self.max_response).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Frame,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, res).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::request_response::Codec;

    #[tokio::test]
    async fn caps_reads() {
        let mut codec = FrameCodec::new(4, 8);
        let p = StreamProtocol::new("/t/1");
        let mut small: &[u8] = &[1, 2, 3, 4];
        assert_eq!(
            codec.read_request(&p, &mut small).await.unwrap(),
            Frame::Data(vec![1, 2, 3, 4])
        );
        let mut big: &[u8] = &[0; 100];
        assert_eq!(
            codec.read_request(&p, &mut big).await.unwrap(),
            Frame::Oversize { limit: 4 }
        );
        let mut resp: &[u8] = &[0; 8];
        assert!(matches!(
            codec.read_response(&p, &mut resp).await.unwrap(),
            Frame::Data(_)
        ));
    }

    #[tokio::test]
    async fn a_budget_bounds_reads_in_progress_and_is_given_back() {
        use futures::{SinkExt, TryStreamExt};
        let budget = Arc::new(Semaphore::new(4 * READ_CHUNK));
        let codec = FrameCodec::new(10 * READ_CHUNK, 8).with_budget(budget.clone());
        let p = StreamProtocol::new("/t/1");
        // A whole frame: same answer as without a budget, and the budget comes back.
        let mut c = codec.clone();
        let mut whole: &[u8] = &[7; 3 * READ_CHUNK];
        assert_eq!(
            c.read_request(&p, &mut whole).await.unwrap(),
            Frame::Data(vec![7; 3 * READ_CHUNK])
        );
        assert_eq!(budget.available_permits(), 4 * READ_CHUNK);
        // A sender that stops half-way holds what it sent, and no more.
        let (mut tx, rx) = futures::channel::mpsc::channel::<io::Result<Vec<u8>>>(4);
        let mut slow = rx.into_async_read();
        let mut c2 = codec.clone();
        let p2 = p.clone();
        let reader = tokio::spawn(async move { c2.read_request(&p2, &mut slow).await });
        tx.send(Ok(vec![1; READ_CHUNK])).await.unwrap();
        tx.send(Ok(vec![1; READ_CHUNK])).await.unwrap();
        while budget.available_permits() > 2 * READ_CHUNK {
            tokio::task::yield_now().await;
        }
        assert!(
            budget.available_permits() >= READ_CHUNK,
            "bounded by what was sent"
        );
        // An oversize frame is refused once over its cap, whatever the budget.
        let mut c3 =
            FrameCodec::new(READ_CHUNK, 8).with_budget(Arc::new(Semaphore::new(4 * READ_CHUNK)));
        let mut big: &[u8] = &[0; 3 * READ_CHUNK];
        assert_eq!(
            c3.read_request(&p, &mut big).await.unwrap(),
            Frame::Oversize { limit: READ_CHUNK }
        );
        tx.close().await.unwrap();
        let frame = reader.await.unwrap().unwrap();
        assert_eq!(frame, Frame::Data(vec![1; 2 * READ_CHUNK]));
        assert_eq!(budget.available_permits(), 4 * READ_CHUNK);
    }
}
