//! Browser sessions: a random cookie whose SHA-256 is stored, with idle and absolute limits;
//! CSRF tokens derived from the cookie; the sign-in cookie that protects the sign-in form.

use super::WebError;
use crate::config::Config;
use crate::store::{NewWebSession, User};
use crate::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use chrono::{DateTime, Duration, Utc};
use rand::{rngs::OsRng, RngCore};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie: its value is the only proof of a signed-in browser.
pub const SESSION_COOKIE: &str = "tokengate_session";
/// Set by the sign-in page before anyone signs in, so the sign-in form has a CSRF token.
pub const SIGNIN_COOKIE: &str = "tokengate_signin";
/// Cookies are sent only to the pages, never to registry routes.
const COOKIE_PATH: &str = "/-/web";
/// How long the one-time password step may take after the password was accepted.
pub const OTP_STEP_MINUTES: i64 = 5;
/// Activity is written at most this often per session.
const TOUCH_EVERY_SECS: i64 = 60;

/// A new random secret: 256 bits, base64url.
pub fn new_secret() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// What is stored of a secret: its SHA-256, hex.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The CSRF token of the forms shown to the holder of `secret` (a cookie value): only a page
/// read with that cookie can know it.
pub fn csrf_for(secret: &str) -> String {
    let mut h = Sha256::new();
    h.update(b"tokengate csrf\0");
    h.update(secret.as_bytes());
    hex::encode(h.finalize())
}

/// Whether a form's CSRF token is the one expected, in constant time.
pub fn check_csrf(expected: &str, sent: Option<&str>) -> Result<(), WebError> {
    let sent = sent.unwrap_or_default();
    if !sent.is_empty() && bool::from(expected.as_bytes().ct_eq(sent.as_bytes())) {
        Ok(())
    } else {
        Err(WebError::csrf())
    }
}

/// The value of cookie `name` in the request, if any.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 128)
}

/// `Set-Cookie` for a cookie of the pages: HttpOnly, SameSite=Lax, Secure when the public URL is
/// https; a session cookie (no Max-Age) unless `max_age_secs` is given (0 deletes it).
pub fn set_cookie(
    config: &Config,
    name: &str,
    value: &str,
    max_age_secs: Option<i64>,
) -> HeaderValue {
    let mut c = format!("{name}={value}; Path={COOKIE_PATH}; HttpOnly; SameSite=Lax");
    if config.public_url.starts_with("https://") {
        c.push_str("; Secure");
    }
    if let Some(age) = max_age_secs {
        c.push_str(&format!("; Max-Age={age}"));
    }
    HeaderValue::from_str(&c).expect("cookie values are base64url")
}

pub fn clear_cookie(config: &Config, name: &str) -> HeaderValue {
    set_cookie(config, name, "", Some(0))
}

/// A signed-in browser (password and, when enabled, one-time password accepted).
#[derive(Clone, Debug)]
pub struct SignedIn {
    pub user: User,
    /// The stored hash of the session cookie.
    pub id_hash: String,
    /// The CSRF token of this session's forms.
    pub csrf: String,
}

/// Why a session cookie does not sign a browser in.
fn usable(state: &AppState, s: &crate::store::WebSession, now: DateTime<Utc>) -> bool {
    let idle = Duration::minutes(i64::from(state.config.web_session_idle_minutes));
    s.expires > now && s.last_seen + idle > now && !s.user.disabled
}

/// The signed-in browser of a request, if its session cookie is valid and complete.
pub async fn current(state: &AppState, headers: &HeaderMap) -> Result<Option<SignedIn>, WebError> {
    let Some(secret) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let id_hash = hash(&secret);
    let Some(session) = state.store.web_session(&id_hash).await? else {
        return Ok(None);
    };
    let now = Utc::now();
    if session.otp_pending || !usable(state, &session, now) {
        return Ok(None);
    }
    if (now - session.last_seen).num_seconds() >= TOUCH_EVERY_SECS {
        state.store.touch_web_session(&id_hash, now).await?;
    }
    Ok(Some(SignedIn {
        user: session.user,
        id_hash,
        csrf: csrf_for(&secret),
    }))
}

/// A session whose password was accepted and whose one-time password is awaited.
pub async fn pending_otp(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<(User, String, String)>, WebError> {
    let Some(secret) = cookie(headers, SESSION_COOKIE) else {
        return Ok(None);
    };
    let id_hash = hash(&secret);
    let Some(session) = state.store.web_session(&id_hash).await? else {
        return Ok(None);
    };
    if !session.otp_pending || !usable(state, &session, Utc::now()) {
        return Ok(None);
    }
    Ok(Some((session.user, id_hash, csrf_for(&secret))))
}

/// Starts a session for `user` and returns the cookie to set. `otp_pending`: only the password
/// was checked so far, and the session lasts a few minutes, for the one-time password step.
pub async fn start(
    state: &AppState,
    user: &User,
    otp_pending: bool,
) -> Result<(String, HeaderValue), WebError> {
    let now = Utc::now();
    let idle = Duration::minutes(i64::from(state.config.web_session_idle_minutes));
    // Expired rows are removed now and then, here where sessions are made.
    state.store.prune_web(now, now - idle).await?;
    let secret = new_secret();
    let expires = if otp_pending {
        now + Duration::minutes(OTP_STEP_MINUTES)
    } else {
        now + Duration::hours(i64::from(state.config.web_session_max_hours))
    };
    state
        .store
        .insert_web_session(&NewWebSession {
            id_hash: &hash(&secret),
            user_id: user.id,
            otp_pending,
            now,
            expires,
        })
        .await?;
    let cookie = set_cookie(&state.config, SESSION_COOKIE, &secret, None);
    Ok((secret, cookie))
}

/// Where a page may send the browser after signing in: only to the pages themselves.
pub fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n)
            if n.starts_with("/-/web/")
                && !n.contains("//")
                && !n.contains('\\')
                && !n.chars().any(char::is_control)
                && n.len() <= 512 =>
        {
            n.to_owned()
        }
        _ => "/-/web/tokens".to_owned(),
    }
}

/// The sign-in page, coming back to `next` afterwards.
pub fn signin_url(next: &str) -> String {
    let enc = percent_encoding::utf8_percent_encode(next, percent_encoding::NON_ALPHANUMERIC);
    format!("/-/web/login?next={enc}")
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match current(state, &parts.headers).await {
            Ok(Some(signed_in)) => Ok(signed_in),
            Ok(None) => {
                // A page opened without a session comes back after signing in; a form posted
                // without one (an expired session) starts over at the sign-in page.
                let next = if parts.method == Method::GET {
                    parts
                        .uri
                        .path_and_query()
                        .map(|p| p.as_str().to_owned())
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                Err(Redirect::to(&signin_url(&safe_next(Some(&next)))).into_response())
            }
            Err(e) => Err(e.into_response()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_stays_on_the_pages() {
        assert_eq!(safe_next(Some("/-/web/tfa")), "/-/web/tfa");
        assert_eq!(
            safe_next(Some("/-/web/npm-login?id=abc")),
            "/-/web/npm-login?id=abc"
        );
        for bad in [
            "https://evil.example/",
            "//evil.example/-/web/",
            "/-/web//evil",
            "/-/web/\\evil",
            "/lodash",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/-/web/tokens", "{bad}");
        }
        assert_eq!(safe_next(None), "/-/web/tokens");
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; tokengate_session_x=2; tokengate_session=abc"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE).as_deref(), Some("abc"));
        assert_eq!(cookie(&h, SIGNIN_COOKIE), None);
    }

    #[test]
    fn csrf_depends_on_the_secret_and_is_checked_whole() {
        let (a, b) = (new_secret(), new_secret());
        assert_ne!(csrf_for(&a), csrf_for(&b));
        assert_ne!(csrf_for(&a), hash(&a));
        assert!(check_csrf(&csrf_for(&a), Some(&csrf_for(&a))).is_ok());
        assert!(check_csrf(&csrf_for(&a), Some(&csrf_for(&b))).is_err());
        assert!(check_csrf(&csrf_for(&a), Some("")).is_err());
        assert!(check_csrf(&csrf_for(&a), None).is_err());
    }
}
