#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = tern_node::device_link::Request::parse(text);
    }
    let _ = tern_node::device_link::Bundle::decode(data);
});
