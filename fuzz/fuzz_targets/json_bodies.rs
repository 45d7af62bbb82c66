//! Any bytes as each JSON body type: never panics, and a refusal never holds a string value of
//! the body (passwords) that the same body with its strings blanked does not also produce.
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

/// The document with every string replaced by `x`: what a message says of it is template
/// text, not a leaked value.
fn blanked(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::String(_) => "x".into(),
        serde_json::Value::Array(items) => items.iter().map(blanked).collect(),
        serde_json::Value::Object(map) => map
            .iter()
            .map(|(k, v)| (k.clone(), blanked(v)))
            .collect::<serde_json::Map<_, _>>()
            .into(),
        other => other.clone(),
    }
}

fn errors(data: &[u8]) -> [Option<String>; 4] {
    [
        parse_json::<LoginBody>(data).err().map(|e| e.to_string()),
        parse_json::<ProfileUpdate>(data)
            .err()
            .map(|e| e.to_string()),
        parse_json::<CreateTokenBody>(data)
            .err()
            .map(|e| e.to_string()),
        parse_json::<WebLoginBody>(data)
            .err()
            .map(|e| e.to_string()),
    ]
}

fuzz_target!(|data: &[u8]| {
    let found = errors(data);
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let mut secrets = vec![];
    strings(&v, &mut secrets);
    let template = errors(&serde_json::to_vec(&blanked(&v)).unwrap());
    for (msg, template) in found.iter().zip(&template) {
        let Some(msg) = msg else { continue };
        for s in &secrets {
            let leaked = msg.contains(s.as_str())
                && !template.as_deref().is_some_and(|t| t.contains(s.as_str()));
            assert!(!leaked, "{msg} holds {s:?}");
        }
    }
});
