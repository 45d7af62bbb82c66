//! Any bytes as an `Authorization` header value: never panics; Basic credentials hold no `:`
//! in the name, and a Bearer token has no surrounding spaces.
#![no_main]

use axum::http::HeaderValue;
use libfuzzer_sys::fuzz_target;
use tokengate::auth::{parse_authorization, AuthHeader};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let Ok(text) = value.to_str() else {
        return;
    };
    match parse_authorization(text) {
        Ok(AuthHeader::Basic { name, .. }) => assert!(!name.contains(':')),
        Ok(AuthHeader::Bearer(token)) => assert_eq!(token, token.trim()),
        Err(_) => {}
    }
});
