#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_relay::wire::directory;

fuzz_target!(|data: &[u8]| {
    // Never panics; whatever decodes and re-encodes within the cap decodes to the same value.
    if let Ok(v) = directory::Response::decode(data)
        && let Ok(bytes) = v.encode()
    {
        assert_eq!(directory::Response::decode(&bytes).expect("re-encoded frame decodes"), v);
    }
});
