//! Reverse-proxy mode: registry requests the gate allowed are forwarded to the upstream
//! registry, bodies streaming both ways. The client's credentials never reach the upstream,
//! and tarball URLs in package documents are rewritten to point at tokengate.

use crate::auth::{Decision, Gated};
use crate::config::{Config, UpstreamConfig};
use crate::error::ApiError;
use crate::policy;
use crate::registry_path::{Operation, Route};
use crate::store::TokenRecord;
use crate::AppState;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderName};
use axum::http::uri::{Authority, PathAndQuery};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::time::Duration;

/// Package documents larger than this are passed through without rewriting.
const MAX_REWRITTEN_DOCUMENT: usize = 64 * 1024 * 1024;

/// Headers that belong to one connection, not to the request (RFC 9110 §7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Client headers the upstream must not see: credentials; forwarding headers that only
/// tokengate may set; headers some servers and frameworks take as another method or path than
/// the request line's (the gate checked the request line, so honouring them would be a way
/// past it); and the forward-auth inputs, which name an original request.
const NOT_FORWARDED: [&str; 23] = [
    "authorization",
    "npm-otp",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-forwarded-server",
    "x-forwarded-user",
    "x-real-ip",
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-method",
    "x-original-uri",
    "x-forwarded-method",
    "x-forwarded-uri",
    "x-auth-user",
    "x-auth-token-key",
];

pub struct Upstream {
    client: Client<HttpConnector, Body>,
    authority: Authority,
    /// The upstream's path prefix without a trailing slash (often empty).
    prefix: String,
    authorization: Option<HeaderValue>,
    timeout: Duration,
}

impl Upstream {
    /// The upstream of a validated configuration; `None` when proxying is off.
    pub fn from_config(config: &UpstreamConfig) -> Option<Upstream> {
        if config.url.is_empty() {
            return None;
        }
        let uri: Uri = config.url.parse().expect("validated upstream.url");
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(config.connect_timeout_secs)));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Some(Upstream {
            client,
            authority: uri.authority().expect("validated upstream.url").clone(),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            authorization: (!config.authorization.is_empty())
                .then(|| HeaderValue::from_str(&config.authorization).expect("validated")),
            timeout: Duration::from_secs(config.timeout_secs),
        })
    }

    fn target(&self, original: &Uri) -> Result<Uri, ApiError> {
        let path_and_query = original
            .path_and_query()
            .map(PathAndQuery::as_str)
            .unwrap_or("/");
        Uri::builder()
            .scheme("http")
            .authority(self.authority.clone())
            .path_and_query(format!("{}{path_and_query}", self.prefix))
            .build()
            .map_err(|_| ApiError::bad_request("The request path cannot be forwarded."))
    }
}

/// The fallback route: forwards registry requests when an upstream is configured.
pub async fn forward(State(state): State<AppState>, mut req: Request) -> Response {
    let gated = req.extensions_mut().remove::<Gated>();
    let Some(upstream) = state.upstream.clone() else {
        return ApiError::not_found("Not found: this registry has no such endpoint.")
            .into_response();
    };
    let Some(gated) = gated.filter(|g| g.route.op.is_registry()) else {
        return ApiError::not_found("Not found: this registry has no such endpoint.")
            .into_response();
    };
    match forward_checked(&state, &upstream, &gated, req).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn forward_checked(
    state: &AppState,
    upstream: &Upstream,
    gated: &Gated,
    req: Request,
) -> Result<Response, ApiError> {
    let route = &gated.route;
    let user = match &gated.decision {
        Decision::Allowed(principal) => Some(principal.user.name.clone()),
        _ => None,
    };
    // A token limited to some packages sees only those in a search answer.
    let search_for = match &gated.decision {
        Decision::Allowed(principal) if route.op == Operation::Search => {
            policy::search_filter(&principal.credential).cloned()
        }
        _ => None,
    };
    let client = gated.client.to_string();
    let (mut parts, body) = req.into_parts();
    let public = public_base(&state.config, &parts.headers);
    let original_host = parts.headers.get(header::HOST).cloned();
    let rewrite = is_json_read(&parts.method, route);

    parts.uri = upstream.target(&parts.uri)?;
    let headers = &mut parts.headers;
    strip_hop_by_hop(headers);
    for name in NOT_FORWARDED {
        headers.remove(name);
    }
    headers.insert(
        header::HOST,
        HeaderValue::from_str(upstream.authority.as_str()).expect("an authority is a header"),
    );
    if let Some(auth) = &upstream.authorization {
        headers.insert(header::AUTHORIZATION, auth.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&client) {
        headers.insert("x-forwarded-for", v);
    }
    let proto = if public.starts_with("https:") {
        "https"
    } else {
        "http"
    };
    headers.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Some(host) = original_host {
        headers.insert("x-forwarded-host", host);
    }
    if let Some(v) = user.and_then(|u| HeaderValue::from_str(&u).ok()) {
        headers.insert("x-forwarded-user", v);
    }
    if rewrite {
        // The answer may be rewritten, so it must arrive uncompressed.
        headers.insert(
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        );
    }

    let sent = tokio::time::timeout(
        upstream.timeout,
        upstream.client.request(Request::from_parts(parts, body)),
    )
    .await;
    let response = match sent {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => {
            tracing::warn!(upstream = %upstream.authority, error = %e, "upstream request failed");
            return Err(ApiError::BadGateway(
                "The registry behind tokengate is unreachable or failed; try again shortly.".into(),
            ));
        }
        Err(_) => {
            return Err(ApiError::GatewayTimeout(format!(
                "The registry behind tokengate did not answer within {} seconds.",
                upstream.timeout.as_secs()
            )))
        }
    };
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains("json"));
    let small = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_none_or(|n| n <= MAX_REWRITTEN_DOCUMENT);
    let plain = !parts.headers.contains_key(header::CONTENT_ENCODING);
    let readable = parts.status == StatusCode::OK && json && small && plain;
    if search_for.is_some() && parts.status == StatusCode::OK && !readable {
        return Err(ApiError::BadGateway(
            "The registry behind tokengate sent a search answer tokengate cannot filter \
             (compressed, too large or not JSON)."
                .into(),
        ));
    }
    if !(rewrite && readable) {
        return Ok(Response::from_parts(parts, Body::new(body)));
    }
    let limited = http_body_util::Limited::new(body, MAX_REWRITTEN_DOCUMENT);
    let bytes = limited
        .collect()
        .await
        .map_err(|_| {
            ApiError::BadGateway(
                "The registry behind tokengate sent an unreadable document.".into(),
            )
        })?
        .to_bytes();
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(mut doc) => {
            rewrite_upstream_urls(&mut doc, upstream, &public);
            if let Some(token) = &search_for {
                filter_search(&mut doc, token);
            }
            parts.headers.remove(header::CONTENT_LENGTH);
            Body::from(serde_json::to_vec(&doc).expect("JSON serializes"))
        }
        // A search answer that cannot be filtered is not passed on.
        Err(_) if search_for.is_some() => {
            return Err(ApiError::BadGateway(
                "The registry behind tokengate sent a search answer that is not JSON.".into(),
            ))
        }
        Err(_) => Body::from(bytes),
    };
    Ok(Response::from_parts(parts, body))
}

/// Reads whose JSON answers can carry the upstream's own URLs: package documents (tarball
/// URLs), search answers, and any other read but a tarball download.
fn is_json_read(method: &Method, route: &Route) -> bool {
    method == Method::GET && route.op.is_registry_read() && route.op != Operation::TarballDownload
}

/// The URL clients reach tokengate by, without a trailing slash.
pub(crate) fn public_base(config: &Config, headers: &HeaderMap) -> String {
    if !config.public_url.is_empty() {
        return config.public_url.trim_end_matches('/').to_owned();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| h.parse::<Authority>().is_ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Points every string of `doc` that is a URL of the upstream (tarball URLs in package
/// documents, links in search and other answers) at `public` instead: clients never learn the
/// upstream's address, and download through the gate.
fn rewrite_upstream_urls(doc: &mut Value, upstream: &Upstream, public: &str) {
    match doc {
        Value::String(text) => {
            if let Some(rewritten) = upstream_url_at(text, upstream, public) {
                *text = rewritten;
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_upstream_urls(item, upstream, public);
            }
        }
        Value::Object(fields) => {
            for value in fields.values_mut() {
                rewrite_upstream_urls(value, upstream, public);
            }
        }
        _ => {}
    }
}

/// `text` with `public` in place of the upstream's scheme, authority and prefix, when `text`
/// is an http(s) URL of the upstream.
fn upstream_url_at(text: &str, upstream: &Upstream, public: &str) -> Option<String> {
    // By bytes first: most strings of a document are not URLs, and parsing each would cost.
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"))?
        .strip_prefix(upstream.authority.as_str())?;
    if !(rest.is_empty() || rest.starts_with(['/', '?'])) {
        return None;
    }
    let url = text.parse::<Uri>().ok()?;
    if url.authority() != Some(&upstream.authority) {
        return None;
    }
    let path = url
        .path_and_query()
        .map(PathAndQuery::as_str)
        .unwrap_or("/");
    let rest = path.strip_prefix(upstream.prefix.as_str())?;
    if !(rest.is_empty() || rest.starts_with(['/', '?'])) {
        return None;
    }
    Some(format!("{public}{rest}"))
}

/// Keeps in a search answer (`{"objects": [{"package": {"name": …}}], "total": N}`) only the
/// packages `token` may read; an object without a name is dropped too.
fn filter_search(doc: &mut Value, token: &TokenRecord) {
    let Some(objects) = doc.get_mut("objects").and_then(Value::as_array_mut) else {
        return;
    };
    objects.retain(|object| {
        object
            .pointer("/package/name")
            .and_then(Value::as_str)
            .is_some_and(|name| policy::may_read(token, name))
    });
    let kept = objects.len();
    if let Some(total) = doc.get_mut("total") {
        *total = Value::from(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn upstream(url: &str) -> Upstream {
        Upstream::from_config(&UpstreamConfig {
            url: url.into(),
            ..UpstreamConfig::default()
        })
        .unwrap()
    }

    #[tokio::test]
    async fn tarball_urls_of_the_upstream_point_at_the_gate() {
        let up = upstream("http://127.0.0.1:4873/registry/");
        let mut doc = json!({
            "name": "@acme/x",
            "versions": {
                "1.0.0": {"dist": {"tarball": "http://127.0.0.1:4873/registry/@acme/x/-/x-1.0.0.tgz"}},
                "1.0.1": {"dist": {"tarball": "https://127.0.0.1:4873/registry/@acme/x/-/x-1.0.1.tgz"}},
                "2.0.0": {"dist": {"tarball": "https://cdn.example/@acme/x/-/x-2.0.0.tgz"}},
                "3.0.0": {"dist": {}}
            }
        });
        rewrite_upstream_urls(&mut doc, &up, "https://npm.example.com/npm");
        let v = &doc["versions"];
        assert_eq!(
            v["1.0.0"]["dist"]["tarball"],
            "https://npm.example.com/npm/@acme/x/-/x-1.0.0.tgz"
        );
        assert_eq!(
            v["1.0.1"]["dist"]["tarball"],
            "https://npm.example.com/npm/@acme/x/-/x-1.0.1.tgz"
        );
        assert_eq!(
            v["2.0.0"]["dist"]["tarball"],
            "https://cdn.example/@acme/x/-/x-2.0.0.tgz"
        );
    }

    #[tokio::test]
    async fn forwarded_paths_keep_the_query_and_add_the_prefix() {
        let up = upstream("http://10.0.0.5:4873/reg");
        let uri: Uri = "/@acme%2fx?write=true".parse().unwrap();
        assert_eq!(
            up.target(&uri).unwrap().to_string(),
            "http://10.0.0.5:4873/reg/@acme%2fx?write=true"
        );
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("accept", HeaderValue::from_static("*/*"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
    }
}
