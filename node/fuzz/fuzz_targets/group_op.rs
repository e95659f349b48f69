#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(op) = tern_node::group::SignedOp::from_bytes(data) {
        let _ = tern_node::group::GroupState::genesis(&op);
        let _ = tern_node::group::resolve(std::slice::from_ref(&op));
    }
});
