//! npm's web login (npm 11's default `npm login`): `POST /-/v1/login` makes a login with two
//! secrets, one in `loginUrl` (opened in the browser) and one in `doneUrl` (polled by npm);
//! the person signs in (with the one-time password step) and confirms on the page here; npm's
//! next poll gets a new session token, once. Both secrets are stored as SHA-256 only and sit in
//! query strings, which the access log does not print.

use super::layout::{csrf_field, page, respond, Nav};
use super::session::{self, check_csrf, hash, new_secret, SignedIn};
use super::{form, query, WebError};
use crate::api::tokens::issue_session;
use crate::audit::Event;
use crate::config::Registration;
use crate::error::ApiError;
use crate::store::WebLoginPoll;
use crate::token::PlainToken;
use crate::AppState;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{Duration, Utc};
use maud::html;
use serde::Deserialize;
use serde_json::json;

/// How long a login may wait for the person.
pub const LOGIN_MINUTES: i64 = 10;
/// npm's poll interval, sent as `Retry-After`.
pub const POLL_SECS: u64 = 1;

/// The two URLs npm gets.
pub struct Started {
    pub login_url: String,
    pub done_url: String,
}

/// Makes a login; `create`: npm asked to create an account (`npm adduser`).
pub async fn start(
    state: &AppState,
    headers: &HeaderMap,
    create: bool,
) -> Result<Started, ApiError> {
    let now = Utc::now();
    let idle = Duration::minutes(i64::from(state.config.web_session_idle_minutes));
    state.store.prune_web(now, now - idle).await?;
    let (id, done) = (new_secret(), new_secret());
    state
        .store
        .insert_web_login(
            &hash(&id),
            &hash(&done),
            create,
            now,
            now + Duration::minutes(LOGIN_MINUTES),
        )
        .await?;
    let base = crate::proxy::public_base(&state.config, headers);
    tracing::info!(create, "web login started");
    Ok(Started {
        login_url: format!("{base}/-/web/npm-login?id={id}"),
        done_url: format!("{base}/-/v1/done?session={done}"),
    })
}

/// What npm's poll of `doneUrl` is answered.
pub enum Poll {
    /// 202 with `Retry-After`.
    Pending,
    /// 200 `{token}`.
    Token(PlainToken),
}

/// npm's poll: the session token once the person confirmed, once.
pub async fn poll(state: &AppState, done: &str) -> Result<Poll, ApiError> {
    let gone = || {
        ApiError::not_found(
            "This login is unknown, has expired or was completed already: run npm login again.",
        )
    };
    if done.is_empty() || done.len() > 128 {
        return Err(gone());
    }
    match state.store.poll_web_login(&hash(done), Utc::now()).await? {
        WebLoginPoll::Pending => Ok(Poll::Pending),
        WebLoginPoll::Gone => Err(gone()),
        WebLoginPoll::Cancelled => Err(ApiError::forbidden(
            "The login was cancelled in the browser.",
        )),
        WebLoginPoll::Approved(name) => {
            let user = state
                .store
                .user_by_name(&name)
                .await?
                .filter(|u| !u.disabled)
                .ok_or_else(|| {
                    ApiError::forbidden("This account is disabled: ask an administrator.")
                })?;
            let (token, record) = issue_session(state, &user).await?;
            tracing::info!(user = %user.name, "logged in through the web");
            state.audit.note(
                Event::LoginSucceeded,
                Some(&user.name),
                Some(&record.key),
                json!({ "via": "web login" }),
            );
            Ok(Poll::Token(token))
        }
    }
}

#[derive(Deserialize, Default)]
pub struct IdQuery {
    id: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct DecideForm {
    csrf: Option<String>,
    id: Option<String>,
    decision: Option<String>,
}

fn unknown() -> WebError {
    WebError(ApiError::not_found(
        "This login link is unknown or has expired: run npm login again.",
    ))
}

fn finished(who: &SignedIn, title: &str, text: &str) -> Response {
    let body = html! {
        section.card.narrow {
            h1 { (title) }
            p { (text) }
        }
    };
    let nav = Some(Nav {
        user: &who.user.name,
        csrf: &who.csrf,
    });
    respond(StatusCode::OK, page(title, nav, body))
}

/// `GET /-/web/npm-login?id=…`: the link npm opened; sign in first, then confirm.
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<IdQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let id = query(q)?.id.unwrap_or_default();
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(unknown());
    }
    let Some(login) = state.store.web_login(&hash(&id), Utc::now()).await? else {
        return Err(unknown());
    };
    let here = format!("/-/web/npm-login?id={id}");
    let Some(who) = session::current(&state, &headers).await? else {
        let to = if login.create && state.config.registration == Registration::Open {
            format!(
                "/-/web/signup?next={}",
                percent_encoding::utf8_percent_encode(&here, percent_encoding::NON_ALPHANUMERIC)
            )
        } else {
            session::signin_url(&here)
        };
        return Ok(Redirect::to(&to).into_response());
    };
    if login.decided {
        return Ok(finished(
            &who,
            "Already done",
            "This login was confirmed or cancelled already.",
        ));
    }
    let body = html! {
        section.card.narrow {
            h1 { "Log in npm on this machine?" }
            p { "npm asked to log in to this registry. Continue only if you just ran "
                code { "npm login" } " yourself: npm will act as " strong { (who.user.name) } "." }
            form method="post" action="/-/web/npm-login" {
                (csrf_field(&who.csrf))
                input type="hidden" name="id" value=(id);
                div.actions {
                    button type="submit" name="decision" value="approve" { "Log in npm" }
                    button.secondary type="submit" name="decision" value="cancel" { "Cancel" }
                }
            }
        }
    };
    let nav = Some(Nav {
        user: &who.user.name,
        csrf: &who.csrf,
    });
    Ok(respond(StatusCode::OK, page("Log in npm", nav, body)))
}

/// `POST /-/web/npm-login`: the person's answer.
pub async fn decide(
    State(state): State<AppState>,
    who: SignedIn,
    f: Result<Form<DecideForm>, FormRejection>,
) -> Result<Response, WebError> {
    let f = form(f)?;
    check_csrf(&who.csrf, f.csrf.as_deref())?;
    let id = f.id.unwrap_or_default();
    let approve = match f.decision.as_deref() {
        Some("approve") => true,
        Some("cancel") => false,
        _ => {
            return Err(WebError(ApiError::bad_request(
                "Choose Log in npm or Cancel.",
            )))
        }
    };
    let user = approve.then_some(who.user.id);
    if id.is_empty()
        || !state
            .store
            .decide_web_login(&hash(&id), user, Utc::now())
            .await?
    {
        return Err(unknown());
    }
    tracing::info!(user = %who.user.name, approve, "web login decided");
    Ok(if approve {
        finished(
            &who,
            "npm is logged in",
            "You can close this window and go back to the terminal.",
        )
    } else {
        finished(
            &who,
            "Login cancelled",
            "npm was not logged in. You can close this window.",
        )
    })
}
