//! `/-/auth/verify`: forward authentication for a proxy in front of the registry (nginx
//! `auth_request`, Traefik `forwardAuth`, Envoy's HTTP `ext_authz`). The proxy sends the
//! original request's credentials, method and URI; the answer is the gate's decision.

use crate::auth::{self, ClientAddr, Decision};
use crate::error::{ApiError, ErrorBody};
use crate::openapi::OtpHeader;
use crate::registry_path;
use crate::AppState;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// Where proxies put the original method and URI: Traefik's names first, then the ones
/// nginx configurations usually set. Names as constants: a lookup by a string parses the name
/// each time.
static METHOD_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-method"),
    HeaderName::from_static("x-original-method"),
];
static URI_HEADERS: [HeaderName; 2] = [
    HeaderName::from_static("x-forwarded-uri"),
    HeaderName::from_static("x-original-uri"),
];

/// The caller's name on success.
static USER_HEADER: HeaderName = HeaderName::from_static("x-auth-user");
/// A short, non-secret id of the token used (the start of its SHA-512 key).
static KEY_HEADER: HeaderName = HeaderName::from_static("x-auth-token-key");
/// On refusal, the message as a JSON string, for proxies that write their own error body.
static ERROR_HEADER: HeaderName = HeaderName::from_static("x-auth-error");

fn first<'a>(headers: &'a HeaderMap, names: &[HeaderName]) -> Option<&'a str> {
    names
        .iter()
        .find_map(|n| headers.get(n).and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Headers a proxy sends with the original request's method and URI (Traefik's names, or the
/// ones nginx configurations usually set).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct Original {
    /// The original method (GET when absent).
    #[param(rename = "X-Forwarded-Method", required = false)]
    forwarded_method: String,
    /// The original URI; this or `X-Original-URI` is required.
    #[param(rename = "X-Forwarded-Uri", required = false)]
    forwarded_uri: String,
    #[param(rename = "X-Original-Method", required = false)]
    original_method: String,
    #[param(rename = "X-Original-URI", required = false)]
    original_uri: String,
}

/// Any method: the proxy's own request method does not matter.
#[utoipa::path(
    get,
    path = "/-/auth/verify",
    tag = "forward-auth",
    summary = "Forward authentication (any method)",
    description = "Decides whether the original request (method and URI in the headers, \
        credentials in `Authorization` and `npm-otp`) may reach the registry. Any HTTP method \
        is answered the same.",
    params(Original, OtpHeader),
    responses(
        (status = 200, description = "Allowed. No body.", headers(
            ("X-Auth-User" = String, description = "The caller's name, when authenticated."),
            ("X-Auth-Token-Key" = String, description = "A short, non-secret id of the token used."),
        )),
        (status = 400, description = "The original URI is missing, the method is not one, or \
            the path has `.`/`..` segments.", body = ErrorBody,
            headers(("X-Auth-Error" = String, description = "The message as a JSON string."))),
        (status = 401, description = "No valid credentials, or a one-time password is needed.",
            body = ErrorBody, headers(
                ("WWW-Authenticate" = String),
                ("X-Auth-Error" = String, description = "The message as a JSON string."),
            )),
        (status = 403, description = "The credential may not do this, or the path belongs to \
            tokengate itself.", body = ErrorBody,
            headers(("X-Auth-Error" = String, description = "The message as a JSON string."))),
        (status = 429, description = "Too many failed password or one-time password attempts.",
            body = ErrorBody, headers(
                ("Retry-After" = i64),
                ("X-Auth-Error" = String, description = "The message as a JSON string."),
            )),
        (status = 503, description = "The database is unavailable, or the request took too long.",
            body = ErrorBody,
            headers(("X-Auth-Error" = String, description = "The message as a JSON string."))),
    )
)]
pub async fn verify(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    // The whole request rather than a `HeaderMap`, which would be a copy of the headers.
    req: Request,
) -> Response {
    match check(&state, client, req.headers()).await {
        Ok(response) => response,
        Err(e) => {
            let message = serde_json::to_string(&e.to_string()).unwrap_or_default();
            let mut response = e.into_response();
            if let Ok(v) = HeaderValue::from_str(&message) {
                response.headers_mut().insert(&ERROR_HEADER, v);
            }
            response
        }
    }
}

async fn check(
    state: &AppState,
    client: std::net::IpAddr,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let method = match first(headers, &METHOD_HEADERS) {
        Some(m) => m.parse::<Method>().map_err(|_| {
            ApiError::bad_request("X-Forwarded-Method / X-Original-Method is not an HTTP method.")
        })?,
        None => Method::GET,
    };
    let uri = first(headers, &URI_HEADERS).ok_or_else(|| {
        ApiError::bad_request(
            "Send the original request's URI in X-Forwarded-Uri (Traefik) or X-Original-URI \
             (nginx: proxy_set_header X-Original-URI $request_uri).",
        )
    })?;
    let route = registry_path::route(&method, uri, &state.config.registry_path_prefix);
    if !route.op.is_registry() && route.op != registry_path::Operation::DotSegments {
        // tokengate's own pages and endpoints are never forwarded to the registry: a proxy that
        // asks about them routes them wrongly.
        return Err(ApiError::forbidden(
            "This path belongs to tokengate itself: route it to tokengate, not to the registry \
             (see docs/nginx.conf).",
        ));
    }
    let decision = auth::decide(state, &route, headers, client).await?;
    let mut response = StatusCode::OK.into_response();
    if let Decision::Allowed(principal) = decision {
        let out = response.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&principal.user.name) {
            out.insert(&USER_HEADER, v);
        }
        if let Some(key) = principal.token_key() {
            out.insert(
                &KEY_HEADER,
                HeaderValue::from_str(key.short()).expect("hex is a header value"),
            );
        }
    }
    Ok(response)
}
