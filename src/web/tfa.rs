//! The two-factor page: enable (QR code rendered here as SVG, and the secret as text), confirm
//! with a code, see the recovery codes once; disable with the password and a code. The changes
//! are `api::profile::tfa_settings` and `confirm`, the code of `npm profile enable-2fa`.

use super::layout::{csrf_field, error_box, page, respond, Nav};
use super::session::{check_csrf, SignedIn};
use super::{form, message, query, with_retry_after, WebError};
use crate::api::profile;
use crate::auth::ClientAddr;
use crate::error::ApiError;
use crate::second_factor;
use crate::store::TfaState;
use crate::totp;
use crate::AppState;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use maud::{html, Markup, PreEscaped};
use serde::Deserialize;

#[derive(Deserialize, Default)]
pub struct NoticeQuery {
    notice: Option<String>,
}

/// No `Debug`: it holds the password.
#[derive(Deserialize, Default)]
pub struct EnableForm {
    csrf: Option<String>,
    password: Option<String>,
    mode: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct ConfirmForm {
    csrf: Option<String>,
    code: Option<String>,
}

/// No `Debug`: it holds the password.
#[derive(Deserialize, Default)]
pub struct DisableForm {
    csrf: Option<String>,
    password: Option<String>,
    otp: Option<String>,
}

fn nav(who: &SignedIn) -> Option<Nav<'_>> {
    Some(Nav {
        user: &who.user.name,
        csrf: &who.csrf,
    })
}

/// The otpauth URL as a QR code, an inline SVG.
pub fn qr_svg(url: &str) -> Result<String, ApiError> {
    let code = qrcode::QrCode::new(url.as_bytes())
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("QR code: {e}")))?;
    let svg = code
        .render::<qrcode::render::svg::Color>()
        .min_dimensions(200, 200)
        .quiet_zone(true)
        .build();
    // Inline in HTML: without the XML declaration.
    Ok(match svg.find("<svg") {
        Some(i) => svg[i..].to_owned(),
        None => svg,
    })
}

fn enable_form(who: &SignedIn, heading: &str) -> Markup {
    html! {
        h2 { (heading) }
        form method="post" action="/-/web/tfa/enable" {
            (csrf_field(&who.csrf))
            label for="mode" { "Ask for a one-time password" }
            select #mode name="mode" {
                option value="auth-only" { "When signing in and changing tokens or the account (auth-only)" }
                option value="auth-and-writes" { "Also when publishing and changing packages (auth-and-writes)" }
            }
            label for="password" { "Your password" }
            input #password type="password" name="password" autocomplete="current-password" required;
            div.actions { button type="submit" { "Set up two-factor authentication" } }
        }
    }
}

/// The page for the user's current two-factor state.
fn body(
    state: &AppState,
    who: &SignedIn,
    notice: Option<&str>,
    error: Option<&str>,
) -> Result<Markup, ApiError> {
    let tfa = who.user.tfa.as_ref();
    let pending = match tfa {
        Some(t) if t.pending => Some(pending_parts(state, who, t)?),
        _ => None,
    };
    Ok(html! {
        section.card {
            h1 { "Two-factor authentication" }
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            (error_box(error))
            @match (tfa, pending) {
                (Some(_), Some((svg, secret))) => {
                    p { "Scan this QR code with your authenticator app, or type the secret into it, then enter the code it shows." }
                    div.row {
                        div { div.qr role="img" aria-label="QR code of the two-factor secret" { (PreEscaped(svg)) } }
                        div {
                            label for="tfa-secret" { "Secret" }
                            div.secret {
                                input #tfa-secret type="text" readonly value=(secret) spellcheck="false";
                                button type="button" data-copy="tfa-secret" { "Copy" }
                            }
                            form method="post" action="/-/web/tfa/confirm" {
                                (csrf_field(&who.csrf))
                                label for="code" { "Code from the app" }
                                input #code type="text" name="code" inputmode="numeric" autocomplete="one-time-code" required autofocus;
                                div.actions { button type="submit" { "Confirm and enable" } }
                            }
                        }
                    }
                    (enable_form(who, "Start over"))
                }
                (Some(t), _) => {
                    p { "Two-factor authentication is " strong { "on" } " (" code { (t.mode.as_str()) } "): "
                        @if t.mode == crate::store::TfaMode::AuthAndWrites {
                            "a one-time password is asked when signing in, for token and account changes, and for package writes."
                        } @else {
                            "a one-time password is asked when signing in and for token and account changes."
                        }
                    }
                    h2 { "Turn it off" }
                    form method="post" action="/-/web/tfa/disable" {
                        (csrf_field(&who.csrf))
                        div.row {
                            div {
                                label for="password" { "Your password" }
                                input #password type="password" name="password" autocomplete="current-password" required;
                            }
                            div {
                                label for="otp" { "One-time password" }
                                input #otp type="text" name="otp" inputmode="numeric" autocomplete="one-time-code" required;
                            }
                        }
                        div.actions { button.danger type="submit" { "Disable two-factor authentication" } }
                    }
                }
                (None, _) => {
                    p { "Two-factor authentication is " strong { "off" } ". With it on, signing in and changing tokens need a code from an authenticator app as well as your password." }
                    (enable_form(who, "Turn it on"))
                }
            }
        }
    })
}

/// The QR code and the secret of a pending enrolment.
fn pending_parts(
    state: &AppState,
    who: &SignedIn,
    tfa: &TfaState,
) -> Result<(String, String), ApiError> {
    let secret = state.keys.open(&tfa.sealed_secret).map_err(|e| {
        ApiError::Internal(e.context("cannot open a TOTP secret for the two-factor page"))
    })?;
    let url = totp::otpauth_url(&state.config.tfa_issuer, &who.user.name, &secret);
    Ok((qr_svg(&url)?, totp::base32(&secret)))
}

fn render(
    state: &AppState,
    who: &SignedIn,
    status: StatusCode,
    notice: Option<&str>,
    error: Option<&ApiError>,
) -> Result<Response, WebError> {
    let text = error.map(message);
    let markup = body(state, who, notice, text.as_deref())?;
    let response = respond(status, page("Two-factor authentication", nav(who), markup));
    Ok(match error {
        Some(e) => with_retry_after(e, response),
        None => response,
    })
}

/// The page again with an error, for the user as stored now.
async fn refused(state: &AppState, who: &SignedIn, e: ApiError) -> Result<Response, WebError> {
    let mut who = who.clone();
    who.user = profile::reload(state, &who.user).await?;
    render(state, &who, e.status(), None, Some(&e))
}

/// `GET /-/web/tfa`
pub async fn show(
    State(state): State<AppState>,
    who: SignedIn,
    q: Result<Query<NoticeQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let q = query(q)?;
    let notice = match q.notice.as_deref() {
        Some("disabled") => Some("Two-factor authentication is off."),
        _ => None,
    };
    render(&state, &who, StatusCode::OK, notice, None)
}

/// `POST /-/web/tfa/enable`: starts (or restarts) enrolment.
pub async fn enable(
    State(state): State<AppState>,
    who: SignedIn,
    ClientAddr(client): ClientAddr,
    f: Result<Form<EnableForm>, FormRejection>,
) -> Result<Response, WebError> {
    let f = form(f)?;
    check_csrf(&who.csrf, f.csrf.as_deref())?;
    if who.user.tfa.as_ref().is_some_and(|t| t.enabled()) {
        return refused(
            &state,
            &who,
            ApiError::Conflict("Two-factor authentication is already on.".into()),
        )
        .await;
    }
    let password = f.password.unwrap_or_default();
    let mode = f.mode.unwrap_or_default();
    if let Err(e) = profile::tfa_settings(&state, &who.user, &password, &mode, client).await {
        return refused(&state, &who, e).await;
    }
    Ok(Redirect::to("/-/web/tfa").into_response())
}

/// `POST /-/web/tfa/confirm`: enables it and shows the recovery codes, once.
pub async fn confirm(
    State(state): State<AppState>,
    who: SignedIn,
    ClientAddr(client): ClientAddr,
    f: Result<Form<ConfirmForm>, FormRejection>,
) -> Result<Response, WebError> {
    let f = form(f)?;
    check_csrf(&who.csrf, f.csrf.as_deref())?;
    let code = f.code.unwrap_or_default();
    let answer = match profile::confirm(&state, &who.user, &[code], client).await {
        Ok(answer) => answer,
        Err(ApiError::Unauthorized { .. }) => {
            let e = ApiError::Unauthorized {
                message: "That code is not right: enter the code your authenticator app shows now."
                    .into(),
                challenge: None,
            };
            return refused(&state, &who, e).await;
        }
        Err(e) => return refused(&state, &who, e).await,
    };
    let codes = match answer.tfa {
        Some(profile::Tfa::RecoveryCodes(codes)) => codes,
        _ => Vec::new(),
    };
    let markup = html! {
        section.card {
            h1 { "Two-factor authentication is on" }
            p.warn role="status" { strong { "Save these recovery codes now: they will not be shown again." }
                " Each one works once instead of a code from your app, if you lose it." }
            textarea #recovery-codes.mono readonly rows=(codes.len()) aria-label="Recovery codes" spellcheck="false" { (codes.join("\n")) }
            div.actions { button type="button" data-copy="recovery-codes" { "Copy" } }
            div.actions { a.button href="/-/web/tfa" { "Done" } }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page("Recovery codes", nav(&who), markup),
    ))
}

/// `POST /-/web/tfa/disable`: with the password and a one-time password.
pub async fn disable(
    State(state): State<AppState>,
    who: SignedIn,
    ClientAddr(client): ClientAddr,
    f: Result<Form<DisableForm>, FormRejection>,
) -> Result<Response, WebError> {
    let f = form(f)?;
    check_csrf(&who.csrf, f.csrf.as_deref())?;
    if !who.user.tfa.as_ref().is_some_and(|t| t.enabled()) {
        return Ok(Redirect::to("/-/web/tfa").into_response());
    }
    let code = f.otp.unwrap_or_default();
    if let Err(e) = second_factor::verify_code(&state, &who.user, &code, client).await {
        let e = match e {
            ApiError::Unauthorized { .. } => ApiError::Unauthorized {
                message: "The one-time password is missing, wrong, or was used already.".into(),
                challenge: None,
            },
            other => other,
        };
        return refused(&state, &who, e).await;
    }
    let password = f.password.unwrap_or_default();
    if let Err(e) = profile::tfa_settings(&state, &who.user, &password, "disable", client).await {
        return refused(&state, &who, e).await;
    }
    Ok(Redirect::to("/-/web/tfa?notice=disabled").into_response())
}
