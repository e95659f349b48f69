//! Image preparation for media messages: what a photo becomes before it is encrypted and sent.
//!
//! [`prepare`] decodes JPEG, PNG, WebP or GIF under strict [`Limits`] (set on the decoder
//! before a pixel is decoded, so a header declaring 100,000 × 100,000 pixels or a PNG whose
//! few kilobytes inflate to gigabytes is refused as [`ImageError::TooLarge`] without the
//! allocation), applies the EXIF orientation, scales the long edge down to [`LONG_EDGE`]
//! (unless the user asked for the original) and re-encodes: JPEG, or PNG when the image
//! really uses transparency. Re-encoding writes only pixels, so EXIF (GPS position, camera
//! serial, time), XMP, IPTC, comments and ICC profiles are gone; colours of a wide-gamut
//! photo are not converted to sRGB (see `docs/decisions.md`).
//!
//! GIFs are not re-encoded: that would drop their animation (or mean writing a GIF encoder's
//! worth of quantisation for every frame). GIF has no EXIF, but it can carry comment blocks
//! and application blocks (XMP, ICC); the GIF is rewritten block by block keeping only what
//! draws it — header, colour tables, frame control and image data, the loop count — and the
//! result is then decoded frame by frame under the same limits plus a frame count and a
//! pixel budget, so what is sent is exactly what was checked. The pixels are unchanged.
//!
//! Every prepared image has a JPEG thumbnail of at most [`THUMBNAIL_MAX_BYTES`] (long edge
//! [`THUMBNAIL_EDGE`]) and a [ThumbHash](https://evanw.github.io/thumbhash/) placeholder of
//! about 25 bytes; both travel inside the encrypted message so the chat shows something
//! before the download. A received thumbnail is checked with [`check_thumbnail`].
//!
//! Everything here is synchronous and CPU-heavy; the node calls it from
//! `tokio::task::spawn_blocking`.

mod gif;
#[cfg(test)]
mod tests;

use std::io::Cursor;

use image::{
    AnimationDecoder, DynamicImage, ExtendedColorType, ImageDecoder, ImageEncoder, ImageFormat,
    ImageReader, Limits, RgbImage, RgbaImage,
    codecs::{gif::GifDecoder, jpeg::JpegEncoder, png::PngEncoder},
    error::LimitErrorKind,
    imageops::FilterType,
    metadata::Orientation,
};

/// The long edge, in pixels, that an image is scaled down to unless sent as the original.
pub const LONG_EDGE: u32 = 2048;
/// The largest thumbnail, in bytes, that is sent or accepted.
pub const THUMBNAIL_MAX_BYTES: usize = 8 * 1024;
/// The long edge of a thumbnail this node makes (a chat bubble's preview; it is upscaled
/// and blurred by the UI until the image arrives).
pub const THUMBNAIL_EDGE: u32 = 128;
/// The long edge a received thumbnail may have (twice ours, for other implementations).
pub const THUMBNAIL_MAX_EDGE: u32 = 2 * THUMBNAIL_EDGE;
/// The largest input accepted by [`prepare`], in bytes: far above any camera's JPEG, low
/// enough that a wrong file is refused before it is read into a decoder.
pub const MAX_INPUT_BYTES: usize = 100 * 1024 * 1024;
/// The widest and tallest image accepted, in pixels (each side on its own).
pub const MAX_SIDE: u32 = 16_384;
/// The most a decoder may allocate for one image, in bytes, the decoded pixels included.
/// 256 MiB holds an 85-megapixel RGB photo (a 48-megapixel phone photo needs 146 MiB).
pub const MAX_ALLOC: u64 = 256 * 1024 * 1024;
/// The most frames a GIF may have.
pub const MAX_GIF_FRAMES: usize = 1_000;
/// The most pixels a GIF may draw over all its frames (canvas × frames): bounds the time
/// its check takes, as each frame is decoded onto the whole canvas.
pub const MAX_GIF_PIXELS: u64 = 400_000_000;

/// JPEG quality of a scaled image.
const JPEG_QUALITY: u8 = 85;
/// JPEG quality of an image sent as the original.
const JPEG_QUALITY_ORIGINAL: u8 = 92;
/// Thumbnail attempts, in order, until one fits [`THUMBNAIL_MAX_BYTES`]: (long edge, quality).
const THUMBNAIL_STEPS: &[(u32, u8)] = &[
    (THUMBNAIL_EDGE, 70),
    (THUMBNAIL_EDGE, 55),
    (THUMBNAIL_EDGE, 40),
    (THUMBNAIL_EDGE, 25),
    (96, 30),
    (64, 30),
];
/// The ThumbHash algorithm takes at most 100 × 100 pixels.
const THUMBHASH_EDGE: u32 = 100;
/// What a thumbnail check may allocate: a 256 × 256 image needs 192 KiB.
const THUMBNAIL_MAX_ALLOC: u64 = 1024 * 1024;

/// What an image became: re-encoded bytes without metadata, and what the message shows
/// before the download.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// The image to send: JPEG, or PNG when it has transparency; a GIF keeps its pixels and
    /// animation and loses only its metadata blocks.
    pub bytes: Vec<u8>,
    /// `"image/jpeg"`, `"image/png"` or `"image/gif"`.
    pub mime: &'static str,
    /// The width of `bytes`, after orientation.
    pub width: u32,
    /// The height of `bytes`, after orientation.
    pub height: u32,
    /// A JPEG of at most [`THUMBNAIL_MAX_BYTES`], long edge at most [`THUMBNAIL_EDGE`].
    pub thumbnail: Vec<u8>,
    /// The ThumbHash placeholder (about 25 bytes).
    pub thumbhash: Vec<u8>,
}

/// Why an image could not be prepared, or a received thumbnail was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// Not a JPEG, PNG, WebP or GIF (by its first bytes), or a variant of one that the
    /// decoder does not support.
    #[error("not an image that can be sent (JPEG, PNG, WebP or GIF)")]
    Unsupported,
    /// Over one of this module's limits.
    #[error("image too large: {what}")]
    TooLarge {
        /// Which limit, and the numbers where known.
        what: String,
    },
    /// The image is damaged or is not what its first bytes say.
    #[error("cannot decode the image: {0}")]
    Decode(String),
    /// Encoding the result failed (or no thumbnail fitted its size).
    #[error("cannot encode the image: {0}")]
    Encode(String),
}

impl ImageError {
    fn too_large(what: impl Into<String>) -> Self {
        ImageError::TooLarge { what: what.into() }
    }

    /// Maps the `image` crate's error; `max_side` and `max_alloc` are the limits that were
    /// in force, for the message.
    fn from_decoding(e: image::ImageError, max_side: u32, max_alloc: u64) -> Self {
        match e {
            image::ImageError::Limits(l) => match l.kind() {
                LimitErrorKind::DimensionError => {
                    Self::too_large(format!("more than {max_side} pixels a side"))
                }
                LimitErrorKind::InsufficientMemory => {
                    Self::too_large(format!("decoding needs more than {max_alloc} bytes"))
                }
                _ => Self::too_large(l.to_string()),
            },
            image::ImageError::Unsupported(_) => ImageError::Unsupported,
            other => ImageError::Decode(other.to_string()),
        }
    }
}

/// The MIME type of an image this module can prepare, from its magic bytes (JPEG, PNG,
/// WebP, GIF), else `None`.
pub fn sniff(head: &[u8]) -> Option<&'static str> {
    match head {
        [0xFF, 0xD8, 0xFF, ..] => Some("image/jpeg"),
        [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, ..] => Some("image/png"),
        [b'G', b'I', b'F', b'8', b'7' | b'9', b'a', ..] => Some("image/gif"),
        [
            b'R',
            b'I',
            b'F',
            b'F',
            _,
            _,
            _,
            _,
            b'W',
            b'E',
            b'B',
            b'P',
            ..,
        ] => Some("image/webp"),
        _ => None,
    }
}

fn limits(max_side: u32, max_alloc: u64) -> Limits {
    let mut limits = Limits::default();
    limits.max_image_width = Some(max_side);
    limits.max_image_height = Some(max_side);
    limits.max_alloc = Some(max_alloc);
    limits
}

/// Decodes with strict limits, applies the EXIF orientation, scales the long edge down to
/// [`LONG_EDGE`] unless `original`, re-encodes (which drops EXIF, GPS, XMP, ICC and
/// comments; a GIF is stripped of its metadata blocks instead, see the module doc), and
/// makes the thumbnail and the ThumbHash.
///
/// CPU-heavy (1.4 s for a 12-megapixel JPEG on a 2-core test machine, most of it scaling
/// and encoding): the caller runs it in `tokio::task::spawn_blocking`.
pub fn prepare(bytes: &[u8], original: bool) -> Result<Prepared, ImageError> {
    if bytes.len() > MAX_INPUT_BYTES {
        return Err(ImageError::too_large(format!(
            "{} bytes (at most {MAX_INPUT_BYTES})",
            bytes.len()
        )));
    }
    let format = match sniff(bytes).ok_or(ImageError::Unsupported)? {
        "image/jpeg" => ImageFormat::Jpeg,
        "image/png" => ImageFormat::Png,
        "image/webp" => ImageFormat::WebP,
        _ => return prepare_gif(bytes),
    };
    let mut image = decode(bytes, format)?;
    if !original && image.width().max(image.height()) > LONG_EDGE {
        // `resize` keeps the aspect ratio and fits both sides in the box.
        image = image.resize(LONG_EDGE, LONG_EDGE, FilterType::CatmullRom);
    }
    let quality = if original {
        JPEG_QUALITY_ORIGINAL
    } else {
        JPEG_QUALITY
    };
    let (bytes, mime) = if uses_alpha(&image) {
        (encode_png(&image.to_rgba8())?, "image/png")
    } else {
        (encode_jpeg(&image.to_rgb8(), quality)?, "image/jpeg")
    };
    let (thumbnail, thumbhash) = previews(&image)?;
    Ok(Prepared {
        bytes,
        mime,
        width: image.width(),
        height: image.height(),
        thumbnail,
        thumbhash,
    })
}

/// Decodes a still image under [`limits`] and applies its orientation.
fn decode(bytes: &[u8], format: ImageFormat) -> Result<DynamicImage, ImageError> {
    let err = |e| ImageError::from_decoding(e, MAX_SIDE, MAX_ALLOC);
    let mut limits = limits(MAX_SIDE, MAX_ALLOC);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(limits.clone());
    // Reads the header only; the dimension limits are checked here.
    let mut decoder = reader.into_decoder().map_err(err)?;
    // A damaged EXIF block costs the orientation, not the photo.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    // The decoded pixels count against the allocation limit before they are allocated
    // (`ImageReader::decode` does the same; `into_decoder` does not).
    limits.reserve(decoder.total_bytes()).map_err(err)?;
    let mut image = DynamicImage::from_decoder(decoder).map_err(err)?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// Whether any pixel is less than opaque (an RGBA PNG of a screenshot usually is not).
fn uses_alpha(image: &DynamicImage) -> bool {
    match image {
        DynamicImage::ImageLumaA8(i) => i.pixels().any(|p| p.0[1] != u8::MAX),
        DynamicImage::ImageRgba8(i) => i.pixels().any(|p| p.0[3] != u8::MAX),
        DynamicImage::ImageLumaA16(i) => i.pixels().any(|p| p.0[1] != u16::MAX),
        DynamicImage::ImageRgba16(i) => i.pixels().any(|p| p.0[3] != u16::MAX),
        DynamicImage::ImageRgba32F(i) => i.pixels().any(|p| p.0[3] < 1.0),
        _ => false,
    }
}

// Through `ImageEncoder::write_image` on raw bytes: the generic `encode_image` would be
// instantiated in this crate, unoptimised in the dev profile, and run ten times slower.
fn encode_jpeg(image: &RgbImage, quality: u8) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, quality)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgb8,
        )
        .map_err(|e| ImageError::Encode(e.to_string()))?;
    Ok(out)
}

fn encode_png(image: &RgbaImage) -> Result<Vec<u8>, ImageError> {
    let mut out = Vec::new();
    PngEncoder::new(&mut out)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            ExtendedColorType::Rgba8,
        )
        .map_err(|e| ImageError::Encode(e.to_string()))?;
    Ok(out)
}

/// The thumbnail (JPEG, at most [`THUMBNAIL_MAX_BYTES`]) and the ThumbHash of `image`.
fn previews(image: &DynamicImage) -> Result<(Vec<u8>, Vec<u8>), ImageError> {
    let small = fit(image, THUMBNAIL_EDGE).to_rgba8();
    let flat = on_white(&small);
    let mut thumbnail = None;
    for &(edge, quality) in THUMBNAIL_STEPS {
        let bytes = if edge >= THUMBNAIL_EDGE {
            encode_jpeg(&flat, quality)?
        } else {
            encode_jpeg(
                &fit(&DynamicImage::ImageRgb8(flat.clone()), edge).to_rgb8(),
                quality,
            )?
        };
        if bytes.len() <= THUMBNAIL_MAX_BYTES {
            thumbnail = Some(bytes);
            break;
        }
    }
    let thumbnail = thumbnail.ok_or_else(|| {
        ImageError::Encode(format!("no thumbnail fits in {THUMBNAIL_MAX_BYTES} bytes"))
    })?;
    let tiny = fit(&DynamicImage::ImageRgba8(small), THUMBHASH_EDGE).to_rgba8();
    let thumbhash =
        thumbhash::rgba_to_thumb_hash(tiny.width() as usize, tiny.height() as usize, tiny.as_raw());
    Ok((thumbnail, thumbhash))
}

/// `image` with its long edge at most `edge` (`thumbnail` alone would also scale up).
fn fit(image: &DynamicImage, edge: u32) -> DynamicImage {
    if image.width().max(image.height()) <= edge {
        image.clone()
    } else {
        image.thumbnail(edge, edge)
    }
}

/// Composites an RGBA image onto white: JPEG has no alpha, and dropping the channel would
/// show whatever colour the transparent pixels happen to hold (often black).
fn on_white(image: &RgbaImage) -> RgbImage {
    RgbImage::from_fn(image.width(), image.height(), |x, y| {
        let [r, g, b, a] = image.get_pixel(x, y).0;
        let a = u16::from(a);
        let mix = |c: u8| ((u16::from(c) * a + 255 * (255 - a) + 127) / 255) as u8;
        image::Rgb([mix(r), mix(g), mix(b)])
    })
}

/// A GIF: metadata blocks dropped, the rest checked frame by frame and sent as is.
fn prepare_gif(bytes: &[u8]) -> Result<Prepared, ImageError> {
    let stripped = gif::strip(bytes)?;
    let err = |e| ImageError::from_decoding(e, MAX_SIDE, MAX_ALLOC);
    let mut decoder = GifDecoder::new(Cursor::new(&stripped[..])).map_err(err)?;
    decoder
        .set_limits(limits(MAX_SIDE, MAX_ALLOC))
        .map_err(err)?;
    let (width, height) = decoder.dimensions();
    let canvas = u64::from(width) * u64::from(height);
    let mut first = None;
    // The iterator decodes a frame onto the whole canvas before handing it out, so the
    // checks come after it; at most one frame over a limit is ever decoded.
    for (index, frame) in decoder.into_frames().enumerate() {
        let frame = frame.map_err(err)?;
        if index >= MAX_GIF_FRAMES {
            return Err(ImageError::too_large(format!(
                "more than {MAX_GIF_FRAMES} frames"
            )));
        }
        if canvas.saturating_mul(index as u64 + 1) > MAX_GIF_PIXELS {
            return Err(ImageError::too_large(format!(
                "more than {MAX_GIF_PIXELS} pixels over all frames"
            )));
        }
        if first.is_none() {
            first = Some(frame.into_buffer());
        }
    }
    let first = first.ok_or_else(|| ImageError::Decode("a GIF without frames".into()))?;
    let (thumbnail, thumbhash) = previews(&DynamicImage::ImageRgba8(first))?;
    Ok(Prepared {
        bytes: stripped,
        mime: "image/gif",
        width,
        height,
        thumbnail,
        thumbhash,
    })
}

/// Checks a received thumbnail (untrusted, from a peer) with tight limits: it must be a
/// JPEG of at most [`THUMBNAIL_MAX_BYTES`] and at most [`THUMBNAIL_MAX_EDGE`] pixels a side
/// that decodes completely. Returns its `(width, height)`.
pub fn check_thumbnail(bytes: &[u8]) -> Result<(u32, u32), ImageError> {
    if bytes.len() > THUMBNAIL_MAX_BYTES {
        return Err(ImageError::too_large(format!(
            "a thumbnail of {} bytes (at most {THUMBNAIL_MAX_BYTES})",
            bytes.len()
        )));
    }
    if sniff(bytes) != Some("image/jpeg") {
        return Err(ImageError::Unsupported);
    }
    let err = |e| ImageError::from_decoding(e, THUMBNAIL_MAX_EDGE, THUMBNAIL_MAX_ALLOC);
    let mut limits = limits(THUMBNAIL_MAX_EDGE, THUMBNAIL_MAX_ALLOC);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), ImageFormat::Jpeg);
    reader.limits(limits.clone());
    let decoder = reader.into_decoder().map_err(err)?;
    let dimensions = decoder.dimensions();
    limits.reserve(decoder.total_bytes()).map_err(err)?;
    // Decoding all of it is cheap at this size, and a thumbnail that does not decode is
    // better refused here than shown broken.
    DynamicImage::from_decoder(decoder).map_err(err)?;
    Ok(dimensions)
}
