//! `npm token list|create|revoke`: `/-/npm/v1/tokens`.

use super::{iso, JsonBody, PathParam};
use crate::attempts;
use crate::audit::Event;
use crate::auth::{ClientAddr, Principal};
use crate::error::{ApiError, Challenge, ErrorBody};
use crate::openapi::OtpHeader;
use crate::policy::Credential;
use crate::store::{Permission, TokenCursor, TokenKind, TokenRecord, TokensFrom, User};
use crate::token::{PlainToken, TokenKey};
use crate::token_request::{self, CreateTokenBody, ExpiryLimits, TokenSpec};
use crate::AppState;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::net::IpAddr;
use utoipa::ToSchema;

const DEFAULT_PER_PAGE: i64 = 10;
const MAX_PER_PAGE: i64 = 9999;

/// A token as npm lists it; `token` is the full secret only in the create answer, else the
/// redacted start of it.
#[derive(Serialize, ToSchema)]
pub struct TokenView {
    /// The secret (create answer) or its redacted start (list).
    pub token: String,
    /// The SHA-512 hex of the token: its id for `npm token revoke`.
    pub key: String,
    pub name: Option<String>,
    pub description: Option<String>,
    #[serde(rename = "type")]
    pub kind: TokenKind,
    pub readonly: bool,
    pub automation: bool,
    pub bypass_2fa: bool,
    /// The client addresses the token may be used from; `null`: any.
    pub cidr_whitelist: Option<Vec<String>>,
    /// The same list under npm 11's name.
    pub cidr: Option<Vec<String>>,
    #[schema(format = DateTime)]
    pub created: String,
    #[schema(format = DateTime)]
    pub updated: String,
    #[schema(format = DateTime)]
    pub expires: Option<String>,
    #[schema(format = DateTime)]
    pub last_used: Option<String>,
    pub last_used_ip: Option<String>,
    pub packages: Vec<String>,
    pub packages_all: bool,
    pub scopes: Vec<String>,
    pub orgs: Vec<String>,
    pub packages_and_scopes_permission: Option<Permission>,
    pub orgs_permission: Option<Permission>,
}

impl TokenView {
    /// `t` as npm shows it, with `shown` as its `token`.
    pub fn of(t: &TokenRecord, shown: &str) -> TokenView {
        TokenView {
            token: shown.to_owned(),
            key: t.key.0.clone(),
            name: t.name.clone(),
            description: t.description.clone(),
            kind: t.kind,
            readonly: t.readonly,
            automation: t.automation,
            bypass_2fa: t.bypass_2fa,
            cidr_whitelist: t.cidr_whitelist.clone(),
            cidr: t.cidr_whitelist.clone(),
            created: iso(t.created),
            updated: iso(t.created),
            expires: t.expires.map(iso),
            last_used: t.last_used.map(iso),
            last_used_ip: t.last_used_ip.clone(),
            packages: t.packages.clone(),
            packages_all: t.packages_all,
            scopes: t.scopes.clone(),
            orgs: t.orgs.clone(),
            packages_and_scopes_permission: t.packages_and_scopes_permission,
            orgs_permission: t.orgs_permission,
        }
    }
}

/// One page of `npm token list`.
#[derive(Serialize, ToSchema)]
pub struct TokenPage {
    /// The caller's tokens, newest first.
    pub objects: Vec<TokenView>,
    /// How many tokens the caller has in all.
    pub total: i64,
    pub urls: PageUrls,
}

#[derive(Serialize, ToSchema)]
pub struct PageUrls {
    /// The next page's path; `null` on the last page.
    pub next: Option<String>,
}

/// Generates a token for `spec`, stores it, and returns the secret with its record.
async fn issue(
    state: &AppState,
    user: &User,
    spec: TokenSpec,
) -> Result<(PlainToken, TokenRecord), ApiError> {
    let prefix = &state.config.token_prefix;
    let token = PlainToken::generate(prefix);
    let record = spec.into_record(token.key(), user.id, token.redacted(prefix), Utc::now());
    state.store.insert_token(&record).await?;
    Ok((token, record))
}

/// A session token for `npm login`.
pub async fn issue_session(
    state: &AppState,
    user: &User,
) -> Result<(PlainToken, TokenRecord), ApiError> {
    let hours = state.config.session_expiry_hours;
    let expires = (hours > 0).then(|| Utc::now() + Duration::hours(hours as i64));
    let spec = TokenSpec::unrestricted(TokenKind::Session, Some("npm login".into()), expires);
    issue(state, user, spec).await
}

#[derive(Deserialize)]
pub struct ListParams {
    page: Option<String>,
    #[serde(rename = "perPage")]
    per_page: Option<String>,
    after: Option<String>,
}

fn parse_param(
    name: &str,
    value: Option<&str>,
    default: i64,
    min: i64,
    max: i64,
) -> Result<i64, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "{name} must be a whole number from {min} to {max}."
                ))
            }),
    }
}

/// `GET /-/npm/v1/tokens?page=N&perPage=M`: the caller's tokens, newest first.
#[utoipa::path(
    get,
    path = "/-/npm/v1/tokens",
    tag = "tokens",
    summary = "npm token list",
    params(
        ("page" = Option<i64>, Query, minimum = 0, maximum = 4294967295.0,
            description = "The page, from 0."),
        ("perPage" = Option<i64>, Query, minimum = 1, maximum = 9999,
            description = "Tokens per page (10 when absent)."),
        ("after" = Option<String>, Query,
            description = "Where the page starts, as written in the previous page's `urls.next` \
            (`CREATED_MS.KEY`): just after that token, however deep, with no token skipped or \
            repeated when others are created or revoked meanwhile. Without it, the page starts \
            at `page × perPage`."),
    ),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 200, description = "The caller's tokens, newest first.", body = TokenPage),
        (status = 400, description = "`page` or `perPage` is not a whole number in range, or \
            `after` is not a cursor from `urls.next`.", body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    query: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<TokenPage>, ApiError> {
    let Query(params) = query.map_err(|_| ApiError::bad_request("Invalid query string."))?;
    let page = parse_param("page", params.page.as_deref(), 0, 0, i64::from(u32::MAX))?;
    let per_page = parse_param(
        "perPage",
        params.per_page.as_deref(),
        DEFAULT_PER_PAGE,
        1,
        MAX_PER_PAGE,
    )?;
    let from = match params.after.as_deref() {
        None => TokensFrom::Offset(page * per_page),
        Some(after) => TokensFrom::After(after.parse().map_err(|_| {
            ApiError::bad_request(
                "after must be the cursor from a token list's urls.next (CREATED_MS.KEY); \
                 leave it out to start from the newest token.",
            )
        })?),
    };
    // One token more than the page holds tells whether there is a next page.
    let (mut tokens, total) = state
        .store
        .list_tokens(principal.user.id, &from, per_page + 1)
        .await?;
    let more = tokens.len() as i64 > per_page;
    tokens.truncate(per_page as usize);
    let next = match tokens.last() {
        Some(last) if more => Some(format!(
            "/-/npm/v1/tokens?page={}&perPage={per_page}&after={}",
            (page + 1).min(i64::from(u32::MAX)),
            TokenCursor::after(last)
        )),
        _ => None,
    };
    let objects = tokens
        .iter()
        .map(|t| TokenView::of(t, &t.redacted))
        .collect();
    Ok(Json(TokenPage {
        objects,
        total,
        urls: PageUrls { next },
    }))
}

/// `POST /-/npm/v1/tokens`: needs the account password every time.
#[utoipa::path(
    post,
    path = "/-/npm/v1/tokens",
    tag = "tokens",
    summary = "npm token create",
    params(OtpHeader),
    request_body = CreateTokenBody,
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 201, description = "The new token; `token` is the secret, shown only here.",
            body = TokenView),
        (status = 400, description = "The body is not JSON, has unknown fields, or asks for a \
            token that cannot be made (the message says why).", body = ErrorBody),
        (status = 401, description = "Wrong or missing `password` (`WWW-Authenticate: Basic`), \
            or the credentials are not valid, or a one-time password is needed.",
            body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The caller already has the most tokens one account may \
            hold, or this token may not manage tokens.", body = ErrorBody),
        (status = 413, description = "The body is larger than `max_body_bytes`.",
            body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    principal: Principal,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<CreateTokenBody>,
) -> Result<Response, ApiError> {
    let by = credential_name(&principal.credential);
    let (token, record) = create_token(&state, &principal.user, &by, &body, client).await?;
    Ok((
        StatusCode::CREATED,
        Json(TokenView::of(&record, token.expose())),
    )
        .into_response())
}

/// Creates a token for `user` from a create body: the rules of `POST /-/npm/v1/tokens`, shared
/// with the Access Tokens page. Validates the body, checks the password (under the failure
/// limits) and the per-user limit, stores the token and notes the audit event; `by` names the
/// caller's credential for the audit log.
pub async fn create_token(
    state: &AppState,
    user: &User,
    by: &str,
    body: &CreateTokenBody,
    client: IpAddr,
) -> Result<(PlainToken, TokenRecord), ApiError> {
    let limits = ExpiryLimits {
        max_days: state.config.max_token_expiry_days,
        default_days: state.config.default_token_expiry_days,
    };
    let spec = token_request::validate(body, limits, Utc::now()).map_err(ApiError::BadRequest)?;
    let password = body.password.as_deref().unwrap_or_default();
    let stored = Some(user.password_hash.as_str());
    if !attempts::check_password(state, &user.name, stored, password, client).await? {
        tracing::info!(user = %user.name, %client, "token create refused: wrong password");
        return Err(ApiError::unauthorized(
            "Incorrect or missing password.",
            Challenge::Basic,
        ));
    }
    let max = i64::from(state.config.max_tokens_per_user);
    if spec.kind != TokenKind::Session
        && state.store.count_live_tokens(user.id, Utc::now()).await? >= max
    {
        return Err(ApiError::forbidden(format!(
            "You already have {max} tokens, the most one account may hold: revoke some with npm token revoke."
        )));
    }
    let (token, record) = issue(state, user, spec).await?;
    // Plain data: serialising it cannot fail.
    let mut detail = serde_json::to_value(TokenView::of(&record, "")).unwrap_or_default();
    if let Some(obj) = detail.as_object_mut() {
        obj.remove("token");
        obj.remove("key");
        obj.insert("by".into(), json!(by));
    }
    state.audit.note(
        Event::TokenCreated,
        Some(&user.name),
        Some(&record.key),
        detail,
    );
    tracing::info!(
        user = %user.name, key = record.key.short(), kind = record.kind.as_str(), %client,
        "token created"
    );
    Ok((token, record))
}

/// `DELETE /-/npm/v1/tokens/token/KEY-OR-TOKEN`: only the caller's own tokens.
#[utoipa::path(
    delete,
    path = "/-/npm/v1/tokens/token/{key}",
    tag = "tokens",
    summary = "npm token revoke",
    params(
        ("key" = String, Path, min_length = 1,
            description = "The token's key (128 hex digits, as listed) or the token itself."),
        OtpHeader,
    ),
    security(("bearer" = []), ("basic" = [])),
    responses(
        (status = 204, description = "Revoked."),
        (status = 404, description = "No live token of the caller's has that key or value.",
            body = ErrorBody),
    )
)]
pub async fn revoke(
    State(state): State<AppState>,
    principal: Principal,
    PathParam(id): PathParam<String>,
) -> Result<StatusCode, ApiError> {
    let key = TokenKey::parse_hex(&id).unwrap_or_else(|| TokenKey::of(&id));
    let by = credential_name(&principal.credential);
    revoke_token(&state, &principal.user, &key, &by).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes one of `user`'s tokens and notes the audit event (shared with the Access Tokens
/// page); 404 when it is not theirs, unknown or already revoked.
pub async fn revoke_token(
    state: &AppState,
    user: &User,
    key: &TokenKey,
    by: &str,
) -> Result<(), ApiError> {
    let revoked = state.store.revoke_token(user.id, key, Utc::now()).await?;
    if !revoked {
        return Err(ApiError::not_found(
            "No token of yours has that id or value: see npm token list.",
        ));
    }
    tracing::info!(user = %user.name, key = key.short(), by, "token revoked");
    state.audit.note(
        Event::TokenRevoked,
        Some(&user.name),
        Some(key),
        json!({ "by": by }),
    );
    Ok(())
}

/// How the caller proved who they are, for the audit log: the key id of their token.
fn credential_name(credential: &Credential) -> String {
    match credential {
        Credential::Token(t) => format!("token {}", t.key.short()),
        Credential::Password => "password".into(),
    }
}
