//! The Access Tokens page: the user's tokens, Generate New Token (shown once), revoke with a
//! confirmation. Creation and revocation are `api::tokens::create_token` and `revoke_token`,
//! the code of `npm token create|revoke`.

use super::layout::{csrf_field, error_box, page, respond, Nav};
use super::session::{check_csrf, SignedIn};
use super::{form, message, query, when, with_retry_after, WebError};
use crate::api::tokens::{create_token, revoke_token};
use crate::auth::ClientAddr;
use crate::error::ApiError;
use crate::policy::{self, Access, Credential};
use crate::second_factor;
use crate::store::{TokenKind, TokenRecord, TokensFrom, User};
use crate::token::TokenKey;
use crate::token_request::{self, CreateTokenBody, ExpiryLimits};
use crate::AppState;
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{Form, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use maud::{html, Markup};
use serde::Deserialize;

const PER_PAGE: i64 = 50;
/// What the web session is called in the audit log's `by`.
const BY: &str = "web session";

#[derive(Deserialize, Default)]
pub struct ListQuery {
    page: Option<i64>,
    notice: Option<String>,
}

/// The Generate New Token form. No `Debug`: it holds the password.
#[derive(Deserialize, Default)]
pub struct NewTokenForm {
    csrf: Option<String>,
    name: Option<String>,
    kind: Option<String>,
    expires: Option<String>,
    cidr: Option<String>,
    packages: Option<String>,
    scopes: Option<String>,
    packages_all: Option<String>,
    packages_permission: Option<String>,
    orgs: Option<String>,
    orgs_permission: Option<String>,
    bypass_2fa: Option<String>,
    password: Option<String>,
    otp: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct KeyQuery {
    key: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct RevokeForm {
    csrf: Option<String>,
    key: Option<String>,
    otp: Option<String>,
}

fn nav(who: &SignedIn) -> Option<Nav<'_>> {
    Some(Nav {
        user: &who.user.name,
        csrf: &who.csrf,
    })
}

/// Whether changing tokens needs a one-time password for this user (as through the API).
fn needs_otp(user: &User) -> bool {
    let mode = user.tfa.as_ref().filter(|t| t.enabled()).map(|t| t.mode);
    policy::otp_required(mode, &Credential::Password, Access::ManageTokens)
}

fn kind_badge(t: &TokenRecord) -> Markup {
    let kind = t.kind.as_str();
    html! { span class=(format!("badge {kind}")) { (kind) } }
}

/// What a granular token reaches, in one line.
fn reach(t: &TokenRecord) -> Option<String> {
    if t.kind != TokenKind::Granular {
        return None;
    }
    let mut parts = Vec::new();
    let perm = |p: Option<crate::store::Permission>| p.map(|p| p.as_str()).unwrap_or("no-access");
    let mut targets: Vec<String> = t.packages.clone();
    targets.extend(t.scopes.iter().map(|s| format!("{s}/*")));
    if t.packages_all {
        targets.insert(0, "all packages".into());
    }
    if !targets.is_empty() {
        parts.push(format!(
            "{} ({})",
            targets.join(", "),
            perm(t.packages_and_scopes_permission)
        ));
    }
    if !t.orgs.is_empty() {
        parts.push(format!(
            "orgs {} ({})",
            t.orgs.join(", "),
            perm(t.orgs_permission)
        ));
    }
    if t.bypass_2fa {
        parts.push("bypasses two-factor for writes".into());
    }
    Some(parts.join("; "))
}

/// `GET /-/web/tokens?page=N`
pub async fn list(
    State(state): State<AppState>,
    who: SignedIn,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let q = query(q)?;
    let page_no = q.page.unwrap_or(0).clamp(0, i64::from(u32::MAX));
    let (tokens, total) = state
        .store
        .list_tokens(
            who.user.id,
            &TokensFrom::Offset(page_no * PER_PAGE),
            PER_PAGE,
        )
        .await?;
    let notice = match q.notice.as_deref() {
        Some("revoked") => Some("The token was revoked: it no longer works."),
        _ => None,
    };
    let now = Utc::now();
    let body = html! {
        section.card {
            div.head {
                h1 { "Access Tokens" }
                a.button href="/-/web/tokens/new" { "Generate New Token" }
            }
            p.muted {
                "Tokens let npm and other tools act for you. " (total) " token"
                @if total != 1 { "s" } ", login sessions included."
            }
            @if let Some(n) = notice { p.notice role="status" { (n) } }
            @if tokens.is_empty() {
                p { "You have no tokens yet." }
            } @else {
                table {
                    thead { tr {
                        th scope="col" { "Name" } th scope="col" { "Type" } th scope="col" { "Token" }
                        th scope="col" { "Created" } th scope="col" { "Last used" }
                        th scope="col" { "Expires" } th scope="col" { "Allowed addresses" }
                        th scope="col" { span.muted { "Action" } }
                    } }
                    tbody {
                        @for t in &tokens {
                            tr {
                                td {
                                    (t.name.as_deref().unwrap_or("—"))
                                    @if let Some(r) = reach(t) { br; span.hint { (r) } }
                                }
                                td { (kind_badge(t)) }
                                td { code { (t.redacted) "…" } }
                                td { (when(t.created)) }
                                td {
                                    @match (&t.last_used, &t.last_used_ip) {
                                        (Some(at), Some(ip)) => { (when(*at)) br; span.hint { "from " (ip) } }
                                        (Some(at), None) => { (when(*at)) }
                                        _ => { span.muted { "never" } }
                                    }
                                }
                                td {
                                    @match t.expires {
                                        Some(e) if e <= now => { "expired " (when(e)) }
                                        Some(e) => { (when(e)) }
                                        None => { span.muted { "never" } }
                                    }
                                }
                                td {
                                    @match &t.cidr_whitelist {
                                        Some(list) => { code { (list.join(", ")) } }
                                        None => { span.muted { "any" } }
                                    }
                                }
                                td {
                                    a.button.secondary href=(format!("/-/web/tokens/revoke?key={}", t.key.0))
                                        aria-label=(format!("Revoke {}", t.name.as_deref().unwrap_or(&t.redacted))) { "Revoke" }
                                }
                            }
                        }
                    }
                }
                div.actions {
                    @if page_no > 0 { a href=(format!("/-/web/tokens?page={}", page_no - 1)) { "← Newer" } }
                    @if (page_no + 1) * PER_PAGE < total { a href=(format!("/-/web/tokens?page={}", page_no + 1)) { "Older →" } }
                }
            }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page("Access Tokens", nav(&who), body),
    ))
}

fn new_form_body(
    state: &AppState,
    who: &SignedIn,
    f: &NewTokenForm,
    error: Option<&str>,
) -> Markup {
    let max = state.config.max_token_expiry_days;
    let default = state.config.default_token_expiry_days;
    let kind = f.kind.as_deref().unwrap_or("publish");
    let v = |o: &Option<String>| o.clone().unwrap_or_default();
    let perm =
        |field: &Option<String>, value: &str| field.as_deref().unwrap_or("read-only") == value;
    let kinds = [
        (
            "publish",
            "Publish: everything you may do (full permission)",
        ),
        ("read-only", "Read-only: install and read packages"),
        (
            "automation",
            "Automation: for CI; publishes without a one-time password, cannot manage tokens",
        ),
        (
            "granular",
            "Granular: only the packages, scopes and orgs chosen below",
        ),
    ];
    let perms = [
        ("read-only", "Read-only"),
        ("read-write", "Read and write"),
        ("no-access", "No access"),
    ];
    html! {
        section.card {
            h1 { "Generate New Token" }
            (error_box(error))
            form method="post" action="/-/web/tokens" {
                (csrf_field(&who.csrf))
                div.row {
                    div {
                        label for="name" { "Name" }
                        input #name type="text" name="name" value=(v(&f.name)) maxlength="128" required;
                    }
                    div {
                        label for="expires" { "Expires in (days) " span.hint {
                            "1 to " (max) "; empty: "
                            @if default == 0 { "never" } @else { (default) " days" }
                        } }
                        input #expires type="number" name="expires" min="1" max=(max) value=(v(&f.expires));
                    }
                }
                label for="kind" { "Type" }
                select #kind name="kind" {
                    @for (value, text) in kinds {
                        option value=(value) selected[kind == value] { (text) }
                    }
                }
                label for="cidr" { "Allowed IP ranges " span.hint { "(CIDR, comma-separated, IPv4 or IPv6; empty: any address)" } }
                input #cidr type="text" name="cidr" value=(v(&f.cidr)) placeholder="10.0.0.0/8, 2001:db8::/32";
                fieldset {
                    legend { "Granular tokens only" }
                    div.row {
                        div {
                            label for="packages" { "Packages " span.hint { "(comma-separated)" } }
                            input #packages type="text" name="packages" value=(v(&f.packages)) placeholder="lodash, @acme/ui";
                        }
                        div {
                            label for="scopes" { "Scopes " span.hint { "(comma-separated)" } }
                            input #scopes type="text" name="scopes" value=(v(&f.scopes)) placeholder="@acme";
                        }
                    }
                    label.check { input type="checkbox" name="packages_all" value="on" checked[f.packages_all.is_some()]; "All packages" }
                    label for="packages_permission" { "Permission for these packages and scopes" }
                    select #packages_permission name="packages_permission" {
                        @for (value, text) in perms { option value=(value) selected[perm(&f.packages_permission, value)] { (text) } }
                    }
                    div.row {
                        div {
                            label for="orgs" { "Organizations " span.hint { "(comma-separated)" } }
                            input #orgs type="text" name="orgs" value=(v(&f.orgs)) placeholder="acme";
                        }
                        div {
                            label for="orgs_permission" { "Permission for these organizations" }
                            select #orgs_permission name="orgs_permission" {
                                @for (value, text) in perms { option value=(value) selected[perm(&f.orgs_permission, value)] { (text) } }
                            }
                        }
                    }
                    label.check { input type="checkbox" name="bypass_2fa" value="on" checked[f.bypass_2fa.is_some()]; "Bypass two-factor authentication for package writes" }
                }
                label for="password" { "Your password " span.hint { "(needed for every new token)" } }
                input #password type="password" name="password" autocomplete="current-password" required;
                @if needs_otp(&who.user) {
                    label for="otp" { "One-time password" }
                    input #otp type="text" name="otp" inputmode="numeric" autocomplete="one-time-code" required;
                }
                div.actions {
                    button type="submit" { "Generate Token" }
                    a.button.secondary href="/-/web/tokens" { "Cancel" }
                }
            }
        }
    }
}

/// `GET /-/web/tokens/new`
pub async fn new_form(State(state): State<AppState>, who: SignedIn) -> Response {
    let body = new_form_body(&state, &who, &NewTokenForm::default(), None);
    respond(StatusCode::OK, page("Generate New Token", nav(&who), body))
}

/// Comma- or space-separated entries.
fn entries(text: &Option<String>) -> Vec<String> {
    text.as_deref()
        .unwrap_or_default()
        .split([',', ' ', '\n', '\r', '\t'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The form as the API's create body, so the API's validation applies as it is.
fn to_body(f: &NewTokenForm) -> Result<CreateTokenBody, ApiError> {
    let packages = entries(&f.packages);
    let scopes = entries(&f.scopes);
    let orgs = entries(&f.orgs);
    let packages_all = f.packages_all.is_some();
    let selects_packages = packages_all || !packages.is_empty() || !scopes.is_empty();
    let granular_given = selects_packages || !orgs.is_empty();
    let kind = f.kind.as_deref().unwrap_or("publish");
    let mut body = CreateTokenBody {
        password: f.password.clone(),
        name: f.name.clone(),
        bypass_2fa: f.bypass_2fa.is_some().then_some(true),
        ..CreateTokenBody::default()
    };
    match kind {
        "granular" => {
            if !granular_given {
                return Err(ApiError::bad_request(
                    "A granular token needs packages, scopes, all packages, or orgs.",
                ));
            }
            body.packages_all = packages_all.then_some(true);
            body.packages_and_scopes_permission =
                selects_packages.then(|| f.packages_permission.clone().unwrap_or_default());
            body.orgs_permission =
                (!orgs.is_empty()).then(|| f.orgs_permission.clone().unwrap_or_default());
            body.packages = (!packages.is_empty()).then_some(packages);
            body.scopes = (!scopes.is_empty()).then_some(scopes);
            body.orgs = (!orgs.is_empty()).then_some(orgs);
        }
        "publish" | "read-only" | "automation" if granular_given => {
            return Err(ApiError::bad_request(
                "Packages, scopes and orgs apply to granular tokens: choose the type Granular, \
                 or leave them empty.",
            ));
        }
        "publish" => {}
        "read-only" => body.readonly = Some(true),
        "automation" => body.automation = Some(true),
        _ => {
            return Err(ApiError::bad_request(
                "Choose a token type: publish, read-only, automation or granular.",
            ))
        }
    }
    let cidr = entries(&f.cidr);
    body.cidr_whitelist = (!cidr.is_empty()).then_some(cidr);
    let expires = f.expires.as_deref().map(str::trim).unwrap_or_default();
    if !expires.is_empty() {
        body.expires = Some(match expires.parse::<u64>() {
            Ok(days) => serde_json::Value::from(days),
            Err(_) => serde_json::Value::from(expires),
        });
    }
    Ok(body)
}

/// `POST /-/web/tokens`: creates the token and shows it, once.
pub async fn create(
    State(state): State<AppState>,
    who: SignedIn,
    ClientAddr(client): ClientAddr,
    f: Result<Form<NewTokenForm>, FormRejection>,
) -> Result<Response, WebError> {
    let f = form(f)?;
    check_csrf(&who.csrf, f.csrf.as_deref())?;
    let again = |e: ApiError| {
        let body = new_form_body(&state, &who, &f, Some(&message(&e)));
        Ok(with_retry_after(
            &e,
            respond(e.status(), page("Generate New Token", nav(&who), body)),
        ))
    };
    let body = match to_body(&f) {
        Ok(body) => body,
        Err(e) => return again(e),
    };
    // Invalid input is refused before a one-time password is spent on it.
    let limits = ExpiryLimits {
        max_days: state.config.max_token_expiry_days,
        default_days: state.config.default_token_expiry_days,
    };
    if let Err(m) = token_request::validate(&body, limits, Utc::now()) {
        return again(ApiError::BadRequest(m));
    }
    if needs_otp(&who.user) {
        let code = f.otp.as_deref().unwrap_or_default();
        if let Err(e) = second_factor::verify_code(&state, &who.user, code, client).await {
            return again(otp_refused(e));
        }
    }
    let (token, record) = match create_token(&state, &who.user, BY, &body, client).await {
        Ok(created) => created,
        Err(e) => return again(e),
    };
    let body = html! {
        section.card {
            h1 { "Your new token" }
            p.warn role="status" { strong { "Copy it now: it will not be shown again." } " Store it where your tools read it (for npm: "
                code { "//registry/:_authToken=…" } " in .npmrc)." }
            div.secret {
                input #new-token type="text" readonly value=(token.expose()) aria-label="New token" spellcheck="false";
                button type="button" data-copy="new-token" { "Copy" }
            }
            table {
                tbody {
                    tr { th scope="row" { "Name" } td { (record.name.as_deref().unwrap_or("—")) } }
                    tr { th scope="row" { "Type" } td { (kind_badge(&record)) @if let Some(r) = reach(&record) { " " span.hint { (r) } } } }
                    tr { th scope="row" { "Expires" } td { @match record.expires { Some(e) => (when(e)), None => "never" } } }
                    tr { th scope="row" { "Allowed addresses" } td { @match &record.cidr_whitelist { Some(l) => code { (l.join(", ")) }, None => "any" } } }
                }
            }
            div.actions { a.button href="/-/web/tokens" { "Back to Access Tokens" } }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page("Your new token", nav(&who), body),
    ))
}

/// A refused one-time password, said for a form field.
fn otp_refused(e: ApiError) -> ApiError {
    match e {
        ApiError::Unauthorized { .. } => ApiError::Unauthorized {
            message: "The one-time password is missing, wrong, or was used already: enter the \
                      current code from your authenticator app."
                .into(),
            challenge: None,
        },
        other => other,
    }
}

/// The user's live token with this key.
async fn own_token(
    state: &AppState,
    who: &SignedIn,
    key: Option<&str>,
) -> Result<TokenRecord, WebError> {
    let key = key
        .and_then(TokenKey::parse_hex)
        .ok_or_else(|| WebError(ApiError::bad_request("That is not a token id.")))?;
    match state.store.token_by_key(&key).await? {
        Some(found) if found.owner.id == who.user.id && found.token.revoked.is_none() => {
            Ok((*found.token).clone())
        }
        _ => Err(WebError(ApiError::not_found(
            "No token of yours has that id: it may have been revoked already.",
        ))),
    }
}

fn revoke_body(who: &SignedIn, t: &TokenRecord, error: Option<&str>) -> Markup {
    html! {
        section.card.narrow {
            h1 { "Revoke this token?" }
            (error_box(error))
            p { "Tools using it will stop working at once. This cannot be undone." }
            table { tbody {
                tr { th scope="row" { "Name" } td { (t.name.as_deref().unwrap_or("—")) } }
                tr { th scope="row" { "Type" } td { (kind_badge(t)) } }
                tr { th scope="row" { "Token" } td { code { (t.redacted) "…" } } }
                tr { th scope="row" { "Created" } td { (when(t.created)) } }
            } }
            form method="post" action="/-/web/tokens/revoke" {
                (csrf_field(&who.csrf))
                input type="hidden" name="key" value=(t.key.0);
                @if needs_otp(&who.user) {
                    label for="otp" { "One-time password" }
                    input #otp type="text" name="otp" inputmode="numeric" autocomplete="one-time-code" required;
                }
                div.actions {
                    button.danger type="submit" { "Revoke token" }
                    a.button.secondary href="/-/web/tokens" { "Cancel" }
                }
            }
        }
    }
}

/// `GET /-/web/tokens/revoke?key=HEX`: the confirmation.
pub async fn confirm_revoke(
    State(state): State<AppState>,
    who: SignedIn,
    q: Result<Query<KeyQuery>, QueryRejection>,
) -> Result<Response, WebError> {
    let q = query(q)?;
    let token = own_token(&state, &who, q.key.as_deref()).await?;
    let body = revoke_body(&who, &token, None);
    Ok(respond(
        StatusCode::OK,
        page("Revoke token", nav(&who), body),
    ))
}

/// `POST /-/web/tokens/revoke`
pub async fn revoke(
    State(state): State<AppState>,
    who: SignedIn,
    ClientAddr(client): ClientAddr,
    f: Result<Form<RevokeForm>, FormRejection>,
) -> Result<Response, WebError> {
    let f = form(f)?;
    check_csrf(&who.csrf, f.csrf.as_deref())?;
    let token = own_token(&state, &who, f.key.as_deref()).await?;
    if needs_otp(&who.user) {
        let code = f.otp.as_deref().unwrap_or_default();
        if let Err(e) = second_factor::verify_code(&state, &who.user, code, client).await {
            let e = otp_refused(e);
            let body = revoke_body(&who, &token, Some(&message(&e)));
            return Ok(with_retry_after(
                &e,
                respond(e.status(), page("Revoke token", nav(&who), body)),
            ));
        }
    }
    revoke_token(&state, &who.user, &token.key, BY).await?;
    Ok(Redirect::to("/-/web/tokens?notice=revoked").into_response())
}
