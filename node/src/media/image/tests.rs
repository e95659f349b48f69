//! The image pipeline against inputs built here: photos with GPS EXIF and an orientation,
//! large and transparent images, animated GIFs with metadata, and hostile PNGs.
//! (`tern-tests`' `support::media` has the fixture end-to-end tests use; the node cannot
//! depend on that crate, so the EXIF block is built here too, minimally.)

use std::time::{Duration, Instant};

use image::{
    Delay, Frame, ImageBuffer, Rgb, Rgba,
    codecs::{gif::GifEncoder, webp::WebPEncoder},
};

use super::*;

fn gradient(width: u32, height: u32) -> RgbImage {
    ImageBuffer::from_fn(width, height, |x, y| {
        Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    })
}

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    encode_jpeg(&gradient(width, height), 90).unwrap()
}

/// Latitude 51° 30' 26", the bytes to look for in the output.
const LATITUDE: [u8; 24] = [
    0, 0, 0, 51, 0, 0, 0, 1, 0, 0, 0, 30, 0, 0, 0, 1, 0, 0, 0, 26, 0, 0, 0, 1,
];

/// `jpeg` with an APP1 EXIF block right after SOI: IFD0 with the orientation and a GPS IFD
/// holding a latitude (big-endian TIFF).
fn with_exif(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let entry = |tag: u16, kind: u16, count: u32, value: [u8; 4]| {
        let mut e = Vec::new();
        e.extend_from_slice(&tag.to_be_bytes());
        e.extend_from_slice(&kind.to_be_bytes());
        e.extend_from_slice(&count.to_be_bytes());
        e.extend_from_slice(&value);
        e
    };
    let o = orientation.to_be_bytes();
    // IFD0 at 8: 2 + 2×12 + 4 = 30 bytes; the GPS IFD at 38: 2 + 2×12 + 4; its data at 68.
    let mut tiff = b"MM\0\x2A\0\0\0\x08".to_vec();
    tiff.extend_from_slice(&2u16.to_be_bytes());
    tiff.extend(entry(0x0112, 3, 1, [o[0], o[1], 0, 0]));
    tiff.extend(entry(0x8825, 4, 1, 38u32.to_be_bytes()));
    tiff.extend_from_slice(&[0; 4]);
    tiff.extend_from_slice(&2u16.to_be_bytes());
    tiff.extend(entry(0x0001, 2, 2, *b"N\0\0\0"));
    tiff.extend(entry(0x0002, 5, 3, 68u32.to_be_bytes()));
    tiff.extend_from_slice(&[0; 4]);
    tiff.extend_from_slice(&LATITUDE);
    let mut app1 = vec![0xFF, 0xE1];
    app1.extend_from_slice(&(2 + 6 + tiff.len() as u16).to_be_bytes());
    app1.extend_from_slice(b"Exif\0\0");
    app1.extend(tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend(app1);
    out.extend_from_slice(&jpeg[2..]);
    out
}

/// The markers of a JPEG's segments before the scan data.
fn markers(jpeg: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 2;
    while i + 4 <= jpeg.len() && jpeg[i] == 0xFF {
        let marker = jpeg[i + 1];
        out.push(marker);
        if marker == 0xDA {
            break;
        }
        i += 2 + usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn sniff_knows_the_four_formats_only() {
    assert_eq!(sniff(&jpeg(8, 8)), Some("image/jpeg"));
    assert_eq!(
        sniff(&encode_png(&RgbaImage::new(2, 2)).unwrap()),
        Some("image/png")
    );
    assert_eq!(sniff(b"GIF89a...."), Some("image/gif"));
    assert_eq!(sniff(b"GIF87a...."), Some("image/gif"));
    assert_eq!(sniff(b"RIFF\x10\0\0\0WEBPVP8L"), Some("image/webp"));
    assert_eq!(sniff(b"RIFF\x10\0\0\0WAVEfmt "), None);
    assert_eq!(sniff(b"II*\0"), None); // TIFF
    assert_eq!(sniff(&[0xFF, 0xD8]), None);
    assert_eq!(sniff(b""), None);
}

#[test]
fn gps_exif_is_gone_and_dimensions_kept() {
    let input = with_exif(&jpeg(64, 48), 1);
    assert!(markers(&input).contains(&0xE1));
    assert!(contains(&input, &LATITUDE));
    let p = prepare(&input, false).unwrap();
    assert_eq!((p.mime, p.width, p.height), ("image/jpeg", 64, 48));
    assert!(
        !markers(&p.bytes).contains(&0xE1),
        "APP1 in {:x?}",
        markers(&p.bytes)
    );
    assert!(!contains(&p.bytes, b"Exif"));
    assert!(!contains(&p.bytes, &LATITUDE));
    assert!(!markers(&p.thumbnail).contains(&0xE1));
    let (w, h) = check_thumbnail(&p.thumbnail).unwrap();
    assert_eq!((w, h), (64, 48));
}

#[test]
fn orientation_6_turns_the_image() {
    let p = prepare(&with_exif(&jpeg(40, 20), 6), false).unwrap();
    assert_eq!((p.width, p.height), (20, 40));
    assert_eq!(check_thumbnail(&p.thumbnail).unwrap(), (20, 40));
    // Orientation 1 and a damaged EXIF block leave it as it is.
    let p = prepare(&with_exif(&jpeg(40, 20), 1), false).unwrap();
    assert_eq!((p.width, p.height), (40, 20));
    let mut damaged = with_exif(&jpeg(40, 20), 6);
    damaged[12..16].copy_from_slice(b"XXXX"); // the TIFF byte order
    let p = prepare(&damaged, false).unwrap();
    assert_eq!((p.width, p.height), (40, 20));
}

#[test]
fn large_images_are_scaled_unless_original() {
    let input = jpeg(5000, 3000);
    let p = prepare(&input, false).unwrap();
    assert_eq!((p.mime, p.width, p.height), ("image/jpeg", 2048, 1229));
    let reread = image::load_from_memory(&p.bytes).unwrap();
    assert_eq!((reread.width(), reread.height()), (2048, 1229));
    let p = prepare(&input, true).unwrap();
    assert_eq!((p.width, p.height), (5000, 3000));
    // Small images are never scaled up.
    let p = prepare(&jpeg(300, 200), false).unwrap();
    assert_eq!((p.width, p.height), (300, 200));
}

#[test]
fn extreme_shapes_prepare() {
    for (w, h) in [(1, 1), (1, 10_000), (10_000, 1), (3, 2049)] {
        let p = prepare(
            &encode_png(&RgbaImage::from_pixel(w, h, Rgba([9, 9, 9, 255]))).unwrap(),
            false,
        )
        .unwrap_or_else(|e| panic!("{w}×{h}: {e}"));
        assert!(p.width.max(p.height) <= LONG_EDGE && p.width.min(p.height) >= 1);
        let (tw, th) = check_thumbnail(&p.thumbnail).unwrap();
        assert!(tw.max(th) <= THUMBNAIL_EDGE && tw.min(th) >= 1);
        thumbhash::thumb_hash_to_rgba(&p.thumbhash).unwrap();
    }
}

#[test]
fn transparency_keeps_png_and_opaque_png_becomes_jpeg() {
    let alpha = RgbaImage::from_fn(50, 30, |x, _| {
        Rgba([200, 10, 10, if x < 25 { 0 } else { 255 }])
    });
    let p = prepare(&encode_png(&alpha).unwrap(), false).unwrap();
    assert_eq!((p.mime, p.width, p.height), ("image/png", 50, 30));
    let reread = image::load_from_memory(&p.bytes).unwrap().to_rgba8();
    assert_eq!(reread.get_pixel(0, 0).0[3], 0);
    assert_eq!(reread.get_pixel(49, 0).0, [200, 10, 10, 255]);
    // The transparent half of the thumbnail is white, not black.
    let thumb = image::load_from_memory(&p.thumbnail).unwrap().to_rgb8();
    assert!(
        thumb.get_pixel(0, 0).0.iter().all(|&c| c > 240),
        "{:?}",
        thumb.get_pixel(0, 0)
    );

    let opaque = RgbaImage::from_pixel(50, 30, Rgba([1, 2, 3, 255]));
    let p = prepare(&encode_png(&opaque).unwrap(), false).unwrap();
    assert_eq!(p.mime, "image/jpeg");
}

#[test]
fn webp_is_decoded_and_re_encoded() {
    let rgba = RgbaImage::from_pixel(33, 17, Rgba([9, 90, 200, 255]));
    let mut webp = Vec::new();
    WebPEncoder::new_lossless(&mut webp)
        .encode(rgba.as_raw(), 33, 17, image::ExtendedColorType::Rgba8)
        .unwrap();
    let p = prepare(&webp, false).unwrap();
    assert_eq!((p.mime, p.width, p.height), ("image/jpeg", 33, 17));
}

/// A three-frame looping GIF with a comment and an XMP block spliced in after the loop
/// count, and a file appended after the trailer.
fn gif_with_metadata() -> Vec<u8> {
    let mut gif = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut gif);
        encoder
            .set_repeat(image::codecs::gif::Repeat::Infinite)
            .unwrap();
        let frames = (0..3u8).map(|i| {
            let buf = RgbaImage::from_pixel(20, 10, Rgba([i * 80, 0, 0, 255]));
            Frame::from_parts(buf, 0, 0, Delay::from_numer_denom_ms(100, 1))
        });
        encoder.encode_frames(frames).unwrap();
    }
    // After the header, global colour table (if any) and the NETSCAPE2.0 block.
    let at = contains_at(&gif, b"NETSCAPE2.0").unwrap() + 11 + 5;
    let mut extra = vec![0x21, 0xFE, 12];
    extra.extend_from_slice(b"secret note!");
    extra.push(0);
    extra.extend_from_slice(&[0x21, 0xFF, 11]);
    extra.extend_from_slice(b"XMP DataXMP");
    extra.push(20);
    extra.extend_from_slice(b"<x:gps>51.5,-0.1</x>");
    extra.push(0);
    gif.splice(at..at, extra);
    gif.extend_from_slice(b"PK\x03\x04appended zip");
    gif
}

fn contains_at(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn gif_keeps_its_frames_and_loses_its_metadata() {
    let input = gif_with_metadata();
    assert!(contains(&input, b"secret note!") && contains(&input, b"XMP DataXMP"));
    let p = prepare(&input, false).unwrap();
    assert_eq!((p.mime, p.width, p.height), ("image/gif", 20, 10));
    assert!(!contains(&p.bytes, b"secret note!"));
    assert!(!contains(&p.bytes, b"XMP"));
    assert!(!contains(&p.bytes, b"appended"));
    assert!(contains(&p.bytes, b"NETSCAPE2.0"));
    assert_eq!(p.bytes.last(), Some(&0x3B));
    let frames = GifDecoder::new(Cursor::new(&p.bytes[..]))
        .unwrap()
        .into_frames()
        .collect_frames()
        .unwrap();
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[2].buffer().get_pixel(0, 0).0, [160, 0, 0, 255]);
    assert_eq!(check_thumbnail(&p.thumbnail).unwrap(), (20, 10));
    // A truncated GIF is an error.
    assert!(matches!(
        prepare(&input[..input.len() / 2], false),
        Err(ImageError::Decode(_))
    ));
}

#[test]
fn gif_with_too_many_frames_is_too_large() {
    let gif = |n: usize| {
        let mut gif = Vec::new();
        let mut encoder = GifEncoder::new(&mut gif);
        let frames = (0..n).map(|i| {
            let buf = RgbaImage::from_pixel(2, 2, Rgba([(i % 2) as u8 * 255, 0, 0, 255]));
            Frame::from_parts(buf, 0, 0, Delay::from_numer_denom_ms(10, 1))
        });
        encoder.encode_frames(frames).unwrap();
        drop(encoder);
        gif
    };
    assert_eq!(
        prepare(&gif(MAX_GIF_FRAMES), false).unwrap().mime,
        "image/gif"
    );
    match prepare(&gif(MAX_GIF_FRAMES + 1), false) {
        Err(ImageError::TooLarge { what }) => assert!(what.contains("frames"), "{what}"),
        other => panic!("{other:?}"),
    }
}

/// A PNG chunk: length, type, data, CRC-32 of type and data.
fn chunk(kind: &[u8; 4], data: &[u8]) -> Vec<u8> {
    let mut table = [0u32; 256];
    for (n, t) in table.iter_mut().enumerate() {
        let mut c = n as u32;
        for _ in 0..8 {
            c = if c & 1 == 1 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    let mut crc = u32::MAX;
    for &b in kind.iter().chain(data) {
        crc = table[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&(!crc).to_be_bytes());
    out
}

/// A PNG of `width` × `height` 8-bit RGBA pixels, all zero, with `idat` as its data.
fn png(width: u32, height: u32, idat: &[u8]) -> Vec<u8> {
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 6, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(chunk(b"IHDR", &ihdr));
    out.extend(chunk(b"IDAT", idat));
    out.extend(chunk(b"IEND", b""));
    out
}

/// A zlib stream inflating to `len` zero bytes, written by hand with fixed Huffman codes:
/// one literal zero, then copies of 258 bytes at distance 1 (13 bits each, a ratio of
/// about 160:1), then literal zeros for the rest.
fn zeros_zlib(len: u64) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        n: u32,
    }
    impl Bits {
        fn put(&mut self, value: u32, count: u32) {
            self.acc |= u64::from(value) << self.n;
            self.n += count;
            while self.n >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.n -= 8;
            }
        }
        /// A Huffman code, most significant bit first.
        fn code(&mut self, code: u32, count: u32) {
            self.put(code.reverse_bits() >> (32 - count), count);
        }
    }
    let mut b = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        n: 0,
    };
    b.put(1, 1); // final block
    b.put(1, 2); // fixed Huffman codes
    b.code(0x30, 8); // literal 0
    let copies = (len - 1) / 258;
    for _ in 0..copies {
        b.code(0xC5, 8); // length code 285: 258 bytes
        b.code(0, 5); // distance code 0: distance 1
    }
    for _ in 0..(len - 1) % 258 {
        b.code(0x30, 8);
    }
    b.code(0, 7); // end of block
    b.put(0, 7); // to a byte boundary
    let adler = ((len % 65_521) << 16) | 1;
    b.out.extend_from_slice(&(adler as u32).to_be_bytes());
    b.out
}

#[test]
fn the_zlib_builder_inflates_to_zeros() {
    // A small one through the real decoder, so the bomb below is a real bomb.
    let (w, h) = (40u32, 30u32);
    let input = png(w, h, &zeros_zlib(u64::from(h) * (1 + 4 * u64::from(w))));
    let decoded = image::load_from_memory(&input).unwrap().to_rgba8();
    assert_eq!((decoded.width(), decoded.height()), (w, h));
    assert!(decoded.as_raw().iter().all(|&b| b == 0));
    // All transparent: stays PNG.
    assert_eq!(prepare(&input, false).unwrap().mime, "image/png");
}

#[test]
fn declared_huge_dimensions_are_too_large() {
    for (w, h) in [
        (100_000, 100_000),
        (16_385, 10),
        (10, 16_385),
        (u32::MAX >> 1, 1),
    ] {
        let input = png(w, h, &zeros_zlib(1000));
        match prepare(&input, false) {
            Err(ImageError::TooLarge { what }) => assert!(what.contains("16384"), "{what}"),
            other => panic!("{w}×{h}: {other:?}"),
        }
    }
}

#[test]
fn zip_bomb_png_is_too_large_quickly() {
    // 12,000 × 12,000 RGBA inflates to 576 MB; the file is 3.6 MB.
    let (w, h) = (12_000u32, 12_000u32);
    let input = png(w, h, &zeros_zlib(u64::from(h) * (1 + 4 * u64::from(w))));
    assert!(input.len() < 4 * 1024 * 1024, "{}", input.len());
    let start = Instant::now();
    match prepare(&input, false) {
        Err(ImageError::TooLarge { what }) => assert!(what.contains("bytes"), "{what}"),
        other => panic!("{other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn oversized_input_is_refused_before_decoding() {
    let mut input = vec![0u8; MAX_INPUT_BYTES + 1];
    input[..3].copy_from_slice(&[0xFF, 0xD8, 0xFF]);
    assert!(matches!(
        prepare(&input, false),
        Err(ImageError::TooLarge { .. })
    ));
}

#[test]
fn random_bytes_are_errors() {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state as u8
    };
    let heads: [&[u8]; 5] = [
        b"",
        &[0xFF, 0xD8, 0xFF],
        b"\x89PNG\r\n\x1a\n",
        b"GIF89a",
        b"RIFF\0\0\0\0WEBP",
    ];
    for round in 0..200 {
        let head = heads[round % heads.len()];
        let len = usize::from(next()) * 4;
        let mut input = head.to_vec();
        input.extend((0..len).map(|_| next()));
        assert!(prepare(&input, round % 2 == 0).is_err());
        assert!(check_thumbnail(&input).is_err());
    }
    assert!(matches!(
        prepare(b"hello", false),
        Err(ImageError::Unsupported)
    ));
}

#[test]
fn thumbnail_of_noise_fits() {
    // Noise is the worst case for JPEG; the quality steps have to bring it under the cap.
    let mut state = 1u32;
    let noise = RgbImage::from_fn(900, 600, |_, _| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let [a, b, c, _] = state.to_le_bytes();
        Rgb([a, b, c])
    });
    let p = prepare(&encode_jpeg(&noise, 90).unwrap(), false).unwrap();
    assert!(
        p.thumbnail.len() <= THUMBNAIL_MAX_BYTES,
        "{}",
        p.thumbnail.len()
    );
    let (w, h) = check_thumbnail(&p.thumbnail).unwrap();
    assert!(w <= THUMBNAIL_EDGE && h <= THUMBNAIL_EDGE && w > h);
    let (tw, th, _) = thumbhash::thumb_hash_to_rgba(&p.thumbhash).unwrap();
    assert!(tw > th, "{tw}×{th}");
    assert!(p.thumbhash.len() <= 32);
}

#[test]
fn check_thumbnail_refuses_what_a_peer_should_not_send() {
    let too_many_bytes = vec![0xFF; THUMBNAIL_MAX_BYTES + 1];
    assert!(matches!(
        check_thumbnail(&too_many_bytes),
        Err(ImageError::TooLarge { .. })
    ));
    let png = encode_png(&RgbaImage::new(10, 10)).unwrap();
    assert!(matches!(
        check_thumbnail(&png),
        Err(ImageError::Unsupported)
    ));
    // Small in bytes, too large in pixels.
    let flat = encode_jpeg(&RgbImage::from_pixel(300, 20, Rgb([5, 5, 5])), 50).unwrap();
    assert!(flat.len() <= THUMBNAIL_MAX_BYTES);
    assert!(matches!(
        check_thumbnail(&flat),
        Err(ImageError::TooLarge { .. })
    ));
    // A JPEG cut before its frame header does not decode (one cut in its scan data does:
    // the decoder fills in the rest, which is harmless).
    let ok = jpeg(100, 80);
    assert_eq!(check_thumbnail(&ok).unwrap(), (100, 80));
    assert!(check_thumbnail(&ok[..30]).is_err());
}

/// Times `prepare` on a 4000 × 3000 photo: `cargo test -p tern-node --lib
/// media::image::tests::timing -- --ignored --nocapture` (add `--release` for an
/// optimised build; the dev profile optimises the image crates already).
#[test]
#[ignore = "a timing, not a check"]
fn timing() {
    let mut state = 7u32;
    let photo = RgbImage::from_fn(4000, 3000, |x, y| {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let n = (state >> 28) as u8;
        Rgb([
            (x / 16) as u8 ^ n,
            (y / 12) as u8 ^ n,
            ((x + y) / 28) as u8 ^ n,
        ])
    });
    let input = with_exif(&encode_jpeg(&photo, 90).unwrap(), 6);
    for original in [false, true] {
        let start = Instant::now();
        let p = prepare(&input, original).unwrap();
        println!(
            "prepare(4000×3000 JPEG, {} bytes, original: {original}): {:?} → {}×{} {} bytes, thumbnail {} bytes",
            input.len(),
            start.elapsed(),
            p.width,
            p.height,
            p.bytes.len(),
            p.thumbnail.len()
        );
    }
}
