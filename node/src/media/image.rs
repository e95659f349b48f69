//! Placeholder until the image pipeline lands (replaced by the real module).
#![allow(missing_docs, dead_code)]

#[derive(Clone, Debug)]
pub struct Prepared {
    pub bytes: Vec<u8>,
    pub mime: &'static str,
    pub width: u32,
    pub height: u32,
    pub thumbnail: Vec<u8>,
    pub thumbhash: Vec<u8>,
}
pub const THUMBNAIL_MAX_BYTES: usize = 8 * 1024;
pub const LONG_EDGE: u32 = 2048;
pub fn sniff(_head: &[u8]) -> Option<&'static str> {
    None
}
pub fn prepare(_bytes: &[u8], _original: bool) -> Result<Prepared, ImageError> {
    Err(ImageError::Unsupported)
}
pub fn check_thumbnail(_bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    Err(ImageError::Unsupported)
}
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("unsupported")]
    Unsupported,
}
