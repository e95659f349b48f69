#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_relay::wire::presence;

fuzz_target!(|data: &[u8]| {
    // Never panics; whatever decodes and re-encodes within the cap decodes to the same value.
    if let Ok(v) = presence::Response::decode(data)
        && let Ok(bytes) = v.encode()
    {
        assert_eq!(presence::Response::decode(&bytes).expect("re-encoded frame decodes"), v);
    }
});
