//! The pages for people, under `/-/web/`: sign in (with the one-time password step), Access
//! Tokens, two-factor setup, password change, and the browser half of `npm login`.
//!
//! Server-rendered HTML (maud), usable without JavaScript. The gate lets these paths through
//! (`Operation::Web`); each page authenticates by its session cookie ([`session`]) and every
//! form carries a CSRF token. Token, password and two-factor changes go through the same
//! functions as the npm API (`api::tokens`, `api::profile`), so the rules and messages are
//! the same.

mod layout;
pub mod npm_login;
mod password;
pub mod session;
mod signin;
mod tfa;
mod tokens;

use crate::error::ApiError;
use crate::route_table::Routes;
use crate::AppState;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{any, get, post};
use maud::html;

/// The pages' routes, with their security headers.
pub fn routes() -> Routes<AppState> {
    Routes::new()
        .route("/-/web", get(home))
        .route("/-/web/", get(home))
        .route("/-/web/login", get(signin::show).post(signin::submit))
        .route("/-/web/login/otp", post(signin::otp))
        .route(
            "/-/web/signup",
            get(signin::signup_page).post(signin::signup),
        )
        .route("/-/web/logout", post(signin::logout))
        .route("/-/web/tokens", get(tokens::list).post(tokens::create))
        .route("/-/web/tokens/new", get(tokens::new_form))
        .route(
            "/-/web/tokens/revoke",
            get(tokens::confirm_revoke).post(tokens::revoke),
        )
        .route("/-/web/tfa", get(tfa::show))
        .route("/-/web/tfa/enable", post(tfa::enable))
        .route("/-/web/tfa/confirm", post(tfa::confirm))
        .route("/-/web/tfa/disable", post(tfa::disable))
        .route(
            "/-/web/password",
            get(password::show).post(password::submit),
        )
        .route(
            "/-/web/npm-login",
            get(npm_login::show).post(npm_login::decide),
        )
        .route("/-/web/{*rest}", any(not_found))
        .map_router(|router| router.layer(middleware::map_response(layout::page_headers)))
}

async fn home() -> Redirect {
    Redirect::to("/-/web/tokens")
}

async fn not_found() -> WebError {
    WebError(ApiError::not_found("There is no such page."))
}

/// An error shown as a page, with the status and message the API would give.
#[derive(Debug)]
pub struct WebError(pub ApiError);

impl WebError {
    fn csrf() -> WebError {
        WebError(ApiError::forbidden(
            "This form has expired or did not come from this site: go back, reload the page \
             and try again.",
        ))
    }
}

impl From<ApiError> for WebError {
    fn from(e: ApiError) -> Self {
        WebError(e)
    }
}

impl From<crate::store::StoreError> for WebError {
    fn from(e: crate::store::StoreError) -> Self {
        WebError(e.into())
    }
}

/// The message shown for an error; internal causes go to the log only.
pub fn message(e: &ApiError) -> String {
    match e {
        ApiError::Internal(cause) => {
            tracing::error!(error = %cause, "internal error");
            "Something went wrong on the server; the administrator can find the cause in the \
             server log."
                .to_owned()
        }
        ApiError::Unavailable(m) => {
            tracing::warn!("{m}");
            m.clone()
        }
        other => other.to_string(),
    }
}

/// Adds `Retry-After` to a page answering a 429.
pub fn with_retry_after(e: &ApiError, mut response: Response) -> Response {
    if let ApiError::TooManyAttempts {
        retry_after_secs, ..
    } = e
    {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
    }
    response
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let status = self.0.status();
        let text = message(&self.0);
        let title = match status {
            StatusCode::NOT_FOUND => "Not found",
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::TOO_MANY_REQUESTS => "Too many attempts",
            s if s.is_server_error() => "Server error",
            _ => "Something is not right",
        };
        let body = html! {
            section.card.narrow {
                h1 { (title) }
                p.error role="alert" { (text) }
                p { a href="/-/web/tokens" { "Back to your Access Tokens" } }
            }
        };
        with_retry_after(
            &self.0,
            layout::respond(status, layout::page(title, None, body)),
        )
    }
}

/// A form body; a malformed one is a 400 page.
pub fn form<T>(form: Result<Form<T>, FormRejection>) -> Result<T, WebError> {
    form.map(|Form(f)| f)
        .map_err(|_| WebError(ApiError::bad_request("The form could not be read.")))
}

/// A query string; a malformed one is a 400 page.
pub fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, WebError> {
    query
        .map(|Query(q)| q)
        .map_err(|_| WebError(ApiError::bad_request("The address has an invalid query.")))
}

/// Times as the pages show them.
pub fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M UTC").to_string()
}

/// Redirects to `to` and sets a cookie on the way.
pub fn redirect_with_cookie(to: &str, cookie: HeaderValue) -> Response {
    let mut r = Redirect::to(to).into_response();
    r.headers_mut().append(header::SET_COOKIE, cookie);
    r
}
