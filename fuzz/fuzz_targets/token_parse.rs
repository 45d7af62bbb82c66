//! Any text as a token: never panics; what parses keeps its text and its key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::token::{PlainToken, TokenKey};

fuzz_target!(|data: &str| {
    for prefix in ["npm_", "tg_", ""] {
        if let Ok(t) = PlainToken::parse(prefix, data) {
            assert_eq!(t.expose(), data);
            assert_eq!(t.key(), TokenKey::of(data));
            assert!(data.starts_with(&t.redacted(prefix)));
        }
    }
    if let Some(k) = TokenKey::parse_hex(data) {
        assert_eq!(k.0, data);
    }
});
