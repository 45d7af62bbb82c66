//! Password change: `api::profile::change_password`, the code of `npm profile set password`.
//! The user's other browser sessions and npm login sessions end.

use super::layout::{csrf_field, error_box, page, respond, Nav};
use super::session::{check_csrf, SignedIn};
use super::{form, message, with_retry_after, WebError};
use crate::api::profile::{self, PasswordChange};
use crate::auth::{ClientAddr, Principal};
use crate::error::ApiError;
use crate::policy::{self, Access, Credential};
use crate::second_factor;
use crate::AppState;
use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use serde::Deserialize;

/// No `Debug`: it holds passwords.
#[derive(Deserialize, Default)]
pub struct PasswordForm {
    csrf: Option<String>,
    old: Option<String>,
    new: Option<String>,
    new2: Option<String>,
    otp: Option<String>,
}

fn needs_otp(who: &SignedIn) -> bool {
    let mode = who
        .user
        .tfa
        .as_ref()
        .filter(|t| t.enabled())
        .map(|t| t.mode);
    policy::otp_required(mode, &Credential::Password, Access::ChangeProfile)
}

fn body(state: &AppState, who: &SignedIn, notice: Option<&str>, error: Option<&str>) -> Markup {
    let min = state.config.password_min_length;
    html! {
        section.card.narrow {
            h1 { "Change password" }
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            (error_box(error))
            form method="post" action="/-/web/password" {
                (csrf_field(&who.csrf))
                label for="old" { "Current password" }
                input #old type="password" name="old" autocomplete="current-password" required;
                label for="new" { "New password " span.hint { "(at least " (min) " characters)" } }
                input #new type="password" name="new" autocomplete="new-password" minlength=(min) required;
                label for="new2" { "New password again" }
                input #new2 type="password" name="new2" autocomplete="new-password" required;
                @if needs_otp(who) {
                    label for="otp" { "One-time password" }
                    input #otp type="text" name="otp" inputmode="numeric" autocomplete="one-time-code" required;
                }
                p.hint { "Your other browser sessions and npm login sessions will be signed out." }
                div.actions { button type="submit" { "Change password" } }
            }
        }
    }
}

fn nav(who: &SignedIn) -> Option<Nav<'_>> {
    Some(Nav {
        user: &who.user.name,
        csrf: &who.csrf,
    })
}

/// `GET /-/web/password`
pub async fn show(State(state): State<AppState>, who: SignedIn) -> Response {
    respond(
        StatusCode::OK,
        page("Change password", nav(&who), body(&state, &who, None, None)),
    )
}

/// `POST /-/web/password`
pub async fn submit(
    State(state): State<AppState>,
    who: SignedIn,
    ClientAddr(client): ClientAddr,
    f: Result<Form<PasswordForm>, FormRejection>,
) -> Result<Response, WebError> {
    let f = form(f)?;
    check_csrf(&who.csrf, f.csrf.as_deref())?;
    let again = |e: ApiError| {
        let markup = body(&state, &who, None, Some(&message(&e)));
        Ok(with_retry_after(
            &e,
            respond(e.status(), page("Change password", nav(&who), markup)),
        ))
    };
    let new = f.new.unwrap_or_default();
    if new != f.new2.unwrap_or_default() {
        return again(ApiError::bad_request("The two new passwords differ."));
    }
    if needs_otp(&who) {
        let code = f.otp.as_deref().unwrap_or_default();
        if let Err(e) = second_factor::verify_code(&state, &who.user, code, client).await {
            return again(match e {
                ApiError::Unauthorized { .. } => ApiError::Unauthorized {
                    message: "The one-time password is missing, wrong, or was used already.".into(),
                    challenge: None,
                },
                other => other,
            });
        }
    }
    let principal = Principal {
        user: std::sync::Arc::new(who.user.clone()),
        credential: Credential::Password,
    };
    let change = PasswordChange {
        old: f.old.unwrap_or_default(),
        new,
    };
    if let Err(e) = profile::change_password(&state, &principal, &change, client).await {
        return again(e);
    }
    let ended = state
        .store
        .delete_user_web_sessions(who.user.id, Some(&who.id_hash))
        .await?;
    tracing::info!(user = %who.user.name, ended, "password changed on the web; other browser sessions ended");
    let markup = body(
        &state,
        &who,
        Some("Your password was changed. Other sessions were signed out."),
        None,
    );
    Ok(respond(
        StatusCode::OK,
        page("Change password", nav(&who), markup),
    ))
}
