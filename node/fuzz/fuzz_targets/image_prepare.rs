#![no_main]

// Untrusted images from the user's disk (`prepare`) and thumbnails from peers
// (`check_thumbnail`): errors are fine, panics and unbounded allocations are not. The seeds
// in `corpus/image_prepare/` are replayed by `node/tests/fuzz_corpus.rs` on every test run.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tern_node::media::image::prepare(data, false);
    let _ = tern_node::media::image::check_thumbnail(data);
});
