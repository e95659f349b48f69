#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = tern_node::envelope::Envelope::decode(data);
});
