//! tokengate: an npm-compatible access-token service.

pub mod api;
pub mod attempts;
pub mod auth;
pub mod client_ip;
pub mod config;
pub mod error;
pub mod keyring;
pub mod names;
pub mod password;
pub mod policy;
pub mod probe;
pub mod rate_limit;
pub mod registry_path;
pub mod second_factor;
pub mod store;
pub mod token;
pub mod token_request;
pub mod totp;

use crate::config::Config;
use crate::error::ApiError;
use crate::keyring::KeyRing;
use crate::rate_limit::FailureLimiter;
use crate::store::Store;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::Router;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    /// Seals and opens TOTP secrets.
    pub keys: Arc<KeyRing>,
    /// Password and OTP failures, per account and client address.
    pub failures: Arc<FailureLimiter>,
}

impl AppState {
    pub fn new(config: Config, store: Arc<dyn Store>, keys: KeyRing) -> Self {
        let failures = FailureLimiter::new(
            config.auth_failure_limit,
            Duration::from_secs(config.auth_failure_window_secs),
        );
        AppState {
            config: Arc::new(config),
            store,
            keys: Arc::new(keys),
            failures: Arc::new(failures),
        }
    }
}

/// The whole HTTP application; shared by `main` and the tests.
pub fn app(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    Router::new()
        .route("/-/ping", get(api::user::ping))
        .route("/-/health/live", get(api::user::live))
        .route("/-/health/ready", get(api::user::ready))
        .route("/-/whoami", get(api::user::whoami))
        .route(
            "/-/user/{id}",
            put(api::user::login).get(api::user::user_doc),
        )
        .route("/-/user/{id}/-rev/{rev}", put(api::user::login_rev))
        .route("/-/user/token/{token}", delete(api::user::logout))
        .route("/-/v1/login", post(api::user::web_login_unavailable))
        .route(
            "/-/npm/v1/tokens",
            get(api::tokens::list).post(api::tokens::create),
        )
        .route("/-/npm/v1/tokens/token/{key}", delete(api::tokens::revoke))
        .route(
            "/-/npm/v1/user",
            get(api::profile::get).post(api::profile::update),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth::gate))
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(middleware::from_fn(access_log))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("a handler panicked")).into_response()
        }))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("Not found: this registry has no such endpoint.")
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("This endpoint does not accept that method.".into())
}

/// Answers 503 when a request takes longer than `request_timeout_secs`.
async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = Duration::from_secs(state.config.request_timeout_secs);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::Unavailable("The request took too long; try again.".into()).into_response()
        }
    }
}

/// One log line per request. The path is redacted: logout and revoke paths carry tokens.
async fn access_log(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = registry_path::redact_path(req.uri().path());
    let response = next.run(req).await;
    tracing::info!(
        %method,
        path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    response
}

/// Serves `app` on an already-bound listener until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}
