//! Login and adduser (npm's couch flow), logout, whoami and ping.

use super::{BodyBytes, JsonBody, PathParam};
use crate::api::tokens::issue_session;
use crate::audit::Event;
use crate::auth::{ClientAddr, MaybePrincipal, Principal};
use crate::config::Registration;
use crate::error::ApiError;
use crate::names;
use crate::store::{NewUser, StoreError};
use crate::token::{PlainToken, TokenKey};
use crate::AppState;
use crate::{attempts, second_factor};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;

const COUCH_PREFIX: &str = "org.couchdb.user:";

/// The user document npm sends. No `Debug`: it holds the password.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginBody {
    #[serde(rename = "_id")]
    _id: Option<String>,
    #[serde(rename = "_rev")]
    _rev: Option<String>,
    name: Option<String>,
    password: Option<String>,
    email: Option<String>,
    #[serde(rename = "type")]
    _kind: Option<String>,
    #[serde(rename = "roles")]
    _roles: Option<Value>,
    #[serde(rename = "date")]
    _date: Option<Value>,
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

/// `PUT /-/user/org.couchdb.user:NAME`
pub async fn login(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    PathParam(id): PathParam<String>,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    login_or_adduser(state, client, &headers, id, body).await
}

/// `PUT /-/user/org.couchdb.user:NAME/-rev/REV`, npm's retry after a conflict.
pub async fn login_rev(
    State(state): State<AppState>,
    client: ClientAddr,
    headers: HeaderMap,
    PathParam((id, _rev)): PathParam<(String, String)>,
    JsonBody(body): JsonBody<LoginBody>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    login_or_adduser(state, client, &headers, id, body).await
}

async fn login_or_adduser(
    state: AppState,
    ClientAddr(client): ClientAddr,
    headers: &HeaderMap,
    id: String,
    body: LoginBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
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
            second_factor::require(&state, &user, headers, client).await?;
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
        Json(json!({
            "ok": true,
            "id": format!("{COUCH_PREFIX}{}", user.name),
            "rev": "_we_dont_use_revs_any_more",
            "token": token.expose(),
        })),
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
pub async fn user_doc(
    State(state): State<AppState>,
    _caller: Principal,
    PathParam(id): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let name = user_from_id(&id)?;
    let user = state
        .store
        .user_by_name(&name)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No user named {name}.")))?;
    Ok(Json(json!({
        "_id": format!("{COUCH_PREFIX}{}", user.name),
        "name": user.name,
        "email": user.email,
    })))
}

/// `DELETE /-/user/token/TOKEN`: revokes that token. Unknown or already dead tokens answer
/// 200 too, so npm can always remove them from its config.
pub async fn logout(
    State(state): State<AppState>,
    MaybePrincipal(caller): MaybePrincipal,
    headers: axum::http::HeaderMap,
    PathParam(raw): PathParam<String>,
) -> Result<Json<Value>, ApiError> {
    let key = TokenKey::of(&raw);
    let ok = Json(json!({ "ok": true }));
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
pub async fn whoami(principal: Principal) -> Json<Value> {
    Json(json!({ "username": principal.user.name }))
}

/// `GET /-/ping`
pub async fn ping() -> Json<Value> {
    Json(json!({}))
}

/// `GET /-/health/live`: the process answers.
pub async fn live() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /-/health/ready`: the database answers too.
pub async fn ready(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    state.store.ping().await?;
    Ok(Json(json!({ "status": "ok", "database": "ok" })))
}

/// What npm sends to `POST /-/v1/login`: `{}`, or `{create: true}` for `npm adduser`.
#[derive(Deserialize, Default)]
pub struct WebLoginBody {
    #[serde(default)]
    create: bool,
}

/// `POST /-/v1/login`: npm's web login. Answers `{loginUrl, doneUrl}`; npm opens the first in a
/// browser and polls the second.
pub async fn web_login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    BodyBytes(body): BodyBytes,
) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({
        "loginUrl": started.login_url,
        "doneUrl": started.done_url,
    })))
}

#[derive(Deserialize)]
pub struct DoneParams {
    session: Option<String>,
}

/// Web logins one client address may start per window.
pub const WEB_LOGINS_PER_WINDOW: usize = 30;
pub const WEB_LOGIN_WINDOW_SECS: u64 = 300;

/// `GET /-/v1/done?session=…`: 202 with `Retry-After` (and a JSON body, which npm reads) until
/// the person confirmed in the browser, then 200 `{token}` once.
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
            Json(json!({})),
        )
            .into_response(),
        Poll::Token(token) => (
            [(axum::http::header::CACHE_CONTROL, "no-store")],
            Json(json!({ "token": token.expose() })),
        )
            .into_response(),
    })
}
