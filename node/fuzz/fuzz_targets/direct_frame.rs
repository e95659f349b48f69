#![no_main]

use tern_node::net::direct;
use tern_relay::wire::Frame;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let frame = Frame::Data(data.to_vec());
    let _ = direct::Request::from_frame(&frame);
    let _ = direct::Response::from_frame(&frame);
});
