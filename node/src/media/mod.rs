//! Media attachments: preparing what is sent ([`image`]).

pub mod image;
