//! The one layer every request passes: its id (the client's when short and plain, else a new
//! UUID), the request deadline, a panic answered 500, the gate ([`crate::auth::gate`]), the
//! access log line and the request metrics. One hand-written service instead of a stack of
//! `from_fn` layers: each of those clones the boxed route and boxes a future per request, which
//! showed in the profile of the per-request check (docs/performance.md). For the same reason
//! it wraps the whole router ([`crate::service`]) rather than each route, and takes the route
//! template for the metrics from [`crate::route_table`].

use crate::error::ApiError;
use crate::{auth, metrics, registry_path, AppState, LoggedCaller, REQUEST_ID_HEADER};
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use futures_util::future::{BoxFuture, FutureExt};
use std::convert::Infallible;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tower::{Layer, Service};
use tracing::Instrument;

/// Settings of [`Observe`].
#[derive(Clone)]
pub struct ObserveLayer {
    /// Runs the gate before every route but the metrics endpoint; `None`: no gate (tests).
    pub gate: Option<AppState>,
    /// Requests taking longer are answered 503.
    pub deadline: Duration,
    /// Registry requests are forwarded upstream: they have the upstream's own timeout instead
    /// (publishes upload for a while).
    pub forwarding: bool,
    /// Requests whose head (request line and headers, [`crate::head_size`]) is larger are
    /// answered 431 before the gate.
    pub max_head_bytes: usize,
    /// The router's route templates, for the metrics' `route` label.
    pub templates: crate::route_table::Templates,
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            settings: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    settings: ObserveLayer,
}

impl<S> Service<Request> for Observe<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let started = Instant::now();
        let id = request_id(&req);
        let method = req.method().clone();
        // Only the access log needs the path afterwards; a copy costs an allocation.
        let logged_uri = tracing::enabled!(tracing::Level::INFO).then(|| req.uri().clone());
        let route = self.settings.templates.of(req.uri().path());
        // Scrapers have no npm credentials, and the metrics hold no secrets.
        let gate = self
            .settings
            .gate
            .clone()
            .filter(|state| route.as_deref() != Some(state.config.metrics_path.as_str()));
        // What the request is for, once, for the gate and the deadline.
        let operation = (gate.is_some() || self.settings.forwarding)
            .then(|| registry_path::route(&method, req.uri().path(), ""));
        let forwarded =
            self.settings.forwarding && operation.as_ref().is_some_and(|r| r.op.is_registry());
        let deadline = (!forwarded).then_some(self.settings.deadline);
        let head_bytes = crate::head_size::of(&req);
        let max_head_bytes = self.settings.max_head_bytes;
        if forwarded {
            // The registry behind logs the same id (the client's, or the one replacing it).
            // Only then: no handler reads it, and one more header can make the map grow.
            req.headers_mut().insert(REQUEST_ID_HEADER, id.clone());
        }
        // The ready service answers this request; a fresh clone waits for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let span = tracing::info_span!("request", id = id.to_str().unwrap_or_default());
        // One async block, built from small values: the futures of the gate and the handler
        // start inside it, so no large future is moved on the way (each move is a copy of its
        // whole state, which showed in the profile).
        Box::pin(
            async move {
                let next = |req| async move {
                    let Ok(response) = inner.call(req).await;
                    response
                };
                let handled = async {
                    if head_bytes > max_head_bytes {
                        return ApiError::HeadersTooLarge(format!(
                            "The request head (request line and headers) is {head_bytes} bytes; \
                             this server accepts at most {max_head_bytes} (max_header_bytes)."
                        ))
                        .into_response();
                    }
                    match (&gate, operation) {
                        (Some(state), Some(operation)) => {
                            auth::gate(state, req, operation, next).await
                        }
                        _ => next(req).await,
                    }
                };
                let mut handled = std::pin::pin!(AssertUnwindSafe(handled).catch_unwind());
                // Most checks answer without waiting (the token is cached): a timer, armed and
                // cleared for each of them, showed in the profile, so it is armed only when
                // the first poll has to wait.
                let first = std::future::poll_fn(|cx| Poll::Ready(handled.as_mut().poll(cx))).await;
                let outcome = match (first, deadline) {
                    (Poll::Ready(done), _) => Some(done),
                    (Poll::Pending, Some(limit)) => {
                        let until = tokio::time::Instant::from_std(started) + limit;
                        tokio::time::timeout_at(until, handled).await.ok()
                    }
                    (Poll::Pending, None) => Some(handled.await),
                };
                let mut response = match outcome {
                    Some(Ok(response)) => response,
                    Some(Err(_panic)) => {
                        ApiError::Internal(anyhow::anyhow!("a handler panicked")).into_response()
                    }
                    None => ApiError::Unavailable("The request took too long; try again.".into())
                        .into_response(),
                };
                let took = started.elapsed();
                let status = response.status();
                metrics::observe_request(&method, route.as_deref(), status, took);
                if let Some(uri) = logged_uri {
                    let caller = response.extensions().get::<LoggedCaller>();
                    tracing::info!(
                        %method,
                        path = registry_path::redact_path(uri.path()),
                        status = status.as_u16(),
                        ms = took.as_millis() as u64,
                        request_id = id.to_str().unwrap_or_default(),
                        user = caller.map(|c| c.user.as_str()),
                        key_id = caller.and_then(|c| c.key_id.as_deref()),
                        "request"
                    );
                }
                response.headers_mut().insert(REQUEST_ID_HEADER, id);
                Ok(response)
            }
            .instrument(span),
        )
    }
}

/// The client's `x-request-id` when it sent exactly one that is short and plain (UUIDs, trace
/// ids, base64); otherwise a new UUID, so the logs never carry a client's long or odd text.
fn request_id(req: &Request) -> HeaderValue {
    let mut sent = req.headers().get_all(&REQUEST_ID_HEADER).iter();
    match (sent.next(), sent.next()) {
        (Some(id), None) if fit_request_id(id.as_bytes()) => id.clone(),
        _ => {
            let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
            let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut text);
            HeaderValue::from_str(text).expect("a UUID is a valid header value")
        }
    }
}

/// Whether a client's `x-request-id` may be kept: 1 to 64 plain characters.
pub fn fit_request_id(id: &[u8]) -> bool {
    (1..=64).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+=/@".contains(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::StatusCode;
    use axum::routing::{delete, get};
    use axum::Router;
    use std::sync::{Arc, Mutex};
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

    /// The layer without the gate (these tests have no application state) or an upstream.
    fn ungated(deadline: Duration) -> ObserveLayer {
        ObserveLayer {
            gate: None,
            deadline,
            forwarding: false,
            max_head_bytes: 64 * 1024,
            templates: Default::default(),
        }
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
        let router = Router::new()
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
            .route("/-/ping", get(|| async { "{}" }))
            .layer(ungated(Duration::from_secs(30)));
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
            .map(|a| a.headers()[&REQUEST_ID_HEADER].to_str().unwrap())
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
    fn a_request_past_the_deadline_is_answered_503_and_a_quick_one_is_not() {
        let router = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late"
                }),
            )
            .route(
                "/waits-briefly",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    "in time"
                }),
            )
            .route("/-/ping", get(|| async { "{}" }))
            .layer(ungated(Duration::from_millis(300)));
        // Under a subscriber like the access-log test's: tracing caches per call site whether
        // anyone listens, and a test without one running at the same time could cache "no".
        let mut answers = Vec::new();
        let mut took = Duration::ZERO;
        let lines = access_lines(|| {
            let started = Instant::now();
            answers.push(call(&router, "GET", "/slow", None));
            took = started.elapsed();
            answers.push(call(&router, "GET", "/waits-briefly", None));
            answers.push(call(&router, "GET", "/-/ping", None));
        });
        let statuses: Vec<StatusCode> = answers.iter().map(|a| a.status()).collect();
        assert_eq!(
            statuses,
            [
                StatusCode::SERVICE_UNAVAILABLE,
                StatusCode::OK,
                StatusCode::OK
            ]
        );
        assert!(
            took >= Duration::from_millis(300) && took < Duration::from_secs(2),
            "{took:?}"
        );
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert_eq!(lines[0]["status"], 503);
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
