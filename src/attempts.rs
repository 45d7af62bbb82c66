//! Checks of what a person types (passwords and one-time passwords) under the failure limits:
//! a caller over the limit gets a 429 before anything is checked, and every failure counts.

use crate::error::ApiError;
use crate::AppState;
use std::net::IpAddr;

/// Refuses with 429 when `account` at `client` has failed too often lately.
pub fn ensure_allowed(state: &AppState, account: &str, client: IpAddr) -> Result<(), ApiError> {
    state.failures.check(account, client).map_err(|wait| {
        tracing::info!(user = %account, %client, "refused: too many failed attempts");
        ApiError::too_many_attempts(wait)
    })
}

pub fn record_failure(state: &AppState, account: &str, client: IpAddr) {
    state.failures.record_failure(account, client);
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
        record_failure(state, account, client);
    }
    Ok(ok)
}
