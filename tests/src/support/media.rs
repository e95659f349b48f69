//! Image fixtures for media tests: a JPEG photo carrying a GPS position in its EXIF block,
//! and a check that a JPEG still carries EXIF, so an end-to-end test can send such a photo
//! and check that it arrives clean.

use image::{ImageBuffer, Rgb, codecs::jpeg::JpegEncoder};

/// The GPS latitude written by [`jpeg_with_gps`] (51° 30' 26" N, as three TIFF rationals):
/// bytes to look for in whatever a node stores or sends.
pub const GPS_LATITUDE: [u8; 24] = [
    0, 0, 0, 51, 0, 0, 0, 1, 0, 0, 0, 30, 0, 0, 0, 1, 0, 0, 0, 26, 0, 0, 0, 1,
];

/// A `width` × `height` JPEG (a colour gradient) with an EXIF block (APP1 right after SOI)
/// holding orientation 1 and a GPS IFD with [`GPS_LATITUDE`] north and 0° 7' 39" west.
pub fn jpeg_with_gps(width: u32, height: u32) -> Vec<u8> {
    jpeg_with_exif(width, height, 1)
}

/// Like [`jpeg_with_gps`] with the given EXIF orientation (1–8; 6 means "rotate 90°
/// clockwise to display", so a prepared copy swaps width and height).
pub fn jpeg_with_exif(width: u32, height: u32, orientation: u16) -> Vec<u8> {
    let pixels = ImageBuffer::from_fn(width, height, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, ((x ^ y) % 256) as u8])
    });
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 90)
        .encode_image(&pixels)
        .unwrap_or_else(|e| panic!("encoding a {width}×{height} JPEG: {e}"));
    let mut out = jpeg[..2].to_vec();
    out.extend(exif_segment(orientation));
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// An APP1 segment: `Exif\0\0` and a big-endian TIFF block with IFD0 (orientation, pointer
/// to the GPS IFD) and a GPS IFD (version, latitude and longitude with their references).
fn exif_segment(orientation: u16) -> Vec<u8> {
    fn entry(tiff: &mut Vec<u8>, tag: u16, kind: u16, count: u32, value: [u8; 4]) {
        tiff.extend_from_slice(&tag.to_be_bytes());
        tiff.extend_from_slice(&kind.to_be_bytes());
        tiff.extend_from_slice(&count.to_be_bytes());
        tiff.extend_from_slice(&value);
    }
    const SHORT: u16 = 3;
    const LONG: u16 = 4;
    const BYTE: u16 = 1;
    const ASCII: u16 = 2;
    const RATIONAL: u16 = 5;
    // Layout: header 8, IFD0 at 8 (2 + 2×12 + 4 = 30), GPS IFD at 38 (2 + 5×12 + 4 = 66),
    // the latitude at 104 and the longitude at 128 (3 rationals of 8 bytes each).
    let (gps_ifd, latitude, longitude) = (38u32, 104u32, 128u32);
    let o = orientation.to_be_bytes();
    let mut tiff = b"MM\0\x2A".to_vec();
    tiff.extend_from_slice(&8u32.to_be_bytes());
    tiff.extend_from_slice(&2u16.to_be_bytes());
    entry(&mut tiff, 0x0112, SHORT, 1, [o[0], o[1], 0, 0]);
    entry(&mut tiff, 0x8825, LONG, 1, gps_ifd.to_be_bytes());
    tiff.extend_from_slice(&0u32.to_be_bytes());
    debug_assert_eq!(tiff.len(), gps_ifd as usize);
    tiff.extend_from_slice(&5u16.to_be_bytes());
    entry(&mut tiff, 0x0000, BYTE, 4, [2, 3, 0, 0]);
    entry(&mut tiff, 0x0001, ASCII, 2, *b"N\0\0\0");
    entry(&mut tiff, 0x0002, RATIONAL, 3, latitude.to_be_bytes());
    entry(&mut tiff, 0x0003, ASCII, 2, *b"W\0\0\0");
    entry(&mut tiff, 0x0004, RATIONAL, 3, longitude.to_be_bytes());
    tiff.extend_from_slice(&0u32.to_be_bytes());
    debug_assert_eq!(tiff.len(), latitude as usize);
    tiff.extend_from_slice(&GPS_LATITUDE);
    for (num, den) in [(0u32, 1u32), (7, 1), (39, 1)] {
        tiff.extend_from_slice(&num.to_be_bytes());
        tiff.extend_from_slice(&den.to_be_bytes());
    }
    let mut segment = vec![0xFF, 0xE1];
    let len = 2 + 6 + tiff.len();
    segment.extend_from_slice(&(len as u16).to_be_bytes());
    segment.extend_from_slice(b"Exif\0\0");
    segment.extend(tiff);
    segment
}

/// Whether a JPEG has an EXIF segment (APP1 starting `Exif\0\0`) among the segments before
/// its scan data, where EXIF has to be. Not a JPEG, or a damaged one: `false` once the
/// segment chain breaks.
pub fn has_exif(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&[0xFF, 0xD8]) {
        return false;
    }
    let mut i = 2;
    while i + 1 < bytes.len() {
        if bytes[i] != 0xFF {
            return false;
        }
        let marker = bytes[i + 1];
        match marker {
            // Fill bytes before a marker.
            0xFF => i += 1,
            // Markers without a length.
            0x01 | 0xD0..=0xD7 => i += 2,
            // Start of scan or end of image: no EXIF after this.
            0xDA | 0xD9 => return false,
            _ => {
                let Some(len) = bytes.get(i + 2..i + 4) else {
                    return false;
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                let body = bytes
                    .get(i + 4..(i + 2 + len).min(bytes.len()))
                    .unwrap_or(&[]);
                if marker == 0xE1 && body.starts_with(b"Exif\0\0") {
                    return true;
                }
                i += 2 + len;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixture_has_exif_and_gps_and_the_prepared_photo_has_neither() {
        let photo = jpeg_with_gps(320, 200);
        assert!(has_exif(&photo));
        assert!(photo.windows(24).any(|w| w == GPS_LATITUDE));
        let prepared = tern_node::media::image::prepare(&photo, false).unwrap();
        assert_eq!((prepared.width, prepared.height), (320, 200));
        assert!(!has_exif(&prepared.bytes));
        assert!(!prepared.bytes.windows(24).any(|w| w == GPS_LATITUDE));
        let turned = tern_node::media::image::prepare(&jpeg_with_exif(320, 200, 6), false).unwrap();
        assert_eq!((turned.width, turned.height), (200, 320));
    }

    #[test]
    fn has_exif_survives_garbage() {
        assert!(!has_exif(b""));
        assert!(!has_exif(&[0xFF, 0xD8, 0xFF]));
        assert!(!has_exif(&[0xFF, 0xD8, 0xFF, 0xE1, 0xFF, 0xFF, b'E']));
        let photo = jpeg_with_gps(16, 16);
        for cut in 0..photo.len().min(200) {
            let _ = has_exif(&photo[..cut]);
        }
    }
}
