#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    tern_crypto::fuzzing::run("relay_record", data);
});
