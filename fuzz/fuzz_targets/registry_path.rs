//! Any method, mount prefix and path: never panics; a path with a `..` segment is refused;
//! a redacted path holds no run of letters and digits as long as a token's body.
#![no_main]

use axum::http::Method;
use libfuzzer_sys::fuzz_target;
use tokengate::registry_path::{classify, redact_path, route, Operation};

const METHODS: [Method; 6] = [
    Method::GET,
    Method::HEAD,
    Method::PUT,
    Method::POST,
    Method::DELETE,
    Method::PATCH,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let method = &METHODS[usize::from(pick) % METHODS.len()];
    let (prefix, path) = text.split_once('\n').unwrap_or(("", text));
    let r = route(method, path, prefix);
    let op = classify(method, path);
    let before_query = path.split(['?', '#']).next().unwrap_or("");
    if before_query.split('/').any(|s| s == "..") {
        assert_eq!(op, Operation::DotSegments, "{path}");
    }
    if r.op == Operation::DotSegments {
        assert!(r.package.is_none() && r.org.is_none());
    }
    let shown = redact_path(path);
    let mut run = 0;
    for b in shown.bytes() {
        run = if b.is_ascii_alphanumeric() {
            run + 1
        } else {
            0
        };
        assert!(run < 36, "{shown}");
    }
});
