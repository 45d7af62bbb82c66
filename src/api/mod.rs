//! npm's wire endpoints, and the extractors that turn bad input into clear 4xx answers.

pub mod profile;
pub mod tokens;
pub mod user;
pub mod verify;

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;

/// A JSON body. Too large → 413; malformed or mistyped → 400 naming the field, never echoing
/// the value (it may be a password).
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let BodyBytes(bytes) = BodyBytes::from_request(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// A request body as bytes. Too large → 413 and unreadable → 400, as `{"error": …}` like every
/// other refusal (axum's own rejection is plain text).
pub struct BodyBytes(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for BodyBytes {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(BodyBytes)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(
                        "The request body is larger than this server accepts.".into(),
                    )
                } else if body_timed_out(&e) {
                    ApiError::RequestTimeout(
                        "The request body stopped arriving; send it again without pausing.".into(),
                    )
                } else {
                    ApiError::bad_request("The request body could not be read.")
                }
            })
    }
}

/// Whether reading a body failed because the client paused longer than `body_timeout_secs`.
fn body_timed_out(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<tower_http::timeout::TimeoutError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request("A JSON body is required."));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let what = describe(&inner);
        if path == "." || path.is_empty() {
            ApiError::bad_request(format!("Invalid JSON body: {what}"))
        } else {
            ApiError::bad_request(format!("Invalid JSON body at `{path}`: {what}"))
        }
    })
}

/// serde_json's message without the offending value (`invalid type: string "hunter2"` → `invalid
/// type: string`).
fn describe(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    for lead in ["invalid type: ", "invalid value: ", "invalid length "] {
        if let Some(rest) = msg.strip_prefix(lead) {
            // The value comes first and may itself hold ", expected": cut at the last one.
            if let Some(i) = rest.rfind(", expected") {
                let kind = rest[..i].split_whitespace().next().unwrap_or("value");
                return format!("{lead}{kind}{}", &rest[i..]);
            }
        }
    }
    msg
}

/// A path parameter; a bad encoding is a 400, not axum's plain-text rejection.
pub struct PathParam<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| PathParam(p.0))
            .map_err(|e| ApiError::bad_request(format!("Invalid path: {}", e.body_text())))
    }
}

/// Times as npm shows them: `2025-07-01T00:00:00.000Z`.
pub fn iso(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct B {
        password: String,
        flag: Option<bool>,
    }

    #[test]
    fn json_errors_name_the_field_and_hide_the_value() {
        let e = parse_json::<B>(br#"{"password": "x", "flag": "hunter2"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("`flag`") && !e.contains("hunter2"), "{e}");
        let e = parse_json::<B>(br#"{"password": 12345678}"#)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("12345678"), "{e}");
        let e = parse_json::<B>(br#"{"password": "x", "nope": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `nope`"), "{e}");
        // Found by the properties: a value holding ", expected" was shown from there on.
        let e = parse_json::<B>(br#"{"password": "x", "flag": "Zq 00?, expected a  00?"}"#)
            .unwrap_err()
            .to_string();
        assert!(!e.contains("00?"), "{e}");
        assert!(
            e.contains("invalid type: string, expected a boolean"),
            "{e}"
        );
        let e = parse_json::<B>(b"{").unwrap_err().to_string();
        assert!(e.contains("Invalid JSON body"), "{e}");
        let e = parse_json::<B>(b"").unwrap_err().to_string();
        assert!(e.contains("required"), "{e}");
    }
}
