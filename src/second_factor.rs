//! One-time passwords as npm sends them: the `npm-otp` header, TOTP codes that are never
//! accepted twice, and single-use recovery codes.

use crate::error::{ApiError, Challenge};
use crate::metrics::{self, AuthOutcome};
use crate::store::{TfaState, User};
use crate::totp;
use crate::AppState;
use crate::{attempts, audit};
use axum::http::HeaderMap;
use chrono::Utc;
use std::net::IpAddr;

pub const OTP_HEADER: &str = "npm-otp";
pub const OTP_REQUIRED: &str = "This operation requires a one-time password.";
/// Why a request with the account password (`Authorization: Basic`) is asked for a code.
pub const PASSWORD_NEEDS_OTP: &str = "This account has two-factor authentication, so its \
    password alone is not enough: send a one-time password with every request (npm --otp), or \
    log in with `npm login` and use the session token it gives.";

/// The 401 that makes npm prompt for a code (or fail with EOTP without a terminal).
pub fn challenge() -> ApiError {
    challenge_for(OTP_REQUIRED)
}

/// The same 401 with its reason; npm recognises it by `WWW-Authenticate: OTP`.
fn challenge_for(why: &'static str) -> ApiError {
    ApiError::unauthorized(why, Challenge::Otp)
}

/// The code the client sent, if any.
pub fn sent_code(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(OTP_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|c| !c.is_empty())
}

/// Demands a valid one-time password when `user` has two-factor authentication enabled;
/// `why` is the challenge's message.
pub async fn require(
    state: &AppState,
    user: &User,
    headers: &HeaderMap,
    client: IpAddr,
    why: &'static str,
) -> Result<(), ApiError> {
    let Some(tfa) = user.tfa.as_ref().filter(|t| t.enabled()) else {
        return Ok(());
    };
    let Some(code) = sent_code(headers) else {
        metrics::auth_outcome(AuthOutcome::OtpRequired);
        return Err(challenge_for(why));
    };
    verify(state, user, tfa, code, client).await
}

/// Checks a code typed into a web form for `user` (whose two-factor authentication is
/// enabled), under the same limits and rules as the `npm-otp` header.
pub async fn verify_code(
    state: &AppState,
    user: &User,
    code: &str,
    client: IpAddr,
) -> Result<(), ApiError> {
    let Some(tfa) = user.tfa.as_ref().filter(|t| t.enabled()) else {
        return Ok(());
    };
    let code = code.trim();
    if code.is_empty() {
        return Err(challenge());
    }
    verify(state, user, tfa, code, client).await
}

async fn verify(
    state: &AppState,
    user: &User,
    tfa: &TfaState,
    code: &str,
    client: IpAddr,
) -> Result<(), ApiError> {
    attempts::ensure_allowed(state, &user.name, client)?;
    if accept(state, user, tfa, code).await? {
        Ok(())
    } else {
        attempts::record_failure(state, &user.name, client);
        metrics::auth_outcome(AuthOutcome::OtpRequired);
        tracing::info!(user = %user.name, %client, "one-time password refused");
        state.audit.note(
            audit::Event::OtpFailed,
            Some(&user.name),
            None,
            serde_json::json!({}),
        );
        Err(challenge())
    }
}

/// Accepts a TOTP code of a step newer than the last one used (recording it), or an unused
/// recovery code (using it up).
async fn accept(
    state: &AppState,
    user: &User,
    tfa: &TfaState,
    code: &str,
) -> Result<bool, ApiError> {
    if totp::is_totp_shape(code) {
        let secret = open_secret(state, tfa)?;
        let Some(step) = totp::matching_step(&secret, code, Utc::now().timestamp(), tfa.last_step)
        else {
            return Ok(false);
        };
        // Conditional: of two requests racing with the same code, one wins.
        Ok(state.store.use_totp_step(user.id, step).await?)
    } else {
        let used = state
            .store
            .use_recovery_code(user.id, &totp::hash_recovery_code(code))
            .await?;
        if used {
            tracing::info!(user = %user.name, "recovery code used");
        }
        Ok(used)
    }
}

/// The step whose code is `code` for a pending enrolment, or `None`.
pub fn pending_step(state: &AppState, tfa: &TfaState, code: &str) -> Result<Option<i64>, ApiError> {
    let secret = open_secret(state, tfa)?;
    Ok(totp::matching_step(
        &secret,
        code,
        Utc::now().timestamp(),
        None,
    ))
}

fn open_secret(state: &AppState, tfa: &TfaState) -> Result<Vec<u8>, ApiError> {
    state.keys.open(&tfa.sealed_secret).map_err(|e| {
        ApiError::Internal(e.context(
            "cannot open a TOTP secret: is the server key (tfa_key / tfa_key_file) the one it was sealed with?",
        ))
    })
}
