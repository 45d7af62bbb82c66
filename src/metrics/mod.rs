//! Prometheus metrics: requests by route and status, their latency, authentication outcomes and
//! the database pool, in the text format at `metrics_path`.
//!
//! Counters live in one process-wide registry, so [`auth_outcome`] can be called from anywhere
//! without the state. Labels are bounded: routes are the matched route templates (never raw
//! paths, which may carry tokens), methods outside the standard ones count as `other`. The
//! counts every request writes are kept per thread ([`per_thread`]).

mod per_thread;

use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus::core::Collector;
use prometheus::{IntCounter, IntGauge, Opts, Registry};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

/// Database pool size and idle connections, read when the metrics are scraped.
pub type PoolStatsFn = Arc<dyn Fn() -> (u32, usize) + Send + Sync>;

/// Route label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// How a request's authentication ended, counted by `tokengate_auth_outcomes_total{outcome}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AuthOutcome {
    /// Authenticated and allowed.
    Ok,
    /// No credentials where they are required.
    NoCredentials,
    /// A well-formed token that is not in the database.
    UnknownToken,
    /// A token or `Authorization` header that does not parse.
    Malformed,
    Expired,
    Revoked,
    /// The user's account is disabled.
    Disabled,
    /// The client address is outside the token's CIDR list.
    Cidr,
    /// A read-only token asked to write.
    ReadOnly,
    /// The credential may not perform the operation (other than read-only).
    Forbidden,
    /// A one-time password was needed and missing or wrong.
    OtpRequired,
    /// Refused before checking because of too many failures.
    RateLimited,
    WrongPassword,
}

impl AuthOutcome {
    /// Every outcome, so each is exported (as 0) before it first happens.
    pub const ALL: [AuthOutcome; 13] = [
        AuthOutcome::Ok,
        AuthOutcome::NoCredentials,
        AuthOutcome::UnknownToken,
        AuthOutcome::Malformed,
        AuthOutcome::Expired,
        AuthOutcome::Revoked,
        AuthOutcome::Disabled,
        AuthOutcome::Cidr,
        AuthOutcome::ReadOnly,
        AuthOutcome::Forbidden,
        AuthOutcome::OtpRequired,
        AuthOutcome::RateLimited,
        AuthOutcome::WrongPassword,
    ];

    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthOutcome::Ok => "ok",
            AuthOutcome::NoCredentials => "no_credentials",
            AuthOutcome::UnknownToken => "unknown_token",
            AuthOutcome::Malformed => "malformed",
            AuthOutcome::Expired => "expired",
            AuthOutcome::Revoked => "revoked",
            AuthOutcome::Disabled => "disabled",
            AuthOutcome::Cidr => "cidr",
            AuthOutcome::ReadOnly => "read_only",
            AuthOutcome::Forbidden => "forbidden",
            AuthOutcome::OtpRequired => "otp_required",
            AuthOutcome::RateLimited => "rate_limited",
            AuthOutcome::WrongPassword => "wrong_password",
        }
    }
}

struct Metrics {
    registry: Registry,
    open_connections: IntGauge,
    refused_connections: IntCounter,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let info = IntGauge::with_opts(
            Opts::new(
                "tokengate_build_info",
                "The running tokengate version; always 1.",
            )
            .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("valid metric");
        info.set(1);
        let open_connections =
            IntGauge::new("tokengate_open_connections", "Client connections open now.")
                .expect("valid metric");
        let refused_connections = IntCounter::new(
            "tokengate_refused_connections_total",
            "Client connections answered 503 and closed because max_connections were open.",
        )
        .expect("valid metric");
        for collector in [
            Box::new(per_thread::Collected::new()) as Box<dyn Collector>,
            Box::new(info),
            Box::new(open_connections.clone()),
            Box::new(refused_connections.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Metrics {
            registry,
            open_connections,
            refused_connections,
        }
    }
}

/// Counts one connection refused for being over `max_connections`.
pub fn connection_refused() {
    METRICS.refused_connections.inc();
}

/// Counts a client connection as open for as long as it lives.
pub struct OpenConnection(());

impl OpenConnection {
    pub fn count() -> OpenConnection {
        METRICS.open_connections.inc();
        OpenConnection(())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        METRICS.open_connections.dec();
    }
}

/// Counts one authentication outcome.
pub fn auth_outcome(reason: AuthOutcome) {
    per_thread::outcome(reason);
}

/// Counts one answered request. `route` is the matched route template, `None` when no route
/// matched.
pub fn observe_request(method: &Method, route: Option<&str>, status: StatusCode, took: Duration) {
    per_thread::request(
        method_label(method),
        route.unwrap_or(UNMATCHED_ROUTE),
        status.as_u16(),
        took,
    );
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Every metric in the Prometheus text format, with the pool gauges when `pool` is given.
pub fn render(pool: Option<(u32, usize)>) -> String {
    let mut families = METRICS.registry.gather();
    if let Some((size, idle)) = pool {
        for (name, help, value) in [
            (
                "tokengate_db_pool_connections",
                "Database connections open in the pool (idle and in use).",
                i64::from(size),
            ),
            (
                "tokengate_db_pool_idle_connections",
                "Database connections open in the pool and idle.",
                i64::try_from(idle).unwrap_or(i64::MAX),
            ),
        ] {
            let gauge = IntGauge::new(name, help).expect("valid metric");
            gauge.set(value);
            families.extend(gauge.collect());
        }
    }
    prometheus::TextEncoder::new()
        .encode_to_string(&families)
        .expect("metrics encode as text")
}

/// `GET metrics_path`: the metrics, for Prometheus to scrape. Mounted outside the auth gate.
pub async fn endpoint(State(state): State<AppState>) -> Response {
    let pool = state.pool_stats.as_ref().map(|stats| stats());
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(prometheus::TEXT_FORMAT),
        )],
        render(pool),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_are_listed_in_declaration_order() {
        for (at, outcome) in AuthOutcome::ALL.iter().enumerate() {
            assert_eq!(*outcome as usize, at, "{outcome:?}");
        }
    }

    /// The value of the sample line that starts with `series` (name and labels, exactly).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map(|v| v.parse().unwrap())
    }

    #[test]
    fn auth_outcomes_are_counted_by_reason_and_all_are_exported() {
        let series = |o: AuthOutcome| {
            format!(
                "tokengate_auth_outcomes_total{{outcome=\"{}\"}}",
                o.as_str()
            )
        };
        let before = render(None);
        for outcome in AuthOutcome::ALL {
            assert!(
                sample(&before, &series(outcome)).is_some(),
                "{outcome:?}:\n{before}"
            );
        }
        auth_outcome(AuthOutcome::Cidr);
        auth_outcome(AuthOutcome::Cidr);
        let after = render(None);
        let cidr = series(AuthOutcome::Cidr);
        // Other tests in this process may count too; this one added two.
        assert!(sample(&after, &cidr).unwrap() - sample(&before, &cidr).unwrap() >= 2.0);
    }

    #[test]
    fn requests_are_labelled_by_route_template_and_status() {
        let route = "/-/npm/v1/tokens/token/{key}";
        observe_request(
            &Method::DELETE,
            Some(route),
            StatusCode::NO_CONTENT,
            Duration::from_millis(3),
        );
        observe_request(
            &Method::from_bytes(b"BREW").unwrap(),
            None,
            StatusCode::NOT_FOUND,
            Duration::from_millis(1),
        );
        let text = render(None);
        let counted = format!(
            "tokengate_http_requests_total{{method=\"DELETE\",route=\"{route}\",status=\"204\"}}"
        );
        assert!(sample(&text, &counted).unwrap() >= 1.0, "{text}");
        let odd =
            "tokengate_http_requests_total{method=\"other\",route=\"unmatched\",status=\"404\"}";
        assert!(sample(&text, odd).unwrap() >= 1.0, "{text}");
        let count = format!(
            "tokengate_http_request_duration_seconds_count{{method=\"DELETE\",route=\"{route}\"}}"
        );
        assert!(sample(&text, &count).unwrap() >= 1.0, "{text}");
    }

    #[test]
    fn counts_of_every_thread_are_summed_into_cumulative_buckets() {
        let route = "/-/test/summed-over-threads";
        std::thread::scope(|s| {
            for took in [2, 20, 20_000] {
                s.spawn(move || {
                    observe_request(
                        &Method::GET,
                        Some(route),
                        StatusCode::OK,
                        Duration::from_millis(took),
                    )
                });
            }
        });
        let text = render(None);
        let series = |name: &str, extra: &str| {
            let labels = format!("method=\"GET\",route=\"{route}\"{extra}");
            sample(&text, &format!("{name}{{{labels}}}"))
        };
        let requests = "tokengate_http_requests_total";
        assert_eq!(series(requests, ",status=\"200\""), Some(3.0), "{text}");
        let buckets = "tokengate_http_request_duration_seconds_bucket";
        assert_eq!(series(buckets, ",le=\"0.005\""), Some(1.0), "{text}");
        assert_eq!(series(buckets, ",le=\"0.025\""), Some(2.0), "{text}");
        assert_eq!(series(buckets, ",le=\"10\""), Some(2.0), "{text}");
        assert_eq!(series(buckets, ",le=\"+Inf\""), Some(3.0), "{text}");
        let count = "tokengate_http_request_duration_seconds_count";
        assert_eq!(series(count, ""), Some(3.0), "{text}");
        let sum = series("tokengate_http_request_duration_seconds_sum", "").unwrap();
        assert!((sum - 20.022).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn pool_gauges_appear_only_when_the_pool_is_known() {
        assert!(!render(None).contains("tokengate_db_pool_connections"));
        let text = render(Some((4, 3)));
        assert_eq!(sample(&text, "tokengate_db_pool_connections"), Some(4.0));
        assert_eq!(
            sample(&text, "tokengate_db_pool_idle_connections"),
            Some(3.0)
        );
    }
}
