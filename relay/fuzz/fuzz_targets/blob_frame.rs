#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_relay::{blob, wire::stream};

fuzz_target!(|data: &[u8]| {
    // Never panics; whatever decodes under a cap and re-encodes decodes to the same value.
    for max in [
        blob::MAX_CONTROL_FRAME_BYTES,
        blob::MAX_MANIFEST_FRAME_BYTES,
        blob::MAX_FRAME_BYTES,
    ] {
        if let Ok(v) = blob::Request::decode(data, max)
            && let Ok(bytes) = v.encode()
        {
            assert_eq!(blob::Request::decode(&bytes, max).expect("re-encoded frame decodes"), v);
        }
        if let Ok(v) = blob::Response::decode(data, max)
            && let Ok(bytes) = v.encode()
        {
            assert_eq!(blob::Response::decode(&bytes, max).expect("re-encoded frame decodes"), v);
        }
    }
    // The same bytes as a stream of length-prefixed frames under the control-frame cap.
    let mut r = futures::io::Cursor::new(data);
    futures::executor::block_on(async {
        while let Ok(Some(frame)) = stream::read_frame(&mut r, blob::MAX_CONTROL_FRAME_BYTES).await {
            assert!(frame.len() <= blob::MAX_CONTROL_FRAME_BYTES);
            let _ = blob::Request::decode(&frame, blob::MAX_CONTROL_FRAME_BYTES);
        }
    });
});
