//! tokengate: an npm-compatible access-token service.

pub mod admin;
pub mod api;
pub mod attempts;
pub mod audit;
pub mod auth;
pub mod client_ip;
pub mod config;
pub mod error;
pub mod keyring;
pub mod metrics;
pub mod names;
pub mod password;
pub mod policy;
pub mod probe;
pub mod proxy;
pub mod rate_limit;
pub mod registry_path;
pub mod second_factor;
pub mod store;
pub mod token;
pub mod token_request;
pub mod token_usage;
pub mod totp;
pub mod web;

use crate::config::Config;
use crate::error::ApiError;
use crate::keyring::KeyRing;
use crate::rate_limit::FailureLimiter;
use crate::store::Store;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, delete, get, post, put};
use axum::Router;
use std::future::{Future, IntoFuture};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tracing::Instrument;

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
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The whole HTTP application; shared by `main` and the tests.
pub fn app(state: AppState) -> Router {
    let limit = state.config.max_body_bytes;
    let router = Router::new()
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
        .fallback(proxy::forward)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), auth::gate));
    // Added after the gate's layer, so the gate does not run for it: scrapers have no npm
    // credentials, and the metrics hold no secrets (routes are templates, not paths).
    let router = match state.config.metrics_path.as_str() {
        "" => router,
        path => router.route(path, get(metrics::endpoint).fallback(method_not_allowed)),
    };
    let router = router
        .layer(DefaultBodyLimit::max(limit))
        .layer(middleware::from_fn_with_state(state.clone(), deadline));
    observed(router).with_state(state)
}

/// The layers every request passes first (outermost last): its id, taken from the client or
/// made, is set before the access log and the metrics see the request, and a panic is answered
/// 500 inside them, so it is logged and counted like any answer.
fn observed<S: Clone + Send + Sync + 'static>(router: Router<S>) -> Router<S> {
    router
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("a handler panicked")).into_response()
        }))
        .layer(middleware::from_fn(access_log))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(middleware::from_fn(drop_unfit_request_id))
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed("This endpoint does not accept that method.".into())
}

/// Answers 503 when a request takes longer than `request_timeout_secs` (forwarded registry
/// requests have the upstream's own timeout instead: publishes upload for a while).
async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let forwarded = state.upstream.is_some()
        && registry_path::classify(req.method(), req.uri().path()).is_registry();
    if forwarded {
        return next.run(req).await;
    }
    let limit = Duration::from_secs(state.config.request_timeout_secs);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::Unavailable("The request took too long; try again.".into()).into_response()
        }
    }
}

/// A client's `x-request-id` is kept only when it is one short value of plain characters
/// (UUIDs, trace ids, base64); otherwise it is dropped and a fresh id is made, so the logs
/// never carry a client's long or odd text.
async fn drop_unfit_request_id(mut req: Request, next: Next) -> Response {
    let sent = req.headers().get_all(REQUEST_ID_HEADER);
    let mut values = sent.iter();
    let fit = match (values.next(), values.next()) {
        (None, _) => true,
        (Some(id), None) => fit_request_id(id.as_bytes()),
        (Some(_), Some(_)) => false,
    };
    if !fit {
        req.headers_mut().remove(REQUEST_ID_HEADER);
    }
    next.run(req).await
}

/// Whether a client's `x-request-id` may be kept: 1 to 64 plain characters.
pub fn fit_request_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+=/@".contains(b))
}

/// One log line per request, with its id and, when the gate identified one, its caller; and the
/// request metrics. The path is redacted (logout and revoke paths carry tokens); the metrics
/// use the route template instead. Log lines written while the request runs carry its id too.
async fn access_log(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = registry_path::redact_path(req.uri().path());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .and_then(|id| id.header_value().to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let span = tracing::info_span!("request", id = %request_id);
    let response = next.run(req).instrument(span).await;
    let took = started.elapsed();
    let status = response.status();
    metrics::observe_request(&method, route.as_deref(), status, took);
    let caller = response.extensions().get::<LoggedCaller>();
    tracing::info!(
        %method,
        path,
        status = status.as_u16(),
        ms = took.as_millis() as u64,
        request_id,
        user = caller.map(|c| c.user.as_str()),
        key_id = caller.and_then(|c| c.key_id.as_deref()),
        "request"
    );
    response
}

/// Serves `app` on an already-bound listener until `shutdown` completes. Then no connection is
/// accepted any more, and requests in flight get `shutdown_timeout_secs` to finish before this
/// returns anyway.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let grace = Duration::from_secs(state.config.shutdown_timeout_secs);
    let (signalled, on_signal) = tokio::sync::oneshot::channel::<()>();
    let signal = async move {
        shutdown.await;
        tracing::info!(
            "no longer accepting connections; waiting up to {}s for requests in flight",
            grace.as_secs()
        );
        let _ = signalled.send(());
    };
    let server = axum::serve(
        listener,
        app(state).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(signal)
    .into_future();
    let give_up = async move {
        if on_signal.await.is_err() {
            // The server stopped without a signal (an error); let its result win.
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result,
        () = give_up => {
            tracing::warn!(
                "requests still in flight {}s after the shutdown signal; stopping without them",
                grace.as_secs()
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use std::sync::Mutex;
    use tower::ServiceExt;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The fields of the access log lines written while `f` runs, with JSON logs.
    fn access_lines(f: impl FnOnce()) -> Vec<serde_json::Value> {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["fields"]["message"] == "request")
            .map(|v| v["fields"].clone())
            .collect()
    }

    fn call(router: &Router, method: &str, path: &str, id: Option<&str>) -> Response {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(id) = id {
            req = req.header(REQUEST_ID_HEADER, id);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(router.clone().oneshot(req.body(Body::empty()).unwrap()))
            .unwrap()
    }

    #[test]
    fn access_log_has_request_id_and_caller_and_no_token() {
        let router = observed(
            Router::new()
                .route(
                    "/-/npm/v1/tokens/token/{key}",
                    delete(|| async {
                        let mut r = StatusCode::NO_CONTENT.into_response();
                        r.extensions_mut().insert(LoggedCaller {
                            user: "alice".into(),
                            key_id: Some("5f2a9c1e".into()),
                        });
                        r
                    }),
                )
                .route("/-/ping", get(|| async { "{}" })),
        );
        let mut answers = Vec::new();
        let lines = access_lines(|| {
            answers.push(call(
                &router,
                "DELETE",
                "/-/npm/v1/tokens/token/npm_SECRETSECRETSECRET",
                Some("req-1"),
            ));
            answers.push(call(&router, "GET", "/-/ping", None));
            answers.push(call(&router, "GET", "/-/ping", Some("bad id\twith tab")));
        });
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let ids: Vec<&str> = answers
            .iter()
            .map(|a| a.headers()[REQUEST_ID_HEADER].to_str().unwrap())
            .collect();
        assert_eq!(ids[0], "req-1");
        assert!(uuid::Uuid::parse_str(ids[1]).is_ok(), "{}", ids[1]);
        assert!(uuid::Uuid::parse_str(ids[2]).is_ok(), "{}", ids[2]);
        for (line, id) in lines.iter().zip(&ids) {
            assert_eq!(line["request_id"], *id, "{line}");
        }
        assert_eq!(lines[0]["user"], "alice");
        assert_eq!(lines[0]["key_id"], "5f2a9c1e");
        assert_eq!(lines[0]["status"], 204);
        assert!(
            !lines[0].to_string().contains("SECRETSECRET"),
            "{}",
            lines[0]
        );
        assert!(lines[1].get("user").is_none() && lines[1].get("key_id").is_none());
    }

    #[test]
    fn only_short_plain_request_ids_are_taken_from_clients() {
        for ok in [
            "a",
            "0f8e2c1a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
            "Root=1-abc/x+y@z:1_2.3",
        ] {
            assert!(fit_request_id(ok.as_bytes()), "{ok}");
        }
        let long = "x".repeat(65);
        for bad in ["", long.as_str(), "a b", "a\"b", "a;b", "a\u{7f}", "é"] {
            assert!(!fit_request_id(bad.as_bytes()), "{bad:?}");
        }
    }
}
