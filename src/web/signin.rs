//! Sign in (name and password, then the one-time password when two-factor authentication is
//! on), sign up when registration is open, and sign out.

use super::layout::{csrf_field, error_box, page, respond};
use super::session::{self, check_csrf, cookie, csrf_for, safe_next, SignedIn, SIGNIN_COOKIE};
use super::{form, message, query, redirect_with_cookie, with_retry_after, WebError};
use crate::audit::Event;
use crate::auth::ClientAddr;
use crate::config::Registration;
use crate::error::ApiError;
use crate::store::User;
use crate::AppState;
use crate::{attempts, second_factor};
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize, Default)]
pub struct NextQuery {
    next: Option<String>,
}

/// The sign-in form. No `Debug`: it holds the password.
#[derive(Deserialize, Default)]
pub struct SignInForm {
    csrf: Option<String>,
    name: Option<String>,
    password: Option<String>,
    next: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct OtpForm {
    csrf: Option<String>,
    code: Option<String>,
    next: Option<String>,
}

/// No `Debug`: it holds the password.
#[derive(Deserialize, Default)]
pub struct SignUpForm {
    csrf: Option<String>,
    name: Option<String>,
    email: Option<String>,
    password: Option<String>,
    password2: Option<String>,
    next: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct CsrfForm {
    csrf: Option<String>,
}

/// The sign-in cookie's CSRF token, making the cookie when the browser has none.
fn signin_csrf(state: &AppState, headers: &HeaderMap) -> (String, Option<header::HeaderValue>) {
    match cookie(headers, SIGNIN_COOKIE) {
        Some(secret) => (csrf_for(&secret), None),
        None => {
            let secret = session::new_secret();
            let set = session::set_cookie(&state.config, SIGNIN_COOKIE, &secret, None);
            (csrf_for(&secret), Some(set))
        }
    }
}

fn for_npm(next: &str) -> bool {
    next.starts_with("/-/web/npm-login?")
}

fn signin_form(
    state: &AppState,
    csrf: &str,
    name: &str,
    next: &str,
    error: Option<&str>,
) -> Markup {
    let open = state.config.registration == Registration::Open;
    let signup = format!(
        "/-/web/signup?next={}",
        percent_encoding::utf8_percent_encode(next, percent_encoding::NON_ALPHANUMERIC)
    );
    html! {
        section.card.narrow {
            h1 { "Sign in" }
            @if for_npm(next) {
                p.notice { "npm is waiting: sign in to log in npm on your machine." }
            }
            (error_box(error))
            form method="post" action="/-/web/login" {
                (csrf_field(csrf))
                input type="hidden" name="next" value=(next);
                label for="name" { "User name" }
                input #name type="text" name="name" value=(name) autocomplete="username"
                    autocapitalize="none" spellcheck="false" required autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
                div.actions { button type="submit" { "Sign in" } }
            }
            @if open {
                p.muted { "No account yet? " a href=(signup) { "Create one" } "." }
            }
        }
    }
}

fn otp_form(csrf: &str, next: &str, error: Option<&str>) -> Markup {
    html! {
        section.card.narrow {
            h1 { "Two-factor authentication" }
            (error_box(error))
            p { "Enter the code from your authenticator app, or one of your recovery codes." }
            form method="post" action="/-/web/login/otp" {
                (csrf_field(csrf))
                input type="hidden" name="next" value=(next);
                label for="code" { "One-time password" }
                input #code type="text" name="code" inputmode="numeric" autocomplete="one-time-code"
                    autocapitalize="none" spellcheck="false" required autofocus;
                div.actions { button type="submit" { "Verify" } }
            }
        }
    }
}

/// `GET /-/web/login?next=…`
pub async fn show(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<NextQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let next = safe_next(query(q)?.next.as_deref());
    if session::current(&state, &headers).await?.is_some() {
        return Ok(Redirect::to(&next).into_response());
    }
    let (csrf, set) = signin_csrf(&state, &headers);
    let body = signin_form(&state, &csrf, "", &next, None);
    let mut response = respond(StatusCode::OK, page("Sign in", None, body));
    if let Some(set) = set {
        response.headers_mut().append(header::SET_COOKIE, set);
    }
    Ok(response)
}

/// The CSRF check of the forms shown before signing in.
fn check_signin_csrf(headers: &HeaderMap, sent: Option<&str>) -> Result<String, WebError> {
    let Some(secret) = cookie(headers, SIGNIN_COOKIE) else {
        return Err(WebError(ApiError::forbidden(
            "Your browser did not send the sign-in cookie: allow cookies for this site and \
             reload the page.",
        )));
    };
    let csrf = csrf_for(&secret);
    check_csrf(&csrf, sent)?;
    Ok(csrf)
}

/// `POST /-/web/login`
pub async fn submit(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    f: Result<Form<SignInForm>, FormRejection>,
) -> Result<Response, WebError> {
    let f = form(f)?;
    let csrf = check_signin_csrf(&headers, f.csrf.as_deref())?;
    let next = safe_next(f.next.as_deref());
    let name = f.name.as_deref().unwrap_or_default().trim().to_owned();
    let password = f.password.unwrap_or_default();
    let again = |e: ApiError| {
        let body = signin_form(&state, &csrf, &name, &next, Some(&message(&e)));
        Ok(with_retry_after(
            &e,
            respond(e.status(), page("Sign in", None, body)),
        ))
    };
    if name.is_empty() || password.is_empty() {
        return again(ApiError::bad_request("Enter your user name and password."));
    }
    let user = state.store.user_by_name(&name).await?;
    let stored = user.as_ref().map(|u| u.password_hash.as_str());
    let ok = match attempts::check_password(&state, &name, stored, &password, client).await {
        Ok(ok) => ok,
        Err(e) => return again(e),
    };
    let user = match user {
        Some(user) if ok => user,
        _ => {
            tracing::info!(%client, "web sign-in failed");
            let detail = json!({ "via": "web", "unknown_user": user.is_none() });
            state
                .audit
                .note(Event::LoginFailed, Some(&name), None, detail);
            return again(ApiError::Unauthorized {
                message: "Incorrect username or password.".into(),
                challenge: None,
            });
        }
    };
    if user.disabled {
        return again(ApiError::forbidden(
            "This account is disabled: ask an administrator.",
        ));
    }
    if user.tfa.as_ref().is_some_and(|t| t.enabled()) {
        let (secret, cookie) = session::start(&state, &user, true).await?;
        let body = otp_form(&csrf_for(&secret), &next, None);
        let mut response = respond(
            StatusCode::OK,
            page("Two-factor authentication", None, body),
        );
        response.headers_mut().append(header::SET_COOKIE, cookie);
        return Ok(response);
    }
    signed_in(&state, &user, &next, client).await
}

/// Starts the full session and goes on to `next`.
async fn signed_in(
    state: &AppState,
    user: &User,
    next: &str,
    client: std::net::IpAddr,
) -> Result<Response, WebError> {
    let (_, cookie) = session::start(state, user, false).await?;
    tracing::info!(user = %user.name, %client, "signed in on the web");
    state.audit.note(
        Event::LoginSucceeded,
        Some(&user.name),
        None,
        json!({ "via": "web" }),
    );
    Ok(redirect_with_cookie(next, cookie))
}

/// `POST /-/web/login/otp`
pub async fn otp(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    f: Result<Form<OtpForm>, FormRejection>,
) -> Result<Response, WebError> {
    let f = form(f)?;
    let next = safe_next(f.next.as_deref());
    let Some((user, id_hash, csrf)) = session::pending_otp(&state, &headers).await? else {
        // The step took too long (or the cookie is gone): start over.
        return Ok(Redirect::to(&session::signin_url(&next)).into_response());
    };
    check_csrf(&csrf, f.csrf.as_deref())?;
    let code = f.code.unwrap_or_default();
    if let Err(e) = second_factor::verify_code(&state, &user, &code, client).await {
        let shown = match &e {
            ApiError::Unauthorized { .. } => ApiError::Unauthorized {
                message: "That code is not right, or was used already: enter the current code \
                          from your authenticator app, or a recovery code."
                    .into(),
                challenge: None,
            },
            _ => e,
        };
        let body = otp_form(&csrf, &next, Some(&message(&shown)));
        return Ok(with_retry_after(
            &shown,
            respond(
                shown.status(),
                page("Two-factor authentication", None, body),
            ),
        ));
    }
    // A new cookie for the full session: the half-way one is dropped.
    state.store.delete_web_session(&id_hash).await?;
    signed_in(&state, &user, &next, client).await
}

/// `POST /-/web/logout`
pub async fn logout(
    State(state): State<AppState>,
    who: SignedIn,
    f: Result<Form<CsrfForm>, FormRejection>,
) -> Result<Response, WebError> {
    let f = form(f)?;
    check_csrf(&who.csrf, f.csrf.as_deref())?;
    state.store.delete_web_session(&who.id_hash).await?;
    tracing::info!(user = %who.user.name, "signed out on the web");
    state.audit.note(
        Event::Logout,
        Some(&who.user.name),
        None,
        json!({ "via": "web" }),
    );
    let clear = session::clear_cookie(&state.config, session::SESSION_COOKIE);
    Ok(redirect_with_cookie("/-/web/login", clear))
}

fn signup_form(csrf: &str, name: &str, email: &str, next: &str, error: Option<&str>) -> Markup {
    let signin = session::signin_url(next);
    html! {
        section.card.narrow {
            h1 { "Create an account" }
            (error_box(error))
            form method="post" action="/-/web/signup" {
                (csrf_field(csrf))
                input type="hidden" name="next" value=(next);
                label for="name" { "User name" span.hint { " (lower case letters, digits, - . _)" } }
                input #name type="text" name="name" value=(name) autocomplete="username"
                    autocapitalize="none" spellcheck="false" required autofocus;
                label for="email" { "E-mail" }
                input #email type="email" name="email" value=(email) autocomplete="email" required;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="new-password" required;
                label for="password2" { "Password again" }
                input #password2 type="password" name="password2" autocomplete="new-password" required;
                div.actions { button type="submit" { "Create account" } }
            }
            p.muted { "Have an account? " a href=(signin) { "Sign in" } "." }
        }
    }
}

fn registration_closed() -> WebError {
    WebError(ApiError::forbidden(
        "Registration is closed on this registry: ask an administrator to create your account.",
    ))
}

/// `GET /-/web/signup?next=…` (only when registration is open)
pub async fn signup_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<NextQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let next = safe_next(query(q)?.next.as_deref());
    if state.config.registration != Registration::Open {
        return Err(registration_closed());
    }
    if session::current(&state, &headers).await?.is_some() {
        return Ok(Redirect::to(&next).into_response());
    }
    let (csrf, set) = signin_csrf(&state, &headers);
    let body = signup_form(&csrf, "", "", &next, None);
    let mut response = respond(StatusCode::OK, page("Create an account", None, body));
    if let Some(set) = set {
        response.headers_mut().append(header::SET_COOKIE, set);
    }
    Ok(response)
}

/// `POST /-/web/signup`: the account is made as `npm adduser` makes it.
pub async fn signup(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
    f: Result<Form<SignUpForm>, FormRejection>,
) -> Result<Response, WebError> {
    let f = form(f)?;
    let csrf = check_signin_csrf(&headers, f.csrf.as_deref())?;
    if state.config.registration != Registration::Open {
        return Err(registration_closed());
    }
    let next = safe_next(f.next.as_deref());
    let name = f.name.as_deref().unwrap_or_default().trim().to_owned();
    let email = f.email.as_deref().unwrap_or_default().trim().to_owned();
    let password = f.password.unwrap_or_default();
    let again = |e: ApiError| {
        let body = signup_form(&csrf, &name, &email, &next, Some(&message(&e)));
        Ok(respond(e.status(), page("Create an account", None, body)))
    };
    if password != f.password2.unwrap_or_default() {
        return again(ApiError::bad_request("The two passwords differ."));
    }
    if state.store.user_by_name(&name).await?.is_some() {
        return again(ApiError::Conflict(format!(
            "The name {name} is taken: choose another, or sign in."
        )));
    }
    let user = match crate::api::user::adduser(&state, &name, &email, password).await {
        Ok(user) => user,
        Err(e) => return again(e),
    };
    signed_in(&state, &user, &next, client).await
}
