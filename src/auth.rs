//! The one middleware that decides who a request comes from and whether that credential may
//! perform the request's operation, before any handler runs.

use crate::client_ip;
use crate::error::{ApiError, Challenge};
use crate::metrics::{self, AuthOutcome};
use crate::policy::{self, Credential, Requirement};
use crate::registry_path::Route;
use crate::store::User;
use crate::token::{PlainToken, TokenKey};
use crate::AppState;
use crate::{attempts, audit, second_factor};
use axum::extract::connect_info::MockConnectInfo;
use axum::extract::{ConnectInfo, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::Utc;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub user: std::sync::Arc<User>,
    pub credential: Credential,
}

impl Principal {
    /// The token's key when the caller used a token.
    pub fn token_key(&self) -> Option<&TokenKey> {
        match &self.credential {
            Credential::Token(t) => Some(&t.key),
            Credential::Password => None,
        }
    }
}

/// The caller of a route whose handler accepts anonymous or dead credentials (logout).
#[derive(Clone, Debug)]
pub struct MaybePrincipal(pub Option<Principal>);

/// The client address, resolved once per request (see [`client_ip::resolve`]).
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub IpAddr);

/// What the gate learned about a request, for the handler's extractors ([`Principal`],
/// [`MaybePrincipal`], [`ClientAddr`]) and the proxy. One request extension rather than one
/// each: every insert is an allocation on the per-request path.
#[derive(Clone, Debug)]
pub struct Gated {
    pub client: IpAddr,
    pub route: Route,
    pub decision: Decision,
}

static X_FORWARDED_FOR: axum::http::HeaderName =
    axum::http::HeaderName::from_static("x-forwarded-for");

/// Runs the gate for one request (`route`: what [`crate::registry_path::route`] made of it),
/// then `next` (the handler) when the request may go ahead. `next` runs with the request's
/// origin set for the audit events it records.
///
/// A plain function returning the future, not an `async fn`: every request moves this future,
/// and an `async fn` would hold both its arguments and the inner future in its state.
pub fn gate<'s, N, F>(
    state: &'s AppState,
    req: Request,
    route: Route,
    next: N,
) -> impl std::future::Future<Output = Response> + 's
where
    N: FnOnce(Request) -> F + 's,
    F: std::future::Future<Output = Response> + 's,
{
    let extensions = req.extensions();
    let peer = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
        .or_else(|| {
            extensions
                .get::<MockConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip())
        })
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    // Looked up only if `resolve` reads it (the peer is a trusted proxy): a lookup by a custom
    // header name costs a hash of the name on every request.
    let forwarded = std::iter::once(req.headers())
        .flat_map(|headers| headers.get_all(&X_FORWARDED_FOR))
        .filter_map(|v| v.to_str().ok());
    let client = client_ip::resolve(peer, forwarded, &state.config.trusted_proxies);
    let meta = audit::RequestMeta {
        client,
        user_agent: req.headers().get(header::USER_AGENT).cloned(),
    };
    audit::within(meta, admit(state, req, route, next, client))
}

/// The gate's decision for one request, then the handler.
async fn admit<N, F>(
    state: &AppState,
    mut req: Request,
    route: Route,
    next: N,
    client: IpAddr,
) -> Response
where
    N: FnOnce(Request) -> F,
    F: std::future::Future<Output = Response>,
{
    let decision = match decide(state, &route, req.headers(), client).await {
        Ok(decision) => decision,
        Err(e) => return e.into_response(),
    };
    // Only the access log reads it; spare the copies when it is off.
    let logged = match &decision {
        Decision::Allowed(principal) if tracing::enabled!(tracing::Level::INFO) => {
            Some(crate::LoggedCaller {
                user: principal.user.name.clone(),
                key_id: principal.token_key().map(|k| k.short().to_owned()),
            })
        }
        _ => None,
    };
    req.extensions_mut().insert(Gated {
        client,
        route,
        decision,
    });
    let mut response = next(req).await;
    if let Some(logged) = logged {
        response.extensions_mut().insert(logged);
    }
    response
}

/// What the gate decided about a request.
#[derive(Clone, Debug)]
pub enum Decision {
    /// No credentials needed (ping, login, the forward-auth endpoint itself).
    Open,
    /// The handler decides; the caller, if any credentials were valid.
    Lenient(Option<Box<Principal>>),
    /// A registry read without credentials, allowed by `anonymous_read`.
    Anonymous,
    /// An authenticated caller allowed to do this.
    Allowed(Box<Principal>),
}

/// Decides whether a request for `route` with these headers, from `client`, may go ahead:
/// the token or password, its CIDR list, the policy, and a one-time password where the
/// account's two-factor mode asks for one. Used by the gate and the forward-auth endpoint.
pub async fn decide(
    state: &AppState,
    route: &Route,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Decision, ApiError> {
    if route.op == crate::registry_path::Operation::DotSegments {
        return Err(ApiError::bad_request(
            "The path contains `.` or `..` segments; send the package path without them.",
        ));
    }
    let access = match policy::requirement(route.op) {
        Requirement::Public => return Ok(Decision::Open),
        Requirement::Lenient => {
            // A password of an account with two-factor authentication proves nothing without
            // its code (see `policy::otp_required`): such a caller counts as anonymous here.
            let who = identify(state, headers, client)
                .await
                .ok()
                .flatten()
                .filter(|p| !(matches!(p.credential, Credential::Password) && has_tfa(&p.user)));
            return Ok(Decision::Lenient(who.map(Box::new)));
        }
        Requirement::Authenticated(access) => access,
    };
    let principal = match identify(state, headers, client).await? {
        Some(p) => p,
        None if policy::anonymous_allowed(route.op, state.config.anonymous_read) => {
            return Ok(Decision::Anonymous)
        }
        None => {
            metrics::auth_outcome(AuthOutcome::NoCredentials);
            return Err(ApiError::unauthorized(
                "You must be logged in: run `npm login` against this registry.",
                Challenge::Bearer,
            ));
        }
    };
    if let Err(denial) = policy::authorize(&principal.credential, access, route) {
        let read_only = matches!(&principal.credential, Credential::Token(t) if t.is_read_only());
        metrics::auth_outcome(if read_only {
            AuthOutcome::ReadOnly
        } else {
            AuthOutcome::Forbidden
        });
        tracing::info!(user = %principal.user.name, op = ?route.op, "refused: {}", denial.0);
        state.audit.note(
            audit::Event::RefusedPermission,
            Some(&principal.user.name),
            principal.token_key(),
            serde_json::json!({
                "operation": format!("{:?}", route.op),
                "package": route.package,
                "org": route.org,
                "reason": denial.0,
            }),
        );
        return Err(ApiError::forbidden(denial.0));
    }
    let mode = principal
        .user
        .tfa
        .as_ref()
        .filter(|t| t.enabled())
        .map(|t| t.mode);
    if policy::otp_required(mode, &principal.credential, access) {
        let why = match principal.credential {
            Credential::Password => second_factor::PASSWORD_NEEDS_OTP,
            Credential::Token(_) => second_factor::OTP_REQUIRED,
        };
        // Boxed: a rare path, kept out of the state of every request's future.
        Box::pin(second_factor::require(
            state,
            &principal.user,
            headers,
            client,
            why,
        ))
        .await?;
    }
    metrics::auth_outcome(AuthOutcome::Ok);
    Ok(Decision::Allowed(Box::new(principal)))
}

fn has_tfa(user: &User) -> bool {
    user.tfa.as_ref().is_some_and(|t| t.enabled())
}

/// Resolves the `Authorization` header into a principal. `Ok(None)`: no credentials sent.
pub async fn identify(
    state: &AppState,
    headers: &HeaderMap,
    client: IpAddr,
) -> Result<Option<Principal>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let invalid = || {
        ApiError::unauthorized(
            "The Authorization header is neither a Bearer token nor Basic credentials.",
            Challenge::Bearer,
        )
    };
    let value = value.to_str().map_err(|_| invalid())?;
    match parse_authorization(value) {
        Ok(AuthHeader::Bearer(raw)) => bearer(state, raw, client).await.map(Some),
        Ok(AuthHeader::Basic { name, password }) => {
            // Boxed: a rare path (argon2), kept out of the state of every request's future.
            Box::pin(basic(state, &name, &password, client))
                .await
                .map(Some)
        }
        Err(AuthHeaderError::Basic) => Err(wrong_password()),
        Err(AuthHeaderError::Scheme) => Err(invalid()),
    }
}

/// What an `Authorization` header carries, read without any lookup. No `Debug`: it may hold a
/// password.
#[derive(PartialEq, Eq)]
pub enum AuthHeader<'a> {
    /// `Bearer TOKEN`: the token, trimmed, its format not yet checked.
    Bearer(&'a str),
    /// `Basic base64(name:password)`, decoded; the name ends at the first `:`.
    Basic { name: String, password: String },
}

/// Why an `Authorization` header was refused before any lookup.
#[derive(Debug, PartialEq, Eq)]
pub enum AuthHeaderError {
    /// Neither `Bearer …` nor `Basic …`.
    Scheme,
    /// `Basic` with bad base64, non-UTF-8 or no `:`: answered like a wrong password.
    Basic,
}

/// Splits an `Authorization` header value into its scheme (case-insensitive) and credentials.
pub fn parse_authorization(value: &str) -> Result<AuthHeader<'_>, AuthHeaderError> {
    let (scheme, rest) = value.split_once(' ').ok_or(AuthHeaderError::Scheme)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        Ok(AuthHeader::Bearer(rest))
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or(AuthHeaderError::Basic)?;
        let (name, password) = decoded.split_once(':').ok_or(AuthHeaderError::Basic)?;
        Ok(AuthHeader::Basic {
            name: name.to_owned(),
            password: password.to_owned(),
        })
    } else {
        Err(AuthHeaderError::Scheme)
    }
}

fn wrong_password() -> ApiError {
    ApiError::unauthorized("Incorrect username or password.", Challenge::Basic)
}

async fn bearer(state: &AppState, raw: &str, client: IpAddr) -> Result<Principal, ApiError> {
    let bad = |why: &str| ApiError::unauthorized(why.to_owned(), Challenge::Bearer);
    // Garbage is refused by format and checksum before any lookup.
    PlainToken::check(&state.config.token_prefix, raw).map_err(|_| {
        metrics::auth_outcome(AuthOutcome::Malformed);
        bad("This token is not valid: log in again with `npm login`.")
    })?;
    let key = TokenKey::of(raw);
    let found = state.store.token_by_key(&key).await?.ok_or_else(|| {
        metrics::auth_outcome(AuthOutcome::UnknownToken);
        bad("This token is not valid: log in again with `npm login`.")
    })?;
    let (record, owner) = (found.token, found.owner);
    if record.revoked.is_some() {
        metrics::auth_outcome(AuthOutcome::Revoked);
        return Err(bad("This token has been revoked."));
    }
    if record.expires.is_some_and(|e| e <= Utc::now()) {
        metrics::auth_outcome(AuthOutcome::Expired);
        return Err(bad(
            "This token has expired: create a new one or log in again.",
        ));
    }
    if owner.disabled {
        metrics::auth_outcome(AuthOutcome::Disabled);
        return Err(bad("This account is disabled: ask an administrator."));
    }
    if let Some(list) = &record.cidr_whitelist {
        let nets: Vec<ipnet::IpNet> = list
            .iter()
            .filter_map(|c| client_ip::parse_cidr(c))
            .collect();
        if !client_ip::allowed(client, &nets) {
            tracing::info!(key = key.short(), %client, "refused: address not in the token's CIDR list");
            metrics::auth_outcome(AuthOutcome::Cidr);
            state.audit.note(
                audit::Event::RefusedCidr,
                Some(&owner.name),
                Some(&key),
                serde_json::json!({ "cidr_whitelist": list }),
            );
            return Err(ApiError::unauthorized(
                format!("This token may not be used from the address {client}."),
                Challenge::IpAddress,
            ));
        }
    }
    state.usage.record(&key, client);
    Ok(Principal {
        user: owner,
        credential: Credential::Token(record),
    })
}

async fn basic(
    state: &AppState,
    name: &str,
    password: &str,
    client: IpAddr,
) -> Result<Principal, ApiError> {
    let user = state.store.user_by_name(name).await?;
    let stored = user.as_ref().map(|u| u.password_hash.as_str());
    let ok = attempts::check_password(state, name, stored, password, client).await?;
    match user {
        Some(user) if ok && !user.disabled => Ok(Principal {
            user: std::sync::Arc::new(user),
            credential: Credential::Password,
        }),
        _ => Err(wrong_password()),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        match parts.extensions.get::<Gated>().map(|g| &g.decision) {
            Some(Decision::Allowed(principal)) => Ok(Principal::clone(principal)),
            _ => Err(ApiError::unauthorized(
                "You must be logged in.",
                Challenge::Bearer,
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for MaybePrincipal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(MaybePrincipal(
            match parts.extensions.get::<Gated>().map(|g| &g.decision) {
                Some(Decision::Lenient(who)) => who.as_deref().cloned(),
                _ => None,
            },
        ))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<Gated>()
                .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |g| g.client),
        ))
    }
}
