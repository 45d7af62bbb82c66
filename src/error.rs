//! The one error type of the HTTP surface: a status, a `{"error": …}` body that npm prints,
//! and the `WWW-Authenticate` challenge npm turns into the right message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

/// The body of every error answer: npm prints `error`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What went wrong, for a person to read.
    pub error: String,
}

/// Which challenge a 401 carries. npm compares each comma-separated element whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Challenge {
    /// A token is missing or invalid: npm tells the user to `npm login`.
    Bearer,
    /// A password is wrong or missing: npm says "Incorrect or missing password.".
    Basic,
    /// A one-time password is needed: npm's EOTP.
    Otp,
    /// The client address is not allowed for this token: npm's EAUTHIP.
    IpAddress,
}

impl Challenge {
    fn header(self) -> &'static str {
        match self {
            Challenge::Bearer => "Bearer",
            Challenge::Basic => "Basic",
            Challenge::Otp => "OTP",
            Challenge::IpAddress => "ipaddress",
        }
    }
}

/// Characters of untrusted input a message may repeat.
pub const ECHO_CHARS: usize = 40;

/// The start of untrusted input, for a message that names what was wrong without sending a
/// huge value back (or into the logs): at most [`ECHO_CHARS`] characters, then `…`.
pub fn clip(input: &str) -> std::borrow::Cow<'_, str> {
    match input.char_indices().nth(ECHO_CHARS) {
        Some((end, _)) => format!("{}…", &input[..end]).into(),
        None => input.into(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{message}")]
    Unauthorized {
        message: String,
        challenge: Option<Challenge>,
    },
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    /// The request head is larger than `max_header_bytes`.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// The client paused too long while sending the request body.
    #[error("{0}")]
    RequestTimeout(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// The upstream registry failed or is unreachable.
    #[error("{0}")]
    BadGateway(String),
    /// The upstream registry did not answer in time.
    #[error("{0}")]
    GatewayTimeout(String),
    /// Too many failed password or OTP attempts: retry after this many seconds.
    #[error("{message}")]
    TooManyAttempts {
        message: String,
        retry_after_secs: u64,
    },
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::BadRequest(message.into())
    }

    pub fn unauthorized(message: impl Into<String>, challenge: Challenge) -> Self {
        ApiError::Unauthorized {
            message: message.into(),
            challenge: Some(challenge),
        }
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::Forbidden(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        ApiError::NotFound(message.into())
    }

    /// 429 after too many failures; the message says when to retry.
    pub fn too_many_attempts(wait: std::time::Duration) -> Self {
        Self::too_many("failed password or one-time password attempts", wait)
    }

    /// 429: "Too many WHAT: try again in …", with `Retry-After`.
    pub fn too_many(what: &str, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs().max(1);
        let when = if secs >= 120 {
            format!("{} minutes", secs.div_ceil(60))
        } else {
            format!("{secs} seconds")
        };
        ApiError::TooManyAttempts {
            message: format!("Too many {what}: try again in {when}."),
            retry_after_secs: secs,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::GatewayTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::TooManyAttempts { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        use crate::store::{StoreError, WriteProblem};
        match e {
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                ApiError::Unavailable(
                    "The token database is unavailable; try again shortly.".into(),
                )
            }
            StoreError::CannotWrite(problem, detail) => {
                tracing::error!(error = %detail, %problem, "the database cannot store changes");
                ApiError::Unavailable(
                    match problem {
                        WriteProblem::DiskFull => {
                            "The token database is full: nothing can be changed (no new tokens \
                             or logins) until an administrator frees disk space. Existing \
                             tokens keep working."
                        }
                        WriteProblem::ReadOnly => {
                            "The token database is read-only: nothing can be changed (no new \
                             tokens or logins) until an administrator makes the database \
                             writable by the server. Existing tokens keep working."
                        }
                        WriteProblem::Io => {
                            "The token database could not write its file (an I/O error: a full \
                             or failing disk?): an administrator should check the disk and the \
                             server log. Try again later."
                        }
                    }
                    .into(),
                )
            }
            StoreError::Conflict(what) => ApiError::Conflict(what),
            StoreError::NotFound => ApiError::not_found("Not found."),
            StoreError::Other(e) => ApiError::Internal(e),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = match &self {
            ApiError::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                "Internal server error; the administrator can find the cause in the server log."
                    .to_owned()
            }
            ApiError::Unavailable(m) => {
                tracing::warn!("{m}");
                m.clone()
            }
            other => other.to_string(),
        };
        let mut response = (status, Json(ErrorBody { error: message })).into_response();
        if let ApiError::Unauthorized {
            challenge: Some(c), ..
        } = &self
        {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(c.header()),
            );
        }
        if let ApiError::TooManyAttempts {
            retry_after_secs, ..
        } = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }
}
