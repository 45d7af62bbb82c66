//! Login and adduser (npm's couch flow), logout, whoami and ping.

use super::{BodyBytes, JsonBody, PathParam};
use crate::api::tokens::issue_session;
use crate::audit::Event;
use crate::auth::{ClientAddr, MaybePrincipal, Principal};
use crate::config::Registration;
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::names;
use crate::openapi::OtpHeader;
use crate::store::{NewUser, StoreError};
use crate::token::{PlainToken, TokenKey};
use crate::AppState;
use crate::{attempts, policy, second_factor};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

const COUCH_PREFIX: &str = "org.couchdb.user:";

/// The user document npm sends. No `Debug`: it holds the password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    #[serde(rename = "_id")]
    _id: Option<String>,
    #[serde(rename = "_rev")]
    _rev: Option<String>,
    /// When given, the name in the path.
    name: Option<String>,
    /// Required, not empty.
    password: Option<String>,
    /// Given by `npm adduser`: creates the account when the name is free and registration
    /// is open.
    email: Option<String>,
    #[serde(rename = "type")]
    _kind: Option<String>,
    #[serde(rename = "roles")]
    _roles: Option<Value>,
    #[serde(rename = "date")]
    _date: Option<Value>,
}

/// The answer to a login or adduser: a new session token.
#[derive(Serialize, ToSchema)]
pub struct LoginAnswer {
    pub ok: bool,
    /// `org.couchdb.user:NAME`.
    pub id: String,
    pub rev: String,
    /// The session token (`npm_…`).
    pub token: String,
}

/// The public part of a user document.
#[derive(Serialize, ToSchema)]
pub struct UserDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub name: String,
    /// Shown for the caller's own record, and for others' to a login session, a password or a
    /// full-permission token (npm's `owner add` reads it); never to a narrower token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// `{"ok": true}`.
#[derive(Serialize, ToSchema)]
pub struct OkAnswer {
    pub ok: bool,
}

/// `GET /-/whoami`'s answer.
#[derive(Serialize, ToSchema)]
pub struct Whoami {
    pub username: String,
}

/// An empty object, `{}`.
#[derive(Serialize, ToSchema)]
pub struct Empty {}

/// The liveness answer.
#[derive(Serialize, ToSchema)]
pub struct Live {
    /// Always `ok`.
    pub status: String,
}

/// The readiness answer.
#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// Always `ok`.
    pub status: String,
    /// Always `ok`: an unavailable database is a 503.
    pub database: String,
}

/// The answer to `POST /-/v1/login`.
#[derive(Serialize, ToSchema)]
pub struct WebLoginStarted {
    /// The page npm opens in the browser.
    #[serde(rename = "loginUrl")]
    pub login_url: String,
    /// What npm polls until the person confirmed.
    #[serde(rename = "doneUrl")]
    pub done_url: String,
}

/// The session token of a finished web login.
#[derive(Serialize, ToSchema)]
pub struct WebLoginToken {
    pub token: String,
}

fn user_from_id(id: &str) -> Result<String, ApiError> {
    let name = id
        .get(..COUCH_PREFIX.len())
        .filter(|p| p.eq_ignore_ascii_case(COUCH_PREFIX))
        .map(|_| &id[COUCH_PREFIX.len()..])
        .ok_or_else(|| ApiError::not_found("Not found."))?;
    if name.is_empty() {
        return Err(ApiError::bad_request(
            "The user name is missing from the path.",
        ));
    }
    Ok(name.to_owned())
}

/// What npm's login (`login` and its `-rev` retry) can answer, for the API description.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum LoginResponses {
    /// Logged in (or the account was created): a new session token.
    #[response(status = 201)]
    LoggedIn(LoginAnswer),
    /// The body is not a valid user document, the password is missing, the names differ, or the
    /// new account's name, email or password is not acceptable.
    #[response(status = 400)]
    BadRequest(ErrorBody),
    /// Wrong name or password (no challenge), or a one-time password is needed
    /// (`WWW-Authenticate: OTP`).
    #[response(status = 401, headers(("WWW-Authenticate" = String)))]
    Unauthorized(ErrorBody),
    /// The account is disabled, or registration is closed.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// The path is not `org.couchdb.user:NAME`.
    #[response(status = 404)]
    NotFound(ErrorBody),
    /// The body is larger than `max_body_bytes`.
    #[response(status = 413)]
    TooLarge(ErrorBody),
    /// Too many failed attempts for this account from this address.
    #[response(status = 429, headers(("Retry-After" = i64)))]
    TooMany(ErrorBody),
}

/// `PUT /-/user/org.couchdb.user:NAME`
#[utoipa::path(
    put,
    path = "/-/user/{id}",
    tag = "login",
    summary = "npm login / npm adduser",
    params(
        ("id" = String, Path, pattern = "^org\\.couchdb\\.user:.+$",
            description = "`org.couchdb.user:NAME`"),
        OtpHeader,
    ),
    request_body = LoginBody,
    responses(LoginResponses)
)]
pub async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<(StatusCode, Json<LoginAnswer>), ApiError> {
    login_or_adduser(state, client, &headers, id, body).await
}

/// `PUT /-/user/org.couchdb.user:NAME/-rev/REV`, npm's retry after a conflict.
#[utoipa::path(
    put,
    path = "/-/user/{id}/-rev/{rev}",
    tag = "login",
    summary = "npm login, retried with a revision",
    params(
        ("id" = String, Path, pattern = "^org\\.couchdb\\.user:.+$",
            description = "`org.couchdb.user:NAME`"),
        ("rev" = String, Path, min_length = 1, description = "Ignored."),
        OtpHeader,
    ),
    request_body = LoginBody,
    responses(LoginResponses)
)]
pub async fn login_rev(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    PathParam((id, _rev)): PathParam<(String, String)>,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<(StatusCode, Json<LoginAnswer>), ApiError> {
    login_or_adduser(state, client, &headers, id, body).await
}

async fn login_or_adduser(
    state: AppState,
    ClientAddr(client): ClientAddr,
    headers: &HeaderMap,
    id: String,
    body: LoginBody,
) -> Result<(StatusCode, Json<LoginAnswer>), ApiError> {
    let name = user_from_id(&id)?;
    if body.name.as_deref().is_some_and(|n| n != name) {
        return Err(ApiError::bad_request(
            "The name in the body differs from the name in the path.",
        ));
    }
    let password = body
        .password
        .filter(|p| !p.is_empty())
        .ok_or_else(|| ApiError::bad_request("A password is required."))?;
    let wrong = || ApiError::Unauthorized {
        message: "Incorrect username or password.".into(),
        challenge: None,
    };

    let user = state.store.user_by_name(&name).await?;
    let user = match user {
        Some(user) => {
            let stored = Some(user.password_hash.as_str());
            if !attempts::check_password(&state, &name, stored, &password, client).await? {
                tracing::info!(user = %name, %client, "login failed");
                state
                    .audit
                    .note(Event::LoginFailed, Some(&name), None, json!({}));
                return Err(wrong());
            }
            if user.disabled {
                return Err(ApiError::forbidden(
                    "This account is disabled: ask an administrator.",
                ));
            }
            second_factor::require(&state, &user, headers, client, second_factor::OTP_REQUIRED)
                .await?;
            user
        }
        None => match body.email {
            // Login of an unknown name: the same answer and time as a wrong password.
            None => {
                attempts::check_password(&state, &name, None, &password, client).await?;
                tracing::info!(%client, "login failed");
                let detail = json!({ "unknown_user": true });
                state
                    .audit
                    .note(Event::LoginFailed, Some(&name), None, detail);
                return Err(wrong());
            }
            Some(email) => adduser(&state, &name, &email, password).await?,
        },
    };
    let (token, record) = issue_session(&state, &user).await?;
    tracing::info!(user = %user.name, %client, "logged in");
    state.audit.note(
        Event::LoginSucceeded,
        Some(&user.name),
        Some(&record.key),
        json!({}),
    );
    Ok((
        StatusCode::CREATED,
        Json(LoginAnswer {
            ok: true,
            id: format!("{COUCH_PREFIX}{}", user.name),
            rev: "_we_dont_use_revs_any_more".into(),
            token: token.expose().to_owned(),
        }),
    ))
}

/// Creates an account as `npm adduser` does (shared with the web sign-up page): only when
/// registration is open, with npm's name rules and the minimum password length.
pub async fn adduser(
    state: &AppState,
    name: &str,
    email: &str,
    password: String,
) -> Result<crate::store::User, ApiError> {
    if state.config.registration == Registration::Closed {
        return Err(ApiError::forbidden(
            "Registration is closed on this registry: ask an administrator to create your \
             account (tokengate user add), then run npm login.",
        ));
    }
    names::validate_username(name).map_err(ApiError::BadRequest)?;
    names::validate_email(email).map_err(ApiError::BadRequest)?;
    let min = state.config.password_min_length;
    if password.chars().count() < min {
        return Err(ApiError::bad_request(format!(
            "The password must be at least {min} characters long."
        )));
    }
    let password_hash = crate::password::hash(password)
        .await
        .map_err(ApiError::Internal)?;
    let created = state
        .store
        .create_user(&NewUser {
            name: name.into(),
            email: email.into(),
            password_hash,
        })
        .await;
    match created {
        Ok(user) => {
            tracing::info!(user = %name, "account created by adduser");
            let detail = json!({ "by": "npm adduser" });
            state
                .audit
                .note(Event::UserCreated, Some(name), None, detail);
            Ok(user)
        }
        // Someone registered the name meanwhile: the password did not match theirs.
        Err(StoreError::Conflict(_)) => Err(ApiError::Unauthorized {
            message: "Incorrect username or password.".into(),
            challenge: None,
        }),
        Err(e) => Err(e.into()),
    }
}

/// `GET /-/user/org.couchdb.user:NAME`: the public part of a user document.
#[utoipa::path(
    get,
    path = "/-/user/{id}",
    tag = "login",
    summary = "A user's public document",
    params(("id" = String, Path, min_length = 1, description = "`org.couchdb.user:NAME`")),
    responses(
        (status = 200, description = "The user's id, name and email.", body = UserDoc),
        (status = 400, description = "The name is missing from the path.", body = ErrorBody),
        (status = 404, description = "No such user, or the path is not `org.couchdb.user:NAME`.",
            body = ErrorBody),
    )
)]
pub async fn user_doc(
    State(state): State<AppState>,
    caller: Principal,
    PathParam(id): PathParam<String>,
) -> Result<Json<UserDoc>, ApiError> {
    let name = user_from_id(&id)?;
    let user = state
        .store
        .user_by_name(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No user named {name}.")))?;
    let email = (user.id == caller.user.id || policy::sees_others_emails(&caller.credential))
        .then_some(user.email);
    Ok(Json(UserDoc {
        id: format!("{COUCH_PREFIX}{}", user.name),
        name: user.name,
        email,
    }))
}

/// `DELETE /-/user/token/TOKEN`: revokes that token. Unknown or already dead tokens answer
/// 200 too, so npm can always remove them from its config.
#[utoipa::path(
    delete,
    path = "/-/user/token/{token}",
    tag = "login",
    summary = "npm logout",
    params(("token" = String, Path, min_length = 1, description = "The token to revoke.")),
    responses(
        (status = 200, description = "Revoked, or unknown, malformed or already dead.", body = OkAnswer),
        (status = 403, description = "A live token of someone else: send it as the bearer, or \
            log in as its owner.", body = ErrorBody),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    MaybePrincipal(caller): MaybePrincipal,
    headers: axum::http::HeaderMap,
    PathParam(raw): PathParam<String>,
) -> Result<Json<OkAnswer>, ApiError> {
    let key = TokenKey::of(&raw);
    let ok = Json(OkAnswer { ok: true });
    let parsed = PlainToken::parse(&state.config.token_prefix, &raw);
    if parsed.is_err() {
        return Ok(ok);
    }
    let Some(found) = state.store.token_by_key(&key).await? else {
        return Ok(ok);
    };
    if found.token.revoked.is_some() {
        return Ok(ok);
    }
    let is_callers = caller.as_ref().is_some_and(|p| p.user.id == found.owner.id);
    // A dead bearer (expired, say) may still log itself out.
    let is_bearer = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|b| bool::from(TokenKey::of(b.trim()).0.as_bytes().ct_eq(key.0.as_bytes())));
    if !is_callers && !is_bearer {
        return Err(ApiError::forbidden("You can only log out your own tokens."));
    }
    state
        .store
        .revoke_token(found.owner.id, &key, Utc::now())
        .await?;
    tracing::info!(user = %found.owner.name, key = key.short(), "logged out");
    state.audit.note(
        Event::Logout,
        Some(&found.owner.name),
        Some(&key),
        json!({}),
    );
    Ok(ok)
}

/// `GET /-/whoami`
#[utoipa::path(
    get,
    path = "/-/whoami",
    tag = "login",
    summary = "npm whoami",
    responses((status = 200, description = "The caller's name.", body = Whoami))
)]
pub async fn whoami(principal: Principal) -> Json<Whoami> {
    Json(Whoami {
        username: principal.user.name.clone(),
    })
}

/// `GET /-/ping`
#[utoipa::path(
    get,
    path = "/-/ping",
    tag = "health",
    summary = "npm ping",
    responses((status = 200, description = "`{}`", body = Empty))
)]
pub async fn ping() -> Json<Empty> {
    Json(Empty {})
}

/// `GET /-/health/live`: the process answers.
#[utoipa::path(
    get,
    path = "/-/health/live",
    tag = "health",
    summary = "Liveness",
    responses((status = 200, description = "The process answers.", body = Live))
)]
pub async fn live() -> Json<Live> {
    Json(Live {
        status: "ok".into(),
    })
}

/// `GET /-/health/ready`: the database answers too.
#[utoipa::path(
    get,
    path = "/-/health/ready",
    tag = "health",
    summary = "Readiness",
    responses((status = 200, description = "The database answers too.", body = Ready))
)]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    state.store.ping().await?;
    Ok(Json(Ready {
        status: "ok".into(),
        database: "ok".into(),
    }))
}

/// What npm sends to `POST /-/v1/login`: `{}`, or `{create: true}` for `npm adduser`.
#[derive(Deserialize, Default, ToSchema)]
pub struct WebLoginBody {
    /// `npm adduser`: the page offers to create an account.
    #[serde(default)]
    create: bool,
}

/// `POST /-/v1/login`: npm's web login. Answers `{loginUrl, doneUrl}`; npm opens the first in a
/// browser and polls the second.
#[utoipa::path(
    post,
    path = "/-/v1/login",
    tag = "login",
    summary = "npm login (web)",
    request_body(content = Option<WebLoginBody>, description = "May be empty."),
    responses(
        (status = 200, description = "The login page and the URL to poll.", body = WebLoginStarted),
        (status = 400, description = "The body is not valid JSON of this shape.", body = ErrorBody),
        (status = 413, description = "The body is larger than `max_body_bytes`.", body = ErrorBody),
        (status = 429, description = "Too many logins started from this address lately.",
            body = ErrorBody, headers(("Retry-After" = i64))),
    )
)]
pub async fn web_login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Json<WebLoginStarted>, ApiError> {
    // Anyone may start a login, and each one is a database row for ten minutes: a client
    // address may start only so many per window.
    let address = client.to_string();
    if let Err(wait) = state.login_starts.check(&address, client) {
        return Err(ApiError::too_many("logins started from this address", wait));
    }
    state.login_starts.record_failure(&address, client);
    // An empty body and `null` are `{}`.
    let body: WebLoginBody = if body.iter().all(u8::is_ascii_whitespace) {
        WebLoginBody::default()
    } else {
        super::parse_json::<Option<WebLoginBody>>(&body)?.unwrap_or_default()
    };
    let started = crate::web::npm_login::start(&state, &headers, body.create).await?;
    Ok(Json(WebLoginStarted {
        login_url: started.login_url,
        done_url: started.done_url,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DoneParams {
    /// The secret from `doneUrl`.
    #[param(required = false, value_type = String)]
    session: Option<String>,
}

/// Web logins one client address may start per window.
pub const WEB_LOGINS_PER_WINDOW: usize = 30;
pub const WEB_LOGIN_WINDOW_SECS: u64 = 300;

/// `GET /-/v1/done?session=…`: 202 with `Retry-After` (and a JSON body, which npm reads) until
/// the person confirmed in the browser, then 200 `{token}` once.
#[utoipa::path(
    get,
    path = "/-/v1/done",
    tag = "login",
    summary = "npm login (web): poll",
    params(DoneParams),
    responses(
        (status = 200, description = "Confirmed: the new session token, answered once.",
            body = WebLoginToken),
        (status = 202, description = "Not confirmed yet: poll again after `Retry-After` seconds.",
            body = Empty, headers(("Retry-After" = i64))),
        (status = 403, description = "Cancelled in the browser, or the account is disabled.",
            body = ErrorBody),
        (status = 404, description = "Unknown, expired or already finished.", body = ErrorBody),
    )
)]
pub async fn web_login_done(
    State(state): State<AppState>,
    query: Result<axum::extract::Query<DoneParams>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::response::Response, ApiError> {
    use crate::web::npm_login::{poll, Poll, POLL_SECS};
    use axum::response::IntoResponse;
    let done = query.ok().and_then(|q| q.0.session).unwrap_or_default();
    Ok(match poll(&state, &done).await? {
        Poll::Pending => (
            StatusCode::ACCEPTED,
            [
                (axum::http::header::RETRY_AFTER, POLL_SECS.to_string()),
                (axum::http::header::CACHE_CONTROL, "no-store".to_owned()),
            ],
            Json(Empty {}),
        )
            .into_response(),
        Poll::Token(token) => (
            [(axum::http::header::CACHE_CONTROL, "no-store")],
            Json(WebLoginToken {
                token: token.expose().to_owned(),
            }),
        )
            .into_response(),
    })
}
