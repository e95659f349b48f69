#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_relay::server::Config;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cfg) = Config::from_toml(text)
    {
        let _ = cfg.validate();
    }
});
