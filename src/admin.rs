//! The administration commands that need more than one store call: user disable/enable, token
//! list/revoke/revoke-all and the audit listing. Each returns the text to print; every change
//! is written to the audit log.

use crate::api::iso;
use crate::audit::{self, Event};
use crate::store::{AuditFilter, AuditRecord, Store, TokenRecord, TokensFrom, User};
use anyhow::{bail, Context};
use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde_json::json;
use std::fmt::Write;

/// Shortest key prefix `token revoke` accepts.
const MIN_PREFIX: usize = 6;

async fn user(store: &dyn Store, name: &str) -> anyhow::Result<User> {
    store
        .user_by_name(name)
        .await?
        .with_context(|| format!("no user named {name}"))
}

/// Stores an event of the administrator's, now (not through the background writer).
pub async fn note(
    store: &dyn Store,
    what: Event,
    name: &str,
    key: Option<&crate::token::TokenKey>,
    mut detail: serde_json::Value,
) -> anyhow::Result<()> {
    detail["by"] = json!("admin cli");
    store
        .insert_audit(&[audit::event(what, Some(name), key, detail)])
        .await?;
    Ok(())
}

/// `tokengate user disable|enable NAME`: a disabled user's tokens stop working at once.
pub async fn set_disabled(store: &dyn Store, name: &str, disabled: bool) -> anyhow::Result<String> {
    let u = user(store, name).await?;
    store.set_user_disabled(u.id, disabled).await?;
    let what = if disabled {
        Event::UserDisabled
    } else {
        Event::UserEnabled
    };
    note(store, what, name, None, json!({})).await?;
    Ok(if disabled {
        format!(
            "user {name} disabled: their tokens are refused until `tokengate user enable {name}`"
        )
    } else {
        format!("user {name} enabled")
    })
}

fn status(t: &TokenRecord, now: DateTime<Utc>) -> &'static str {
    if t.revoked.is_some() {
        "revoked"
    } else if t.expires.is_some_and(|x| x <= now) {
        "expired"
    } else {
        "active"
    }
}

/// `tokengate token list NAME`: the user's unrevoked tokens, newest first.
pub async fn token_list(store: &dyn Store, name: &str) -> anyhow::Result<String> {
    let u = user(store, name).await?;
    let (tokens, _) = store
        .list_tokens(u.id, &TokensFrom::Offset(0), i64::MAX / 2)
        .await?;
    let now = Utc::now();
    let mut out = format!(
        "{:<12}  {:<10}  {:<8}  {:<20}  {:<20}  {:<20}  {:<15}  {}\n",
        "id", "kind", "status", "created", "expires", "last used", "last address", "name / limits"
    );
    let day = |t: Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%d %H:%M").to_string())
            .unwrap_or_else(|| "-".into())
    };
    for t in &tokens {
        let mut limits = Vec::new();
        if let Some(name) = &t.name {
            limits.push(name.clone());
        }
        if t.readonly {
            limits.push("read-only".into());
        }
        if let Some(cidr) = &t.cidr_whitelist {
            limits.push(format!("cidr {}", cidr.join(",")));
        }
        if !t.packages.is_empty() || !t.scopes.is_empty() || t.packages_all {
            let what = if t.packages_all {
                "all packages".to_owned()
            } else {
                [t.packages.clone(), t.scopes.clone()].concat().join(",")
            };
            let perm = t
                .packages_and_scopes_permission
                .map(|p| p.as_str())
                .unwrap_or("-");
            limits.push(format!("{what} {perm}"));
        }
        if !t.orgs.is_empty() {
            let perm = t.orgs_permission.map(|p| p.as_str()).unwrap_or("-");
            limits.push(format!("orgs {} {perm}", t.orgs.join(",")));
        }
        writeln!(
            out,
            "{:<12}  {:<10}  {:<8}  {:<20}  {:<20}  {:<20}  {:<15}  {}",
            t.key.short(),
            t.kind.as_str(),
            status(t, now),
            day(Some(t.created)),
            day(t.expires),
            day(t.last_used),
            t.last_used_ip.as_deref().unwrap_or("-"),
            limits.join("; ")
        )
        .expect("writing to a string");
    }
    writeln!(out, "{} token(s)", tokens.len()).expect("writing to a string");
    Ok(out)
}

/// `tokengate token revoke KEY-PREFIX`: one token of any user, named by the start of its key.
pub async fn token_revoke(store: &dyn Store, prefix: &str) -> anyhow::Result<String> {
    let prefix = prefix.trim().to_ascii_lowercase();
    if prefix.len() < MIN_PREFIX || !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("give at least {MIN_PREFIX} hex characters of the token's id (see `tokengate token list NAME`)");
    }
    let found = store.tokens_by_key_prefix(&prefix, 11).await?;
    let live: Vec<_> = found.iter().filter(|f| f.token.revoked.is_none()).collect();
    match live.as_slice() {
        [] if found.is_empty() => bail!("no token has an id starting with {prefix}"),
        [] => bail!("the token {prefix}… is already revoked"),
        [one] => {
            let key = &one.token.key;
            store.revoke_token(one.owner.id, key, Utc::now()).await?;
            let detail = json!({ "kind": one.token.kind.as_str() });
            note(
                store,
                Event::TokenRevoked,
                &one.owner.name,
                Some(key),
                detail,
            )
            .await?;
            Ok(format!(
                "revoked token {} of {} ({})",
                key.short(),
                one.owner.name,
                one.token.kind.as_str()
            ))
        }
        many => {
            let ids: Vec<String> = many
                .iter()
                .map(|f| format!("{} ({})", f.token.key.short(), f.owner.name))
                .collect();
            bail!(
                "{prefix} is ambiguous: it starts {}; give more characters",
                ids.join(", ")
            )
        }
    }
}

/// `tokengate token revoke-all NAME`: every token of the user, sessions included.
pub async fn token_revoke_all(store: &dyn Store, name: &str) -> anyhow::Result<String> {
    let u = user(store, name).await?;
    let n = store.revoke_all_tokens(u.id, Utc::now()).await?;
    note(
        store,
        Event::TokensRevokedAll,
        name,
        None,
        json!({ "revoked": n }),
    )
    .await?;
    Ok(format!("revoked {n} token(s) of {name}"))
}

/// `--since`: a duration back from now (`90m`, `24h`, `7d`, `2w`), an RFC 3339 time or a date.
pub fn parse_since(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(d.and_hms_opt(0, 0, 0).expect("midnight").and_utc());
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: i64 = number.parse().map_err(|_| {
        format!("--since {text:?}: use e.g. 30m, 24h, 7d, 2w, 2026-01-31 or an RFC 3339 time")
    })?;
    let span = match unit {
        "s" => Duration::seconds(n),
        "m" => Duration::minutes(n),
        "h" => Duration::hours(n),
        "d" => Duration::days(n),
        "w" => Duration::weeks(n),
        _ => {
            return Err(format!(
                "--since {text:?}: the unit must be s, m, h, d or w"
            ))
        }
    };
    Ok(now - span)
}

/// `tokengate audit [--user NAME] [--since …] [--json]`: newest first.
pub async fn audit_list(
    store: &dyn Store,
    user: Option<String>,
    since: Option<&str>,
    as_json: bool,
    limit: i64,
) -> anyhow::Result<String> {
    let since = since
        .map(|s| parse_since(s, Utc::now()))
        .transpose()
        .map_err(anyhow::Error::msg)?;
    let events = store
        .list_audit(&AuditFilter { user, since, limit })
        .await?;
    if as_json {
        let mut out = String::new();
        for ev in &events {
            out.push_str(&serde_json::to_string(&audit_json(ev)).expect("JSON"));
            out.push('\n');
        }
        return Ok(out);
    }
    let mut out = String::new();
    for ev in &events {
        writeln!(
            out,
            "{}  {:<20}  {:<16}  {:<12}  {:<15}  {}",
            iso(ev.at),
            ev.event,
            ev.user.as_deref().unwrap_or("-"),
            ev.key_id.as_deref().unwrap_or("-"),
            ev.client.as_deref().unwrap_or("-"),
            ev.detail
        )
        .expect("writing to a string");
    }
    Ok(out)
}

fn audit_json(ev: &AuditRecord) -> serde_json::Value {
    json!({
        "time": iso(ev.at),
        "event": ev.event,
        "user": ev.user,
        "key_id": ev.key_id,
        "client": ev.client,
        "user_agent": ev.user_agent,
        "detail": ev.detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_dates_and_times() {
        let now = DateTime::parse_from_rfc3339("2026-11-25T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let at = |s: &str| parse_since(s, now).map(iso);
        assert_eq!(at("90m").unwrap(), "2026-11-25T10:30:00.000Z");
        assert_eq!(at("24h").unwrap(), "2026-11-24T12:00:00.000Z");
        assert_eq!(at("7d").unwrap(), "2026-11-18T12:00:00.000Z");
        assert_eq!(at("2w").unwrap(), "2026-11-11T12:00:00.000Z");
        assert_eq!(at("2026-11-01").unwrap(), "2026-11-01T00:00:00.000Z");
        assert_eq!(
            at("2026-11-01T08:00:00+02:00").unwrap(),
            "2026-11-01T06:00:00.000Z"
        );
        assert!(at("7y").unwrap_err().contains("unit"));
        assert!(at("yesterday").unwrap_err().contains("30m"));
    }
}
