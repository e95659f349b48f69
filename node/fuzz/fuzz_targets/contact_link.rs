#![no_main]

// Both forms: `Link::parse` tries a short (`TERN:` base32) link, else a long one.
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tern_node::link::Link::parse(text);
    }
});
