//! A request/response codec that moves whole frames as bytes, capped in length.
//!
//! Decoding into typed messages happens above the codec, so a malformed frame becomes an
//! `Error` reply with a code instead of a silently dropped stream.

use std::io;

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

/// Caps for one protocol: how many bytes a request and a response may have.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    /// Longest request frame read.
    pub max_request: usize,
    /// Longest response frame read.
    pub max_response: usize,
}

impl FrameCodec {
    /// A codec with the given caps.
    pub fn new(max_request: usize, max_response: usize) -> Self {
        Self {
            max_request,
            max_response,
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
        read_capped(io, self.max_request).await
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
}
