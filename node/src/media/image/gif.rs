//! Strips a GIF of its metadata without touching its pixels: a walk over the GIF89a block
//! structure that copies the blocks that draw the image and drops the rest.
//!
//! Kept: the header and logical screen descriptor with the global colour table, graphic
//! control extensions (frame delay, disposal, transparency), image descriptors with their
//! local colour tables and image data, and the `NETSCAPE2.0`/`ANIMEXTS1.0` application
//! extension (the loop count). Dropped: comment extensions, plain-text extensions, every
//! other application extension (XMP, ICC profiles, editors' private data), and anything
//! after the trailer (a GIF can have a whole file appended).

use super::ImageError;

const EXTENSION: u8 = 0x21;
const IMAGE: u8 = 0x2C;
const TRAILER: u8 = 0x3B;
const GRAPHIC_CONTROL: u8 = 0xF9;
const APPLICATION: u8 = 0xFF;
/// Application identifiers (8 bytes) and authentication codes (3) of the loop-count block.
const LOOP_APPLICATIONS: [&[u8; 11]; 2] = [b"NETSCAPE2.0", b"ANIMEXTS1.0"];

fn damaged(what: &str) -> ImageError {
    ImageError::Decode(format!("damaged GIF: {what}"))
}

/// A cursor over the input that fails instead of reading past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], ImageError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| damaged("truncated"))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn byte(&mut self) -> Result<u8, ImageError> {
        Ok(self.take(1)?[0])
    }

    /// A run of data sub-blocks up to and including the empty one that ends it.
    fn sub_blocks(&mut self) -> Result<&'a [u8], ImageError> {
        let start = self.at;
        loop {
            let len = self.byte()?;
            if len == 0 {
                return Ok(&self.bytes[start..self.at]);
            }
            self.take(usize::from(len))?;
        }
    }
}

/// The size in bytes of the colour table a packed field announces, if any.
fn color_table(packed: u8) -> usize {
    if packed & 0x80 == 0 {
        0
    } else {
        3 << ((packed & 0x07) + 1)
    }
}

/// The GIF without its metadata blocks. Fails on anything that is not a well-formed block
/// sequence ending in a trailer.
pub(super) fn strip(bytes: &[u8]) -> Result<Vec<u8>, ImageError> {
    let mut r = Reader { bytes, at: 0 };
    let mut out = Vec::with_capacity(bytes.len());
    let header = r.take(13)?;
    if !header.starts_with(b"GIF87a") && !header.starts_with(b"GIF89a") {
        return Err(ImageError::Unsupported);
    }
    out.extend_from_slice(header);
    out.extend_from_slice(r.take(color_table(header[10]))?);
    loop {
        match r.byte()? {
            IMAGE => {
                let descriptor = r.take(9)?;
                let table = r.take(color_table(descriptor[8]))?;
                let min_code_size = r.byte()?;
                let data = r.sub_blocks()?;
                out.push(IMAGE);
                out.extend_from_slice(descriptor);
                out.extend_from_slice(table);
                out.push(min_code_size);
                out.extend_from_slice(data);
            }
            EXTENSION => {
                let label = r.byte()?;
                let body = r.sub_blocks()?;
                let keep = match label {
                    GRAPHIC_CONTROL => true,
                    // The first sub-block is the 11-byte application identifier.
                    APPLICATION => LOOP_APPLICATIONS
                        .iter()
                        .any(|id| body.first() == Some(&11) && body.get(1..12) == Some(&id[..])),
                    _ => false,
                };
                if keep {
                    out.push(EXTENSION);
                    out.push(label);
                    out.extend_from_slice(body);
                }
            }
            TRAILER => {
                out.push(TRAILER);
                return Ok(out);
            }
            _ => return Err(damaged("unknown block")),
        }
    }
}
