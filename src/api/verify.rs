//! `/-/auth/verify`: forward authentication for a proxy in front of the registry (nginx
//! `auth_request`, Traefik `forwardAuth`). The proxy sends the original request's credentials,
//! method and URI; the answer is the gate's decision.

use crate::auth::{self, ClientAddr, Decision};
use crate::config::ForwardAuthHeaders;
use crate::error::{ApiError, ErrorBody};
use crate::openapi::OtpHeader;
use crate::AppState;
use crate::{policy, registry_path};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

/// The header pairs proxies put the original method and URI in. Names as constants: a lookup
/// by a string parses the name each time.
static NGINX: OriginalHeaders = OriginalHeaders {
    method: HeaderName::from_static("x-original-method"),
    uri: HeaderName::from_static("x-original-uri"),
    shown: ("X-Original-Method", "X-Original-URI"),
};
static TRAEFIK: OriginalHeaders = OriginalHeaders {
    method: HeaderName::from_static("x-forwarded-method"),
    uri: HeaderName::from_static("x-forwarded-uri"),
    shown: ("X-Forwarded-Method", "X-Forwarded-Uri"),
};

struct OriginalHeaders {
    method: HeaderName,
    uri: HeaderName,
    /// The names as the messages spell them.
    shown: (&'static str, &'static str),
}

/// The pair the configured proxy sets, and the pair it does not. A proxy passes the client's
/// own headers along with the ones it sets (nginx's `auth_request` passes them all), so only the
/// pair the operator named is the proxy's word; the other can only come from the client.
fn pairs(proxy: ForwardAuthHeaders) -> (&'static OriginalHeaders, &'static OriginalHeaders) {
    match proxy {
        ForwardAuthHeaders::Nginx => (&NGINX, &TRAEFIK),
        ForwardAuthHeaders::Traefik => (&TRAEFIK, &NGINX),
    }
}

/// The original method and URI of a verify request, read from the configured pair only.
fn original(proxy: ForwardAuthHeaders, headers: &HeaderMap) -> Result<(Method, &str), ApiError> {
    let (ours, other) = pairs(proxy);
    if headers.contains_key(&other.method) || headers.contains_key(&other.uri) {
        return Err(ApiError::bad_request(format!(
            "This request carries {} or {}, but forward_auth_headers = \"{}\" reads {} and {}: \
             the other pair can only come from the client. Clear it in the proxy (see \
             docs/nginx.conf and docs/traefik.yml), or set forward_auth_headers to the proxy in \
             use.",
            other.shown.0,
            other.shown.1,
            proxy.as_str(),
            ours.shown.0,
            ours.shown.1
        )));
    }
    let missing = || {
        ApiError::bad_request(format!(
            "Send the original request's method in {} and its URI in {} ({}).",
            ours.shown.0,
            ours.shown.1,
            match proxy {
                ForwardAuthHeaders::Nginx => {
                    "nginx: proxy_set_header X-Original-Method $request_method; \
                     proxy_set_header X-Original-URI $request_uri; see docs/nginx.conf"
                }
                ForwardAuthHeaders::Traefik =>
                    "Traefik's forwardAuth sets both; see docs/traefik.yml",
            }
        ))
    };
    let method = single(headers, &ours.method, ours.shown.0)?
        .ok_or_else(missing)?
        .parse::<Method>()
        .map_err(|_| ApiError::bad_request(format!("{} is not an HTTP method.", ours.shown.0)))?;
    let uri = single(headers, &ours.uri, ours.shown.1)?.ok_or_else(missing)?;
    Ok((method, uri))
}

/// The one value of a header, trimmed; `None` when absent or empty. Two values are refused:
/// which of them the registry would act on is not known.
fn single<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
    shown: &str,
) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::bad_request(format!(
            "{shown} was sent more than once; the proxy must send exactly one."
        )));
    }
    let value = value
        .to_str()
        .map_err(|_| ApiError::bad_request(format!("{shown} is not visible ASCII.")))?
        .trim();
    Ok((!value.is_empty()).then_some(value))
}

/// The caller's name on success.
static USER_HEADER: HeaderName = HeaderName::from_static("x-auth-user");
/// A short, non-secret id of the token used (the start of its SHA-512 key).
static KEY_HEADER: HeaderName = HeaderName::from_static("x-auth-token-key");
/// On refusal, the message as a JSON string, for proxies that write their own error body.
static ERROR_HEADER: HeaderName = HeaderName::from_static("x-auth-error");

/// Headers a proxy sends with the original request's method and URI: one pair, the one
/// `forward_auth_headers` names (nginx's by default).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct Original {
    /// The original method, with `forward_auth_headers = "nginx"` (the default).
    #[param(rename = "X-Original-Method", required = false)]
    original_method: String,
    /// The original URI, with `forward_auth_headers = "nginx"`.
    #[param(rename = "X-Original-URI", required = false)]
    original_uri: String,
    /// The original method, with `forward_auth_headers = "traefik"`.
    #[param(rename = "X-Forwarded-Method", required = false)]
    forwarded_method: String,
    /// The original URI, with `forward_auth_headers = "traefik"`.
    #[param(rename = "X-Forwarded-Uri", required = false)]
    forwarded_uri: String,
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
        (status = 400, description = "The original method or URI is missing or sent twice, \
            the header pair `forward_auth_headers` does not name is present, the method is not \
            one, or the path has `.`/`..` segments.", body = ErrorBody,
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
    let (method, uri) = original(state.config.forward_auth_headers, headers)?;
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
    if let Decision::Allowed(principal) = &decision {
        // In reverse-proxy mode the search answer is filtered to the token's packages; a proxy
        // in front passes the registry's answer whole, so it is refused instead.
        if route.op == registry_path::Operation::Search
            && policy::search_filter(&principal.credential).is_some()
        {
            return Err(ApiError::forbidden(
                "This token is limited to some packages, and a search answer through this proxy \
                 would list others: search with a login session, a publish token or a token for \
                 all packages.",
            ));
        }
    }
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
