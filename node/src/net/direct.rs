//! `/tern/direct/1`: one end-to-end ciphertext from device to device, acknowledged once the
//! receiver has stored it.
//!
//! Frames are the relay protocols' frames (version byte + CBOR, capped by the codec). The
//! sending device is the PeerId the connection's Noise handshake authenticated; nothing in
//! the frame names it.

use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tern_relay::wire::{self, DecodeError, EncodeError, FrameCodec, Rejection};

/// The protocol id.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/tern/direct/1");
/// Largest ciphertext carried (the same as a mailbox deposit).
pub const MAX_CIPHERTEXT_BYTES: usize = wire::mailbox::MAX_CIPHERTEXT_BYTES;
/// Longest request frame.
pub const MAX_REQUEST_BYTES: usize = MAX_CIPHERTEXT_BYTES + 1024;
/// Longest response frame.
pub const MAX_RESPONSE_BYTES: usize = 1024;

/// A request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Request {
    /// A pairwise ciphertext for the receiving device.
    Message {
        /// The ciphertext (a tern-crypto pairwise record).
        ciphertext: ByteBuf,
    },
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Response {
    /// The receiver stored the message (or already had it) durably.
    Stored,
    /// The receiver did not take the message; the sender uses the mailbox instead.
    Error(Rejection),
}

const WHAT_REQ: &str = "direct request";
const WHAT_RESP: &str = "direct response";

impl Request {
    /// Encodes the request.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        wire::encode(WHAT_REQ, self, MAX_REQUEST_BYTES)
    }
    /// Decodes a request frame.
    pub fn from_frame(frame: &wire::Frame) -> Result<Self, DecodeError> {
        frame.decode(WHAT_REQ, MAX_REQUEST_BYTES)
    }
}

impl Response {
    /// Encodes the response.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        wire::encode(WHAT_RESP, self, MAX_RESPONSE_BYTES)
    }
    /// Decodes a response frame.
    pub fn from_frame(frame: &wire::Frame) -> Result<Self, DecodeError> {
        frame.decode(WHAT_RESP, MAX_RESPONSE_BYTES)
    }
}

/// The codec caps for this protocol.
pub fn codec() -> FrameCodec {
    FrameCodec::new(MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_caps() {
        let req = Request::Message {
            ciphertext: ByteBuf::from(vec![1, 2, 3]),
        };
        let bytes = req.encode().unwrap();
        assert_eq!(Request::from_frame(&wire::Frame::Data(bytes)).unwrap(), req);
        let big = Request::Message {
            ciphertext: ByteBuf::from(vec![0; MAX_REQUEST_BYTES]),
        };
        assert!(big.encode().is_err());
        assert!(Request::from_frame(&wire::Frame::Oversize { limit: 1 }).is_err());
        assert!(Response::from_frame(&wire::Frame::Data(vec![1, 0xff])).is_err());
    }
}
