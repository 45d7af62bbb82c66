//! The body of `POST /-/npm/v1/tokens` in both shapes npm sends (the legacy
//! `{password, readonly, cidr_whitelist}` and npm 11's granular fields), validated into a
//! [`TokenSpec`]. Pure: no I/O, so every rule is unit-tested here.

use crate::client_ip;
use crate::names;
use crate::store::{Permission, TokenKind, TokenRecord};
use crate::token::TokenKey;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;

/// npm's limits: at most 50 packages and scopes together, and 50 orgs, per token.
pub const MAX_PACKAGES_AND_SCOPES: usize = 50;
pub const MAX_ORGS: usize = 50;
pub const MAX_CIDRS: usize = 50;
const MAX_NAME_LEN: usize = 128;
const MAX_DESCRIPTION_LEN: usize = 1024;

/// The request body. No `Debug`: it holds the password.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTokenBody {
    /// The account password: required, checked every time.
    pub password: Option<String>,
    pub name: Option<String>,
    pub description: Option<String>,
    pub token_description: Option<String>,
    pub readonly: Option<bool>,
    pub automation: Option<bool>,
    pub cidr_whitelist: Option<Vec<String>>,
    pub cidr: Option<Vec<String>>,
    /// Whole days (a number or a string of digits), or an ISO 8601 time.
    #[schema(schema_with = expires_schema)]
    pub expires: Option<serde_json::Value>,
    pub packages: Option<Vec<String>>,
    pub packages_all: Option<bool>,
    pub scopes: Option<Vec<String>>,
    pub orgs: Option<Vec<String>>,
    pub packages_and_scopes_permission: Option<String>,
    pub orgs_permission: Option<String>,
    pub bypass_2fa: Option<bool>,
}

/// `expires` as the description shows it: days, or a time, or `null`.
fn expires_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    Schema::OneOf(
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            )
            .item(ObjectBuilder::new().schema_type(Type::String))
            .item(ObjectBuilder::new().schema_type(Type::Null))
            .build(),
    )
}

/// Expiry limits from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct ExpiryLimits {
    pub max_days: u32,
    /// 0: no default expiry.
    pub default_days: u32,
}

/// A validated token request.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenSpec {
    pub kind: TokenKind,
    pub name: Option<String>,
    pub description: Option<String>,
    pub readonly: bool,
    pub automation: bool,
    pub bypass_2fa: bool,
    pub cidr_whitelist: Option<Vec<String>>,
    pub packages: Vec<String>,
    pub packages_all: bool,
    pub scopes: Vec<String>,
    pub orgs: Vec<String>,
    pub packages_and_scopes_permission: Option<Permission>,
    pub orgs_permission: Option<Permission>,
    pub expires: Option<DateTime<Utc>>,
}

impl TokenSpec {
    /// A token of `kind` with no CIDR, package, scope or org limits.
    pub fn unrestricted(
        kind: TokenKind,
        name: Option<String>,
        expires: Option<DateTime<Utc>>,
    ) -> TokenSpec {
        TokenSpec {
            kind,
            name,
            description: None,
            readonly: false,
            automation: false,
            bypass_2fa: false,
            cidr_whitelist: None,
            packages: vec![],
            packages_all: false,
            scopes: vec![],
            orgs: vec![],
            packages_and_scopes_permission: None,
            orgs_permission: None,
            expires,
        }
    }

    pub fn into_record(
        self,
        key: TokenKey,
        user_id: i64,
        redacted: String,
        now: DateTime<Utc>,
    ) -> TokenRecord {
        TokenRecord {
            key,
            user_id,
            redacted,
            kind: self.kind,
            name: self.name,
            description: self.description,
            readonly: self.readonly,
            automation: self.automation,
            bypass_2fa: self.bypass_2fa,
            cidr_whitelist: self.cidr_whitelist,
            packages: self.packages,
            packages_all: self.packages_all,
            scopes: self.scopes,
            orgs: self.orgs,
            packages_and_scopes_permission: self.packages_and_scopes_permission,
            orgs_permission: self.orgs_permission,
            created: now,
            expires: self.expires,
            revoked: None,
            last_used: None,
            last_used_ip: None,
        }
    }
}

fn permission(field: &str, value: Option<&str>) -> Result<Option<Permission>, String> {
    value
        .map(|v| {
            Permission::parse(v).ok_or_else(|| {
                format!(
                    "{field} must be one of no-access, read-only, read-write, \
                     read-write-stage-only; got {:?}.",
                    crate::error::clip(v)
                )
            })
        })
        .transpose()
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    v.retain(|x| seen.insert(x.clone()));
    v
}

/// Validates a create body into a spec, with a message that says what to fix.
pub fn validate(
    body: &CreateTokenBody,
    limits: ExpiryLimits,
    now: DateTime<Utc>,
) -> Result<TokenSpec, String> {
    let name = body
        .name
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    if name
        .as_ref()
        .is_some_and(|n| n.chars().count() > MAX_NAME_LEN)
    {
        return Err(format!(
            "name may be at most {MAX_NAME_LEN} characters long."
        ));
    }
    if body.description.is_some() && body.token_description.is_some() {
        return Err("Give description or token_description, not both.".into());
    }
    let description = body
        .description
        .clone()
        .or_else(|| body.token_description.clone());
    if description
        .as_ref()
        .is_some_and(|d| d.chars().count() > MAX_DESCRIPTION_LEN)
    {
        return Err(format!(
            "description may be at most {MAX_DESCRIPTION_LEN} characters long."
        ));
    }

    let cidr_whitelist = match (&body.cidr_whitelist, &body.cidr) {
        (Some(_), Some(_)) => return Err("Give cidr_whitelist or cidr, not both.".into()),
        (Some(list), None) | (None, Some(list)) => {
            if list.len() > MAX_CIDRS {
                return Err(format!(
                    "A token may have at most {MAX_CIDRS} CIDR entries."
                ));
            }
            let nets = client_ip::parse_cidr_list(list)?;
            let nets = dedup(nets.iter().map(ToString::to_string).collect());
            (!nets.is_empty()).then_some(nets)
        }
        (None, None) => None,
    };

    let packages = dedup(body.packages.clone().unwrap_or_default());
    for p in &packages {
        names::validate_package(p)?;
    }
    let scopes = dedup(
        body.scopes
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|s| names::normalize_scope(s))
            .collect::<Result<Vec<_>, _>>()?,
    );
    let orgs = dedup(
        body.orgs
            .clone()
            .unwrap_or_default()
            .iter()
            .map(|o| names::normalize_org(o))
            .collect::<Result<Vec<_>, _>>()?,
    );
    if packages.len() + scopes.len() > MAX_PACKAGES_AND_SCOPES {
        return Err(format!(
            "A token may name at most {MAX_PACKAGES_AND_SCOPES} packages and scopes together."
        ));
    }
    if orgs.len() > MAX_ORGS {
        return Err(format!("A token may name at most {MAX_ORGS} orgs."));
    }
    let packages_all = body.packages_all.unwrap_or(false);
    let pkg_perm = permission(
        "packages_and_scopes_permission",
        body.packages_and_scopes_permission.as_deref(),
    )?;
    let org_perm = permission("orgs_permission", body.orgs_permission.as_deref())?;

    let granular = !packages.is_empty()
        || !scopes.is_empty()
        || !orgs.is_empty()
        || packages_all
        || pkg_perm.is_some()
        || org_perm.is_some();
    let automation = body.automation.unwrap_or(false);
    let legacy_readonly = body.readonly.unwrap_or(false);
    let bypass_2fa = body.bypass_2fa.unwrap_or(false);

    if automation && legacy_readonly {
        return Err("A token cannot be both read-only and automation.".into());
    }
    if automation && granular {
        return Err(
            "automation cannot be combined with packages, scopes or orgs: use bypass_2fa on a \
             granular token instead."
                .into(),
        );
    }

    let (kind, readonly, pkg_perm, org_perm) = if granular {
        let selects_packages = packages_all || !packages.is_empty() || !scopes.is_empty();
        if pkg_perm.is_some() && !selects_packages {
            return Err(
                "packages_and_scopes_permission was given, but no packages, scopes or \
                 packages_all: the token would reach no package."
                    .into(),
            );
        }
        if org_perm.is_some() && orgs.is_empty() {
            return Err("orgs_permission was given, but no orgs.".into());
        }
        // npm: a selection given without a permission is read-only.
        let pkg_perm = selects_packages.then(|| pkg_perm.unwrap_or(Permission::ReadOnly));
        let org_perm = (!orgs.is_empty()).then(|| org_perm.unwrap_or(Permission::ReadOnly));
        let writes = pkg_perm.is_some_and(Permission::can_write)
            || org_perm.is_some_and(Permission::can_write);
        if legacy_readonly && writes {
            return Err("readonly cannot be combined with a read-write permission.".into());
        }
        (TokenKind::Granular, !writes, pkg_perm, org_perm)
    } else if legacy_readonly {
        (TokenKind::ReadOnly, true, None, None)
    } else if automation {
        (TokenKind::Automation, false, None, None)
    } else {
        (TokenKind::Publish, false, None, None)
    };
    if bypass_2fa && readonly {
        return Err(
            "bypass_2fa applies only to tokens that can write; this token is read-only.".into(),
        );
    }

    let expires = expiry(body.expires.as_ref(), limits, now)?;
    Ok(TokenSpec {
        kind,
        name,
        description,
        readonly,
        automation: automation || kind == TokenKind::Automation,
        bypass_2fa: bypass_2fa || automation,
        cidr_whitelist,
        packages,
        packages_all,
        scopes,
        orgs,
        packages_and_scopes_permission: pkg_perm,
        orgs_permission: org_perm,
        expires,
    })
}

/// `expires`: whole days (npm 11 sends a number) or an ISO 8601 time, at least a day ahead
/// and at most `max_days` ahead.
fn expiry(
    value: Option<&serde_json::Value>,
    limits: ExpiryLimits,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, String> {
    let max = limits.max_days;
    let range_error = || {
        format!("expires must be a whole number of days from 1 to {max}, or an ISO 8601 time between 1 and {max} days from now.")
    };
    let days = |d: u64| -> Result<DateTime<Utc>, String> {
        if d == 0 || d > max as u64 {
            return Err(range_error());
        }
        Ok(now + Duration::days(d as i64))
    };
    match value {
        None | Some(serde_json::Value::Null) => {
            Ok((limits.default_days > 0).then(|| now + Duration::days(limits.default_days as i64)))
        }
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(days).ok_or_else(range_error)?.map(Some)
        }
        Some(serde_json::Value::String(s)) => {
            if let Ok(d) = s.trim().parse::<u64>() {
                return days(d).map(Some);
            }
            let at = DateTime::parse_from_rfc3339(s.trim())
                .map_err(|_| range_error())?
                .with_timezone(&Utc);
            // A minute of slack for clocks and the time the request took.
            let slack = Duration::minutes(1);
            if at + slack < now + Duration::days(1) || at - slack > now + Duration::days(max as i64)
            {
                return Err(range_error());
            }
            Ok(Some(at))
        }
        Some(_) => Err(range_error()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ExpiryLimits = ExpiryLimits {
        max_days: 90,
        default_days: 0,
    };

    fn body(json: serde_json::Value) -> CreateTokenBody {
        serde_json::from_value(json).unwrap()
    }

    fn spec(json: serde_json::Value) -> Result<TokenSpec, String> {
        validate(&body(json), LIMITS, Utc::now())
    }

    #[test]
    fn bare_npm11_create_is_a_publish_token() {
        let s = spec(serde_json::json!({"name": null, "password": "x"})).unwrap();
        assert_eq!(s.kind, TokenKind::Publish);
        assert!(!s.readonly && s.expires.is_none() && s.cidr_whitelist.is_none());
    }

    #[test]
    fn legacy_bodies() {
        let s = spec(serde_json::json!({"password": "x", "readonly": true, "cidr_whitelist": []}))
            .unwrap();
        assert_eq!(s.kind, TokenKind::ReadOnly);
        assert!(s.readonly && s.cidr_whitelist.is_none());
        let s = spec(serde_json::json!({"password": "x", "readonly": false, "cidr_whitelist": ["10.1.0.0/16", "10.1.2.3/16"]})).unwrap();
        assert_eq!(s.kind, TokenKind::Publish);
        assert_eq!(s.cidr_whitelist, Some(vec!["10.1.0.0/16".into()]));
        let s = spec(serde_json::json!({"password": "x", "automation": true})).unwrap();
        assert_eq!(s.kind, TokenKind::Automation);
        assert!(s.automation && s.bypass_2fa);
    }

    #[test]
    fn granular_bodies() {
        let s = spec(serde_json::json!({
            "name": "gat", "password": "x", "description": "d",
            "packages": ["foo", "@s/bar"], "scopes": ["@myscope", "other"], "orgs": ["myorg"],
            "packages_and_scopes_permission": "read-write", "orgs_permission": "read-only",
            "expires": 7, "cidr_whitelist": ["10.0.0.0/8", "2001:db8::/32"], "bypass_2fa": true
        }))
        .unwrap();
        assert_eq!(s.kind, TokenKind::Granular);
        assert_eq!(s.scopes, vec!["@myscope", "@other"]);
        assert_eq!(
            s.packages_and_scopes_permission,
            Some(Permission::ReadWrite)
        );
        assert!(!s.readonly && s.bypass_2fa);
        assert!(s.expires.unwrap() > Utc::now() + Duration::days(6));

        // npm 11's read-only token.
        let s = spec(serde_json::json!({"password": "x", "packages_all": true, "packages_and_scopes_permission": "read-only"})).unwrap();
        assert!(s.readonly && s.packages_all);
        // A selection without a permission is read-only.
        let s = spec(serde_json::json!({"password": "x", "scopes": ["acme"]})).unwrap();
        assert_eq!(s.packages_and_scopes_permission, Some(Permission::ReadOnly));
        assert!(s.readonly);
        // Org write makes it a write token even with read-only packages.
        let s = spec(
            serde_json::json!({"password": "x", "orgs": ["o"], "orgs_permission": "read-write"}),
        )
        .unwrap();
        assert!(!s.readonly && s.packages_and_scopes_permission.is_none());
        let s = spec(serde_json::json!({"password": "x", "packages_all": true, "packages_and_scopes_permission": "read-write-stage-only"})).unwrap();
        assert!(!s.readonly);
    }

    #[test]
    fn refusals_say_what_is_wrong() {
        let cases = [
            (
                serde_json::json!({"cidr_whitelist": ["bogus"]}),
                "CIDR whitelist contains invalid CIDR entry: bogus",
            ),
            (serde_json::json!({"expires": 0}), "expires must be"),
            (serde_json::json!({"expires": 91}), "expires must be"),
            (serde_json::json!({"expires": -1}), "expires must be"),
            (serde_json::json!({"expires": 1.5}), "expires must be"),
            (serde_json::json!({"expires": "soon"}), "expires must be"),
            (
                serde_json::json!({"expires": "2000-01-01T00:00:00Z"}),
                "expires must be",
            ),
            (
                serde_json::json!({"packages": ["Bad Name"]}),
                "not a valid package name",
            ),
            (serde_json::json!({"scopes": ["@"]}), "not a valid scope"),
            (
                serde_json::json!({"packages": ["x"], "packages_and_scopes_permission": "admin"}),
                "packages_and_scopes_permission must be one of",
            ),
            (
                serde_json::json!({"packages_and_scopes_permission": "read-write"}),
                "no packages",
            ),
            (
                serde_json::json!({"orgs_permission": "read-write"}),
                "no orgs",
            ),
            (
                serde_json::json!({"readonly": true, "automation": true}),
                "both read-only and automation",
            ),
            (
                serde_json::json!({"readonly": true, "bypass_2fa": true}),
                "bypass_2fa",
            ),
            (
                serde_json::json!({"name": "x".repeat(129)}),
                "name may be at most",
            ),
        ];
        for (json, want) in cases {
            let err = spec(json.clone()).unwrap_err();
            assert!(err.contains(want), "{json}: {err}");
        }
        let many: Vec<String> = (0..51).map(|i| format!("p{i}")).collect();
        assert!(spec(serde_json::json!({"packages": many}))
            .unwrap_err()
            .contains("at most 50"));
        let orgs: Vec<String> = (0..51).map(|i| format!("o{i}")).collect();
        assert!(spec(serde_json::json!({"orgs": orgs}))
            .unwrap_err()
            .contains("at most 50 orgs"));
    }

    #[test]
    fn expiry_forms() {
        let now = Utc::now();
        let iso = (now + Duration::days(10)).to_rfc3339();
        let s = validate(&body(serde_json::json!({"expires": iso})), LIMITS, now).unwrap();
        assert!(s.expires.is_some());
        let s = validate(&body(serde_json::json!({"expires": "30"})), LIMITS, now).unwrap();
        assert_eq!(s.expires, Some(now + Duration::days(30)));
        let defaults = ExpiryLimits {
            max_days: 90,
            default_days: 7,
        };
        let s = validate(&body(serde_json::json!({})), defaults, now).unwrap();
        assert_eq!(s.expires, Some(now + Duration::days(7)));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(
            serde_json::from_value::<CreateTokenBody>(serde_json::json!({"pasword": "x"})).is_err()
        );
    }
}
