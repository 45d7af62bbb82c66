//! Any text as a config file: never panics; an accepted config's limits can be used.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::config::Config;

fuzz_target!(|data: &str| {
    if let Ok(c) = Config::from_toml(data) {
        let now = chrono::Utc::now();
        assert!(now
            .checked_add_signed(chrono::Duration::days(c.max_token_expiry_days.into()))
            .is_some());
        assert!(std::time::Instant::now()
            .checked_add(std::time::Duration::from_secs(c.request_timeout_secs))
            .is_some());
    }
});
