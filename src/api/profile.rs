//! `npm profile get|set|enable-2fa|disable-2fa`: `/-/npm/v1/user`.
//!
//! The gate has already demanded a one-time password for any change to an account whose
//! two-factor authentication is enabled; handlers here check the password where npm sends one.

use super::{iso, JsonBody};
use crate::attempts;
use crate::audit::Event;
use crate::auth::{ClientAddr, Principal};
use crate::error::ErrorBody;
use crate::error::{ApiError, Challenge};
use crate::names;
use crate::openapi::OtpHeader;
use crate::second_factor;
use crate::store::{ProfileFields, TfaMode, User};
use crate::totp;
use crate::AppState;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use std::net::IpAddr;
use utoipa::ToSchema;

const MAX_FIELD_CHARS: usize = 256;

/// The profile as npm shows it.
#[derive(Serialize, ToSchema)]
pub struct Profile {
    pub name: String,
    pub email: String,
    /// Always `false`: tokengate does not verify addresses.
    pub email_verified: bool,
    /// `null` when two-factor authentication is off.
    pub tfa: Option<Tfa>,
    #[schema(format = DateTime)]
    pub created: String,
    #[schema(format = DateTime)]
    pub updated: String,
    /// Always `null`: accounts have no address limits (tokens do).
    pub cidr_whitelist: Option<Vec<String>>,
    pub fullname: Option<String>,
    pub homepage: Option<String>,
    pub freenode: Option<String>,
    pub twitter: Option<String>,
    pub github: Option<String>,
}

/// The profile's `tfa`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum Tfa {
    /// The account's two-factor state.
    State { pending: bool, mode: TfaMode },
    /// The answer to an enrolment: the otpauth URL for the authenticator app.
    EnrolmentUrl(String),
    /// The answer to the confirmation: the recovery codes, shown once.
    RecoveryCodes(Vec<String>),
}

impl Profile {
    pub fn of(user: &User) -> Profile {
        let p = &user.profile;
        Profile {
            name: user.name.clone(),
            email: user.email.clone(),
            email_verified: false,
            tfa: user.tfa.as_ref().map(|t| Tfa::State {
                pending: t.pending,
                mode: t.mode,
            }),
            created: iso(user.created),
            updated: iso(user.updated),
            cidr_whitelist: None,
            fullname: p.fullname.clone(),
            homepage: p.homepage.clone(),
            freenode: p.freenode.clone(),
            twitter: p.twitter.clone(),
            github: p.github.clone(),
        }
    }
}

/// `GET /-/npm/v1/user`
#[utoipa::path(
    get,
    path = "/-/npm/v1/user",
    tag = "profile",
    summary = "npm profile get",
    responses((status = 200, description = "The caller's profile.", body = Profile))
)]
pub async fn get(principal: Principal) -> Json<Profile> {
    Json(Profile::of(&principal.user))
}

/// Absent → `None`; `null` → `Some(None)`; a value → `Some(Some(v))`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// What `npm profile set` and `enable-2fa`/`disable-2fa` send: absent fields are kept, `null`
/// or `""` clears a free-form field. No `Debug`: it holds passwords.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    #[serde(default, deserialize_with = "present")]
    email: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    password: Option<Option<PasswordChange>>,
    #[serde(default, deserialize_with = "present")]
    fullname: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    homepage: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    freenode: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    twitter: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    github: Option<Option<String>>,
    tfa: Option<TfaChange>,
}

/// A new password; `old` is the current one.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub old: String,
    pub new: String,
}

/// `{password, mode}` to enrol, change mode or disable; `["CODE"]` to confirm enrolment.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
pub enum TfaChange {
    /// `mode`: `auth-only`, `auth-and-writes` or `disable`.
    Settings {
        password: String,
        mode: String,
    },
    Confirm(Vec<String>),
}

/// `POST /-/npm/v1/user`
#[utoipa::path(
    post,
    path = "/-/npm/v1/user",
    tag = "profile",
    summary = "npm profile set / enable-2fa / disable-2fa",
    params(OtpHeader),
    request_body = ProfileUpdate,
    responses(
        (status = 200, description = "The profile after the change; its `tfa` is the otpauth URL \
            when enrolment started, the recovery codes when it was confirmed.", body = Profile),
        (status = 400, description = "The body is not valid, mixes `tfa` with other changes, or \
            a value is not acceptable (the message says which).", body = ErrorBody),
        (status = 401, description = "Wrong password (`WWW-Authenticate: Basic`), a wrong or \
            missing one-time password (`OTP`), or credentials that are not valid.",
            body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "The account was deleted meanwhile.", body = ErrorBody),
        (status = 409, description = "A code was sent but no enrolment is pending, or another \
            request confirmed it.", body = ErrorBody),
        (status = 413, description = "The body is larger than `max_body_bytes`.",
            body = ErrorBody),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    principal: Principal,
    ClientAddr(client): ClientAddr,
    body: Result<JsonBody<ProfileUpdate>, ApiError>,
) -> Result<Json<Profile>, ApiError> {
    let JsonBody(body) = body.map_err(|e| match e {
        // serde's untagged-enum error says nothing useful; say what `tfa` may be.
        ApiError::BadRequest(m) if m.contains("at `tfa`") => ApiError::bad_request(
            "Invalid JSON body at `tfa`: send {\"password\": …, \"mode\": \"auth-only\" | \
             \"auth-and-writes\" | \"disable\"} or [\"CODE\"].",
        ),
        other => other,
    })?;
    let user = principal.user.clone();
    if let Some(tfa) = body.tfa {
        let others = body.email.is_some()
            || body.password.is_some()
            || body.fullname.is_some()
            || body.homepage.is_some()
            || body.freenode.is_some()
            || body.twitter.is_some()
            || body.github.is_some();
        if others {
            return Err(ApiError::bad_request(
                "Change two-factor authentication in a request of its own.",
            ));
        }
        return match tfa {
            TfaChange::Settings { password, mode } => {
                tfa_settings(&state, &user, &password, &mode, client).await
            }
            TfaChange::Confirm(codes) => confirm(&state, &user, &codes, client).await,
        }
        .map(Json);
    }

    if let Some(Some(change)) = &body.password {
        change_password(&state, &principal, change, client).await?;
        // Browsers signed in to the web pages sign in again with the new password.
        state.store.delete_user_web_sessions(user.id, None).await?;
    }
    let fields = ProfileFields {
        fullname: merge("fullname", body.fullname, &user.profile.fullname)?,
        homepage: merge("homepage", body.homepage, &user.profile.homepage)?,
        freenode: merge("freenode", body.freenode, &user.profile.freenode)?,
        twitter: merge("twitter", body.twitter, &user.profile.twitter)?,
        github: merge("github", body.github, &user.profile.github)?,
    };
    let email = match body.email {
        Some(Some(email)) if email != user.email => {
            names::validate_email(&email).map_err(ApiError::BadRequest)?;
            email
        }
        _ => user.email.clone(),
    };
    if email != user.email || fields != user.profile {
        state.store.update_profile(user.id, &email, &fields).await?;
        tracing::info!(user = %user.name, "profile changed");
        let detail = json!({ "email_changed": email != user.email });
        state
            .audit
            .note(Event::ProfileChanged, Some(&user.name), None, detail);
    }
    Ok(Json(Profile::of(&reload(&state, &user).await?)))
}

/// A free-form field: absent keeps it, `null` or `""` clears it, a value replaces it.
fn merge(
    name: &str,
    sent: Option<Option<String>>,
    current: &Option<String>,
) -> Result<Option<String>, ApiError> {
    let Some(value) = sent else {
        return Ok(current.clone());
    };
    let value = value.map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    if let Some(v) = &value {
        if v.chars().count() > MAX_FIELD_CHARS || v.chars().any(char::is_control) {
            return Err(ApiError::bad_request(format!(
                "{name} must be at most {MAX_FIELD_CHARS} characters, without control characters."
            )));
        }
    }
    Ok(value)
}

pub async fn reload(state: &AppState, user: &User) -> Result<User, ApiError> {
    state
        .store
        .user_by_name(&user.name)
        .await?
        .ok_or_else(|| ApiError::not_found("This account no longer exists."))
}

pub async fn require_password(
    state: &AppState,
    user: &User,
    password: &str,
    client: IpAddr,
) -> Result<(), ApiError> {
    let stored = Some(user.password_hash.as_str());
    if attempts::check_password(state, &user.name, stored, password, client).await? {
        Ok(())
    } else {
        tracing::info!(user = %user.name, %client, "profile change refused: wrong password");
        Err(ApiError::unauthorized(
            "Incorrect or missing password.",
            Challenge::Basic,
        ))
    }
}

/// `{password: {old, new}}`: other login sessions are revoked, the caller's own is kept.
/// Shared with the web password page.
pub async fn change_password(
    state: &AppState,
    principal: &Principal,
    change: &PasswordChange,
    client: IpAddr,
) -> Result<(), ApiError> {
    let user = &principal.user;
    require_password(state, user, &change.old, client).await?;
    let min = state.config.password_min_length;
    if change.new.chars().count() < min {
        return Err(ApiError::bad_request(format!(
            "The new password must be at least {min} characters long."
        )));
    }
    let hash = crate::password::hash(change.new.clone())
        .await
        .map_err(ApiError::Internal)?;
    state.store.set_password(user.id, &hash, false).await?;
    let revoked = state
        .store
        .revoke_sessions(user.id, principal.token_key())
        .await?;
    tracing::info!(user = %user.name, revoked, "password changed; other sessions revoked");
    let detail = json!({ "sessions_revoked": revoked });
    state
        .audit
        .note(Event::PasswordChanged, Some(&user.name), None, detail);
    Ok(())
}

/// `{tfa: {password, mode}}`: start enrolment, change the mode, or turn it off. Shared with
/// the web two-factor page; the answer's `tfa` is the otpauth URL when enrolment started.
pub async fn tfa_settings(
    state: &AppState,
    user: &User,
    password: &str,
    mode: &str,
    client: IpAddr,
) -> Result<Profile, ApiError> {
    let wanted = match mode {
        "disable" => None,
        other => Some(TfaMode::parse(other).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Unknown two-factor mode \"{}\": use auth-only, auth-and-writes or disable.",
                other.chars().take(40).collect::<String>()
            ))
        })?),
    };
    require_password(state, user, password, client).await?;
    match (wanted, &user.tfa) {
        (None, None) => {}
        (None, Some(_)) => {
            state.store.disable_tfa(user.id).await?;
            tracing::info!(user = %user.name, "two-factor authentication disabled");
            state
                .audit
                .note(Event::TfaDisabled, Some(&user.name), None, json!({}));
        }
        (Some(mode), Some(tfa)) if tfa.enabled() => {
            state.store.set_tfa_mode(user.id, mode).await?;
            tracing::info!(user = %user.name, mode = mode.as_str(), "two-factor mode changed");
            let detail = json!({ "mode": mode.as_str() });
            state
                .audit
                .note(Event::TfaModeChanged, Some(&user.name), None, detail);
        }
        (Some(mode), _) => {
            let secret = totp::generate_secret();
            let sealed = state.keys.seal(&secret);
            state.store.start_tfa(user.id, mode, &sealed).await?;
            tracing::info!(user = %user.name, mode = mode.as_str(), "two-factor enrolment started");
            let url = totp::otpauth_url(&state.config.tfa_issuer, &user.name, &secret);
            let mut answer = Profile::of(&reload(state, user).await?);
            answer.tfa = Some(Tfa::EnrolmentUrl(url));
            return Ok(answer);
        }
    }
    Ok(Profile::of(&reload(state, user).await?))
}

/// `{tfa: ["CODE"]}`: confirms a pending enrolment and answers the recovery codes, once.
/// Shared with the web two-factor page.
pub async fn confirm(
    state: &AppState,
    user: &User,
    codes: &[String],
    client: IpAddr,
) -> Result<Profile, ApiError> {
    let Some(tfa) = user.tfa.as_ref().filter(|t| t.pending) else {
        return Err(ApiError::Conflict(
            "Two-factor authentication is not being set up: run npm profile enable-2fa first."
                .into(),
        ));
    };
    let [code] = codes else {
        return Err(ApiError::bad_request(
            "Send exactly one code from your authenticator app: {\"tfa\": [\"123456\"]}.",
        ));
    };
    attempts::ensure_allowed(state, &user.name, client)?;
    let Some(step) = second_factor::pending_step(state, tfa, code.trim())? else {
        attempts::record_failure(state, &user.name, client);
        return Err(second_factor::challenge());
    };
    let recovery = totp::generate_recovery_codes();
    let hashes: Vec<String> = recovery
        .iter()
        .map(|c| totp::hash_recovery_code(c))
        .collect();
    if !state.store.confirm_tfa(user.id, step, &hashes).await? {
        return Err(ApiError::Conflict(
            "Two-factor authentication was confirmed by another request.".into(),
        ));
    }
    tracing::info!(user = %user.name, mode = tfa.mode.as_str(), "two-factor authentication enabled");
    let detail = json!({ "mode": tfa.mode.as_str() });
    state
        .audit
        .note(Event::TfaEnabled, Some(&user.name), None, detail);
    let mut answer = Profile::of(&reload(state, user).await?);
    answer.tfa = Some(Tfa::RecoveryCodes(recovery));
    Ok(answer)
}
