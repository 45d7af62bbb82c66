//! Checks of what a person types (passwords and one-time passwords) under the failure limits:
//! a caller over the limit gets a 429 before anything is checked, and every failure counts.

use crate::audit;
use crate::error::ApiError;
use crate::metrics::{self, AuthOutcome};
use crate::AppState;
use std::net::IpAddr;

/// Refuses with 429 when `account` at `client` has failed too often lately.
pub fn ensure_allowed(state: &AppState, account: &str, client: IpAddr) -> Result<(), ApiError> {
    state.failures.check(account, client).map_err(|wait| {
        metrics::auth_outcome(AuthOutcome::RateLimited);
        tracing::info!(user = %account, %client, "refused: too many failed attempts");
        ApiError::too_many_attempts(wait)
    })
}

pub fn record_failure(state: &AppState, account: &str, client: IpAddr) {
    state.failures.record_failure(account, client);
    // The failure that reaches the limit starts a lockout; later attempts are refused
    // before they can fail again, so this is noted once per lockout.
    if state.failures.check(account, client).is_err() {
        state.audit.note(
            audit::Event::LockedOut,
            Some(account),
            None,
            serde_json::json!({ "client": client.to_string() }),
        );
    }
}

/// Verifies `password` against `stored` (an unknown account when `None`, checked against a
/// dummy hash so it takes as long). `Err` only when the caller is over the limit.
pub async fn check_password(
    state: &AppState,
    account: &str,
    stored: Option<&str>,
    password: &str,
    client: IpAddr,
) -> Result<bool, ApiError> {
    ensure_allowed(state, account, client)?;
    let ok = !password.is_empty()
        && crate::password::verify(password.to_owned(), stored.map(str::to_owned)).await;
    if !ok {
        metrics::auth_outcome(AuthOutcome::WrongPassword);
        record_failure(state, account, client);
    }
    Ok(ok)
}
