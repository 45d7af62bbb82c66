//! Any bytes as each JSON body type: never panics, and a refusal never holds a string value of
//! the body (passwords).
#![no_main]

use libfuzzer_sys::fuzz_target;
use tokengate::api::parse_json;
use tokengate::api::profile::ProfileUpdate;
use tokengate::api::user::{LoginBody, WebLoginBody};
use tokengate::token_request::CreateTokenBody;

/// Strings of at least 8 characters anywhere in the document.
fn strings(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::String(s) if s.chars().count() >= 8 => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|i| strings(i, out)),
        serde_json::Value::Object(map) => map.values().for_each(|i| strings(i, out)),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let mut secrets = vec![];
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        strings(&v, &mut secrets);
    }
    let errors = [
        parse_json::<LoginBody>(data).err(),
        parse_json::<ProfileUpdate>(data).err(),
        parse_json::<CreateTokenBody>(data).err(),
        parse_json::<WebLoginBody>(data).err(),
    ];
    for e in errors.into_iter().flatten() {
        let msg = e.to_string();
        for s in &secrets {
            assert!(!msg.contains(s.as_str()), "{msg} holds {s:?}");
        }
    }
});
