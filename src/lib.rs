//! tokengate: an npm-compatible access-token service.

pub mod admin;
pub mod api;
pub mod attempts;
pub mod audit;
pub mod auth;
pub mod body_limit;
pub mod client_ip;
pub mod config;
pub mod error;
pub mod head_size;
pub mod keyring;
pub mod metrics;
pub mod names;
pub mod observe;
pub mod openapi;
pub mod password;
pub mod policy;
pub mod probe;
pub mod proxy;
pub mod rate_limit;
pub mod registry_path;
pub mod route_table;
pub mod second_factor;
pub mod server;
pub mod store;
pub mod token;
pub mod token_request;
pub mod token_usage;
pub mod totp;
pub mod web;

pub use observe::fit_request_id;
pub use server::serve;

use crate::config::Config;
use crate::error::ApiError;
use crate::keyring::KeyRing;
use crate::rate_limit::FailureLimiter;
use crate::store::Store;
use axum::routing::{any, delete, get, post, put};
use axum::Router;
use std::sync::Arc;
use std::time::Duration;

/// What every handler can reach: one `Arc`, so the per-request clones of the state (one per
/// layer and extractor) cost one atomic increment each.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

pub struct Shared {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    /// Seals and opens TOTP secrets.
    pub keys: Arc<KeyRing>,
    /// Password and OTP failures, per account and client address.
    pub failures: Arc<FailureLimiter>,
    /// npm web logins started per client address (`POST /-/v1/login` needs no credentials).
    pub login_starts: Arc<FailureLimiter>,
    /// Database pool size and idle connections for the metrics; `None`: not reported.
    pub pool_stats: Option<metrics::PoolStatsFn>,
    /// The registry behind tokengate in reverse-proxy mode.
    pub upstream: Option<Arc<proxy::Upstream>>,
    /// Security events, stored in the background.
    pub audit: Arc<audit::AuditLog>,
    /// Tokens' last-used times, written in batches.
    pub usage: Arc<token_usage::UsageTracker>,
}

impl AppState {
    pub fn new(config: Config, store: Arc<dyn Store>, keys: KeyRing) -> Self {
        let upstream = proxy::Upstream::from_config(&config.upstream).map(Arc::new);
        let usage_every = Duration::from_secs(config.last_used_flush_secs);
        let audit = Arc::new(audit::AuditLog::start(
            store.clone(),
            config.audit_retention_days,
        ));
        let usage = token_usage::UsageTracker::start(store.clone(), usage_every);
        let failures = FailureLimiter::new(
            config.auth_failure_limit,
            Duration::from_secs(config.auth_failure_window_secs),
        );
        AppState(Arc::new(Shared {
            config: Arc::new(config),
            store,
            keys: Arc::new(keys),
            failures: Arc::new(failures),
            login_starts: Arc::new(FailureLimiter::new(
                api::user::WEB_LOGINS_PER_WINDOW,
                Duration::from_secs(api::user::WEB_LOGIN_WINDOW_SECS),
            )),
            pool_stats: None,
            upstream,
            audit,
            usage,
        }))
    }

    /// Reports the database pool (size, idle connections) in the metrics.
    pub fn with_pool_stats(mut self, stats: metrics::PoolStatsFn) -> Self {
        Arc::get_mut(&mut self.0)
            .expect("pool stats are set before the state is shared")
            .pool_stats = Some(stats);
        self
    }
}

/// Who made a request, for its access log line. The gate puts it in the response's extensions;
/// `key_id` is a short non-secret identifier of the token used (never the token itself).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedCaller {
    pub user: String,
    pub key_id: Option<String>,
}

/// The header that carries a request's id, in both directions.
pub const REQUEST_ID_HEADER: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-request-id");

/// The whole HTTP application as a `Router`, for the tests and the in-process bench. The
/// server calls [`service`] directly, which spares the outer router.
pub fn app(state: AppState) -> Router {
    Router::new().fallback_service(service(state))
}

/// The whole HTTP application: one observe layer (request id, deadline, gate, access log,
/// metrics) around the router, applied once rather than on every route.
pub fn service(
    state: AppState,
) -> impl tower::Service<
    axum::extract::Request,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = futures_util::future::BoxFuture<
        'static,
        Result<axum::response::Response, std::convert::Infallible>,
    >,
> + Clone
       + Send
       + Sync
       + 'static {
    let (router, templates) = routes(&state).into_parts();
    let observe = observe::ObserveLayer {
        gate: Some(state.clone()),
        deadline: Duration::from_secs(state.config.request_timeout_secs),
        forwarding: state.upstream.is_some(),
        max_head_bytes: state.config.max_header_bytes,
        templates,
    };
    let limit = state.config.max_body_bytes;
    tower::Layer::layer(
        &observe,
        body_limit::BodyLimit::new(router.with_state(state), limit),
    )
}

/// Every route, with its template for the metrics.
fn routes(state: &AppState) -> route_table::Routes<AppState> {
    let routes = route_table::Routes::new()
        .route("/-/ping", get(api::user::ping))
        .route("/-/openapi.json", get(openapi::document))
        .route("/-/health/live", get(api::user::live))
        .route("/-/health/ready", get(api::user::ready))
        .route("/-/whoami", get(api::user::whoami))
        .route(
            "/-/user/{id}",
            put(api::user::login).get(api::user::user_doc),
        )
        .route("/-/user/{id}/-rev/{rev}", put(api::user::login_rev))
        .route("/-/user/token/{token}", delete(api::user::logout))
        .route("/-/v1/login", post(api::user::web_login))
        .route("/-/v1/done", get(api::user::web_login_done))
        .merge(web::routes())
        .route(
            "/-/npm/v1/tokens",
            get(api::tokens::list).post(api::tokens::create),
        )
        .route("/-/npm/v1/tokens/token/{key}", delete(api::tokens::revoke))
        .route(
            "/-/npm/v1/user",
            get(api::profile::get).post(api::profile::update),
        )
        .route("/-/auth/verify", any(api::verify::verify))
        .map_router(|router| {
            router
                .fallback(proxy::forward)
                .method_not_allowed_fallback(method_not_allowed)
        });
    // The observe layer runs the gate for every route but this one.
    match state.config.metrics_path.as_str() {
        "" => routes,
        path => routes.route(path, get(metrics::endpoint).fallback(method_not_allowed)),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("This endpoint does not accept that method.".into())
}
