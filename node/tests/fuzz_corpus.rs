//! Replays the committed fuzz corpus (`node/fuzz/corpus/<target>/*`) through the targets'
//! entry points, with truncations and bit flips, so each `cargo test` runs what the fuzzers
//! start from (and what they found). `write_seeds` (ignored) regenerates the seeds:
//! `cargo test -p tern-node --test fuzz_corpus -- --ignored`.

use std::fs;
use std::path::{Path, PathBuf};

use tern_node::media::image::{check_thumbnail, prepare};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
}

/// The entry point of the fuzz target named like a corpus directory.
fn target(name: &str) -> fn(&[u8]) {
    match name {
        "image_prepare" => |data| {
            let _ = prepare(data, false);
            let _ = check_thumbnail(data);
        },
        other => panic!("corpus directory {other} has no target; add it here and in fuzz/"),
    }
}

#[test]
fn corpus_replays_through_every_target() {
    let mut total = 0;
    for dir in fs::read_dir(corpus_dir()).unwrap() {
        let dir = dir.unwrap().path();
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let run = target(&name);
        let mut seeds = 0;
        for path in fs::read_dir(&dir).unwrap() {
            let data = fs::read(path.unwrap().path()).unwrap();
            run(&data);
            // Truncation is the most common malformation; then single bit flips spread
            // over the file (headers, tables, data).
            for cut in [0, 1, 2, data.len() / 2, data.len().saturating_sub(1)] {
                run(&data[..cut.min(data.len())]);
            }
            for i in (0..data.len()).step_by(data.len().div_ceil(32).max(1)) {
                let mut flipped = data.clone();
                flipped[i] ^= 1 << (i % 8);
                run(&flipped);
            }
            seeds += 1;
        }
        assert!(seeds > 0, "corpus for {name} is empty");
        total += seeds;
    }
    assert!(total > 0);
}

/// The seeds prepare accepts: every format, an EXIF orientation, transparency, animation.
#[test]
fn image_seeds_are_valid() {
    let dir = corpus_dir().join("image_prepare");
    for (name, mime) in [
        ("exif_orientation_6.jpg", "image/jpeg"),
        ("alpha.png", "image/png"),
        ("opaque.webp", "image/jpeg"),
        ("animated.gif", "image/gif"),
    ] {
        let data = fs::read(dir.join(name)).unwrap();
        let p = prepare(&data, false).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(p.mime, mime, "{name}");
        if name.starts_with("exif") {
            assert_eq!((p.width, p.height), (12, 16), "16 × 12 turned");
        }
    }
    check_thumbnail(&fs::read(dir.join("thumbnail.jpg")).unwrap()).unwrap();
}

#[test]
#[ignore = "regenerates the seed corpus; run by hand"]
fn write_seeds() {
    use image::{
        Delay, ExtendedColorType, Frame, ImageBuffer, Rgb, Rgba, RgbaImage,
        codecs::{gif::GifEncoder, jpeg::JpegEncoder, png::PngEncoder, webp::WebPEncoder},
    };
    let rgb = ImageBuffer::from_fn(16, 12, |x, y| Rgb([x as u8 * 16, y as u8 * 20, 128]));
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, 80)
        .encode_image(&rgb)
        .unwrap();
    // APP1 `Exif\0\0` with a little-endian TIFF whose IFD0 holds only orientation 6.
    let mut exif = vec![0xFF, 0xE1, 0, 34];
    exif.extend_from_slice(b"Exif\0\0II\x2A\0\x08\0\0\0");
    exif.extend_from_slice(&[1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0]);
    jpeg.splice(2..2, exif);

    let alpha = RgbaImage::from_fn(8, 8, |x, y| Rgba([200, 50, 0, ((x + y) * 16) as u8]));
    let mut png = Vec::new();
    alpha.write_with_encoder(PngEncoder::new(&mut png)).unwrap();

    let mut webp = Vec::new();
    let opaque = RgbaImage::from_pixel(8, 8, Rgba([0, 90, 200, 255]));
    WebPEncoder::new_lossless(&mut webp)
        .encode(opaque.as_raw(), 8, 8, ExtendedColorType::Rgba8)
        .unwrap();

    let mut gif = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut gif);
        encoder
            .set_repeat(image::codecs::gif::Repeat::Infinite)
            .unwrap();
        let frames = (0..2u8).map(|i| {
            let buf = RgbaImage::from_pixel(8, 8, Rgba([i * 200, 0, 0, 255]));
            Frame::from_parts(buf, 0, 0, Delay::from_numer_denom_ms(100, 1))
        });
        encoder.encode_frames(frames).unwrap();
    }

    let thumbnail = prepare(&jpeg, false).unwrap().thumbnail;

    let dir = corpus_dir().join("image_prepare");
    fs::create_dir_all(&dir).unwrap();
    for (name, bytes) in [
        ("exif_orientation_6.jpg", jpeg),
        ("alpha.png", png),
        ("opaque.webp", webp),
        ("animated.gif", gif),
        ("thumbnail.jpg", thumbnail),
    ] {
        fs::write(dir.join(name), bytes).unwrap();
    }
}
