//! Settings: defaults, then a TOML file, then `TOKENGATE_*` environment variables, then flags.
//! Unknown keys and invalid values stop start-up with a message naming the key.

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Environment variables start with this; `TOKENGATE_CONFIG` names the file instead of a key.
pub const ENV_PREFIX: &str = "TOKENGATE_";
const ENV_CONFIG_FILE: &str = "TOKENGATE_CONFIG";

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address and port to listen on.
    pub listen: SocketAddr,
    /// `sqlite://FILE` (created if missing) or `postgres://USER@HOST:PORT/DB`.
    pub database_url: String,
    /// Connections kept in the database pool.
    pub database_max_connections: u32,
    /// How long a request waits for a database connection before answering 503.
    pub database_acquire_timeout_secs: u64,
    /// `closed`: only administrators create accounts; `open`: `npm adduser` creates them.
    pub registration: Registration,
    /// Peers whose `X-Forwarded-For` header is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Prefix of every token issued.
    pub token_prefix: String,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest expiry a token may be created with, in days.
    pub max_token_expiry_days: u32,
    /// Expiry given to created tokens that ask for none, in days; 0 means no expiry.
    pub default_token_expiry_days: u32,
    /// Lifetime of session tokens made by `npm login`, in hours; 0 means no expiry.
    pub session_expiry_hours: u32,
    /// Most live tokens (other than login sessions) one user may hold.
    pub max_tokens_per_user: u32,
    /// Shortest password accepted for new accounts and password changes.
    pub password_min_length: usize,
    /// Longest time a request may take before it is answered 503.
    pub request_timeout_secs: u64,
    /// Longest time a client may take to send a request's headers, and longest a kept-alive
    /// connection may stay idle; then the connection is closed.
    pub header_timeout_secs: u64,
    /// Longest pause allowed while a request body arrives (a JSON body is then answered 408; a
    /// forwarded upload is cut off).
    pub body_timeout_secs: u64,
    /// Largest request head, in bytes: the request line and the header lines (`name: value`
    /// and line end; spaces around a value not counted); larger heads are answered 431.
    pub max_header_bytes: usize,
    /// Most client connections open at once; further connections are answered 503 and closed.
    pub max_connections: usize,
    /// `text` (human-readable) or `json`.
    pub log_format: LogFormat,
    /// Server key(s) that encrypt TOTP secrets, base64, current first (newline-separated);
    /// empty: read `tfa_key_file`.
    pub tfa_key: String,
    /// File holding the server key(s); created with a new key on first start when missing.
    pub tfa_key_file: PathBuf,
    /// Issuer shown by authenticator apps.
    pub tfa_issuer: String,
    /// Password or OTP failures allowed per account and address within the window.
    pub auth_failure_limit: usize,
    /// The window for `auth_failure_limit`, in seconds.
    pub auth_failure_window_secs: u64,
    /// Path of the Prometheus metrics, served without authentication; empty: no metrics.
    pub metrics_path: String,
    /// After SIGTERM or Ctrl-C, how long requests in flight may take before the process exits.
    pub shutdown_timeout_secs: u64,
    /// Reads of packages without credentials (`npm install` of public packages); writes never.
    pub anonymous_read: bool,
    /// The URL clients use to reach tokengate, e.g. `https://npm.example.com`; tarball URLs in
    /// package documents are rewritten to it. Empty: derived from each request's Host header.
    pub public_url: String,
    /// A path prefix under which the registry is mounted (e.g. `/npm`), stripped before a
    /// request is classified; used by the forward-auth endpoint behind nginx or Traefik.
    pub registry_path_prefix: String,
    /// Which proxy asks `/-/auth/verify`, and so which header pair carries the original
    /// method and URI; the other pair is refused, since the proxy passes it from the client.
    pub forward_auth_headers: ForwardAuthHeaders,
    /// A signed-in browser is signed out after this many minutes without a page request.
    pub web_session_idle_minutes: u32,
    /// A signed-in browser is signed out this many hours after signing in, whatever it does.
    pub web_session_max_hours: u32,
    /// Audit events older than this many days are deleted; 0 keeps them forever.
    pub audit_retention_days: u32,
    /// How often tokens' last-used times are written to the database, in seconds.
    pub last_used_flush_secs: u64,
    /// Token checks kept in memory (0 turns the verification cache off).
    pub token_cache_capacity: u64,
    /// Longest time a cached token check is trusted, in seconds.
    pub token_cache_ttl_secs: u64,
    /// How often each replica reads revocations and other changes made elsewhere, in ms.
    pub change_poll_ms: u64,
    /// Reverse-proxy mode: the registry behind tokengate.
    pub upstream: UpstreamConfig,
}

/// `[upstream]`: the registry tokengate forwards package requests to.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamConfig {
    /// `http://HOST:PORT[/PREFIX]`; empty: no proxying (registry routes answer 404).
    pub url: String,
    /// Sent to the upstream as `Authorization` instead of the client's token; empty: none.
    pub authorization: String,
    /// How long to wait for the upstream's answer to begin, in seconds.
    pub timeout_secs: u64,
    /// How long to wait for a connection to the upstream, in seconds.
    pub connect_timeout_secs: u64,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            url: String::new(),
            authorization: String::new(),
            timeout_secs: 300,
            connect_timeout_secs: 5,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Closed,
    Open,
}

/// The proxy in front of the registry that asks `/-/auth/verify`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardAuthHeaders {
    /// `X-Original-Method` and `X-Original-URI`, set by `proxy_set_header` (docs/nginx.conf).
    Nginx,
    /// `X-Forwarded-Method` and `X-Forwarded-Uri`, set by Traefik's `forwardAuth`
    /// (docs/traefik.yml).
    Traefik,
}

impl ForwardAuthHeaders {
    /// The value as the configuration spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardAuthHeaders::Nginx => "nginx",
            ForwardAuthHeaders::Traefik => "traefik",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:4874".parse().expect("valid default address"),
            database_url: "sqlite://tokengate.db".into(),
            database_max_connections: 10,
            database_acquire_timeout_secs: 5,
            registration: Registration::Closed,
            trusted_proxies: Vec::new(),
            token_prefix: "npm_".into(),
            max_body_bytes: 1024 * 1024,
            max_token_expiry_days: 365,
            default_token_expiry_days: 0,
            session_expiry_hours: 0,
            max_tokens_per_user: 1000,
            password_min_length: 8,
            request_timeout_secs: 30,
            header_timeout_secs: 20,
            body_timeout_secs: 30,
            max_header_bytes: 64 * 1024,
            max_connections: 4096,
            log_format: LogFormat::Text,
            tfa_key: String::new(),
            tfa_key_file: PathBuf::from("tokengate.key"),
            tfa_issuer: "tokengate".into(),
            auth_failure_limit: 10,
            auth_failure_window_secs: 300,
            metrics_path: "/-/metrics".into(),
            shutdown_timeout_secs: 30,
            anonymous_read: false,
            public_url: String::new(),
            registry_path_prefix: String::new(),
            forward_auth_headers: ForwardAuthHeaders::Nginx,
            web_session_idle_minutes: 60,
            web_session_max_hours: 12,
            audit_retention_days: 90,
            last_used_flush_secs: 5,
            token_cache_capacity: 100_000,
            token_cache_ttl_secs: 60,
            change_poll_ms: 25,
            upstream: UpstreamConfig::default(),
        }
    }
}

/// Values given on the command line; they win over everything else.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub listen: Option<SocketAddr>,
    pub database_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: String, message: String },
}

impl Config {
    /// Loads the effective configuration from the process environment and the given flags.
    pub fn load(overrides: &Overrides) -> Result<Config, ConfigError> {
        Self::load_from(overrides, std::env::vars())
    }

    /// Same as [`Config::load`], with the environment passed in (for tests).
    pub fn load_from(
        overrides: &Overrides,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let file = overrides.config_file.clone().or_else(|| {
            env.iter()
                .find(|(k, _)| k == ENV_CONFIG_FILE)
                .map(|(_, v)| PathBuf::from(v))
        });
        let mut table = match &file {
            Some(path) => read_file(path)?,
            None => toml::Table::new(),
        };
        let defaults = toml::Table::try_from(Config::default()).expect("defaults serialize");
        for (var, value) in &env {
            let Some(name) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            if var == ENV_CONFIG_FILE {
                continue;
            }
            let key = name.to_ascii_lowercase();
            let Some((section, field, default)) = env_setting(&defaults, &key) else {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: format!("`{key}` is not a setting (see config.example.toml)"),
                });
            };
            let parsed = env_value(default, value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            match section {
                None => {
                    table.insert(field, parsed);
                }
                Some(section) => {
                    let entry = table
                        .entry(section.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    let toml::Value::Table(inner) = entry else {
                        return Err(ConfigError::Env {
                            var: var.clone(),
                            message: format!("`{section}` in the config file is not a table"),
                        });
                    };
                    inner.insert(field, parsed);
                }
            }
        }
        if let Some(listen) = overrides.listen {
            table.insert("listen".into(), listen.to_string().into());
        }
        if let Some(url) = &overrides.database_url {
            table.insert("database_url".into(), url.clone().into());
        }
        let config: Config =
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| ConfigError::File {
                    path: file.clone().unwrap_or_else(|| "<environment>".into()),
                    message: e.message().to_owned(),
                })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses a TOML document (used for `config.example.toml` in tests).
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::File {
            path: "<text>".into(),
            message: e.message().to_owned(),
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.into(),
                message: message.into(),
            })
        };
        if !(self.database_url.starts_with("sqlite:")
            || self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://"))
        {
            return invalid("database_url", "must start with sqlite:// or postgres://");
        }
        if self.token_prefix.is_empty()
            || self.token_prefix.len() > 16
            || !self
                .token_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return invalid(
                "token_prefix",
                "must be 1 to 16 letters, digits or underscores",
            );
        }
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes", "must be at least 1024");
        }
        if self.max_token_expiry_days == 0 {
            return invalid("max_token_expiry_days", "must be at least 1");
        }
        if self.default_token_expiry_days > self.max_token_expiry_days {
            return invalid(
                "default_token_expiry_days",
                "must not exceed max_token_expiry_days",
            );
        }
        if self.database_max_connections == 0 {
            return invalid("database_max_connections", "must be at least 1");
        }
        if self.database_acquire_timeout_secs == 0 || self.request_timeout_secs == 0 {
            return invalid("request_timeout_secs", "timeouts must be at least 1 second");
        }
        if self.header_timeout_secs == 0 || self.body_timeout_secs == 0 {
            return invalid(
                "header_timeout_secs",
                "the header and body timeouts must be at least 1 second",
            );
        }
        if !(8192..=1024 * 1024).contains(&self.max_header_bytes) {
            return invalid("max_header_bytes", "must be between 8192 and 1048576");
        }
        if !(1..=1_000_000).contains(&self.max_connections) {
            return invalid("max_connections", "must be between 1 and 1000000");
        }
        if self.auth_failure_limit == 0 || self.auth_failure_window_secs == 0 {
            return invalid(
                "auth_failure_limit",
                "the limit and its window must be at least 1",
            );
        }
        if self.tfa_issuer.is_empty() || self.tfa_issuer.contains(':') {
            return invalid("tfa_issuer", "must be non-empty and contain no colon");
        }
        let up = &self.upstream;
        if !up.url.is_empty() {
            let parsed = up.url.parse::<axum::http::Uri>().ok();
            let ok = parsed.as_ref().is_some_and(|u| {
                u.scheme_str() == Some("http") && u.authority().is_some() && u.query().is_none()
            });
            if !ok {
                return invalid(
                    "upstream.url",
                    "must be an http:// URL such as http://127.0.0.1:4873 (https upstreams are \
                     not supported: put the registry on a private network or loopback)",
                );
            }
        }
        if !up.authorization.is_empty()
            && axum::http::HeaderValue::from_str(&up.authorization).is_err()
        {
            return invalid("upstream.authorization", "must be a valid header value");
        }
        if up.timeout_secs == 0 || up.connect_timeout_secs == 0 {
            return invalid(
                "upstream.timeout_secs",
                "timeouts must be at least 1 second",
            );
        }
        let url = &self.public_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return invalid("public_url", "must start with http:// or https://");
        }
        let prefix = &self.registry_path_prefix;
        if !prefix.is_empty() && (!prefix.starts_with('/') || prefix.ends_with('/')) {
            return invalid(
                "registry_path_prefix",
                "must start with / and not end with / (e.g. /npm), or be empty",
            );
        }
        if self.web_session_idle_minutes == 0 || self.web_session_max_hours == 0 {
            return invalid(
                "web_session_idle_minutes",
                "the idle and absolute limits of web sessions must be at least 1",
            );
        }
        if self.token_cache_ttl_secs == 0 || self.change_poll_ms < 10 {
            return invalid(
                "token_cache_ttl_secs",
                "the cache TTL must be at least 1 second and change_poll_ms at least 10",
            );
        }
        if self.last_used_flush_secs == 0 {
            return invalid("last_used_flush_secs", "must be at least 1");
        }
        if self.password_min_length == 0 {
            return invalid("password_min_length", "must be at least 1");
        }
        // Longer times overflow the calendar or the clock where they are used, and panic.
        const CENTURY_SECS: u64 = 100 * 365 * 86_400;
        if let Some((key, _)) = self
            .times_in_secs()
            .into_iter()
            .find(|(_, secs)| *secs > CENTURY_SECS)
        {
            return invalid(key, "must be at most 100 years");
        }
        if !valid_metrics_path(&self.metrics_path) {
            return invalid(
                "metrics_path",
                "must be empty or a path under /-/ of letters, digits and - _ . / that is not \
                 one of the npm endpoints (e.g. /-/metrics)",
            );
        }
        Ok(())
    }

    /// Every time setting, in seconds, with its key: what validation bounds, and what start-up
    /// turns into calendar and clock times.
    pub fn times_in_secs(&self) -> [(&'static str, u64); 16] {
        let up = &self.upstream;
        [
            (
                "max_token_expiry_days",
                u64::from(self.max_token_expiry_days) * 86_400,
            ),
            (
                "session_expiry_hours",
                u64::from(self.session_expiry_hours) * 3_600,
            ),
            (
                "web_session_idle_minutes",
                u64::from(self.web_session_idle_minutes) * 60,
            ),
            (
                "web_session_max_hours",
                u64::from(self.web_session_max_hours) * 3_600,
            ),
            (
                "audit_retention_days",
                u64::from(self.audit_retention_days) * 86_400,
            ),
            (
                "database_acquire_timeout_secs",
                self.database_acquire_timeout_secs,
            ),
            ("request_timeout_secs", self.request_timeout_secs),
            ("header_timeout_secs", self.header_timeout_secs),
            ("body_timeout_secs", self.body_timeout_secs),
            ("auth_failure_window_secs", self.auth_failure_window_secs),
            ("shutdown_timeout_secs", self.shutdown_timeout_secs),
            ("last_used_flush_secs", self.last_used_flush_secs),
            ("token_cache_ttl_secs", self.token_cache_ttl_secs),
            ("change_poll_ms", self.change_poll_ms / 1000),
            ("upstream.timeout_secs", up.timeout_secs),
            ("upstream.connect_timeout_secs", up.connect_timeout_secs),
        ]
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        masked.database_url = mask_url_password(&self.database_url);
        if !masked.tfa_key.is_empty() {
            masked.tfa_key = "***".into();
        }
        if !masked.upstream.authorization.is_empty() {
            masked.upstream.authorization = "***".into();
        }
        toml::to_string(&masked).expect("config serializes")
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_masked_toml())
    }
}

/// Empty (no metrics), or a plain path in npm's `/-/` namespace (package names cannot start
/// with `-`, so it never hides a package) that no npm endpoint uses.
fn valid_metrics_path(path: &str) -> bool {
    use crate::registry_path::{classify, Operation};
    path.is_empty()
        || (path.len() > "/-/".len()
            && path.starts_with("/-/")
            && !path.contains("//")
            && path
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_./".contains(&b))
            && matches!(
                classify(&axum::http::Method::GET, path),
                Operation::Other { .. }
            ))
}

fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>().map_err(|e| ConfigError::File {
        path: path.to_owned(),
        message: e.message().to_owned(),
    })
}

/// The setting an environment key names: a top-level key (`public_url`) or a key of a table
/// (`upstream_url` → `[upstream] url`). Returns (table, key, default).
fn env_setting<'a>(
    defaults: &'a toml::Table,
    key: &str,
) -> Option<(Option<String>, String, &'a toml::Value)> {
    if let Some(default) = defaults.get(key).filter(|v| !v.is_table()) {
        return Some((None, key.to_owned(), default));
    }
    defaults.iter().find_map(|(section, value)| {
        let inner = value.as_table()?;
        let field = key.strip_prefix(section.as_str())?.strip_prefix('_')?;
        inner
            .get(field)
            .map(|d| (Some(section.clone()), field.to_owned(), d))
    })
}

/// Reads an environment value with the type of the setting's default: lists are
/// comma-separated, numbers and booleans are parsed, everything else is a string.
fn env_value(default: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    Ok(match default {
        toml::Value::Array(_) => toml::Value::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        toml::Value::Integer(_) => toml::Value::Integer(
            raw.trim()
                .parse()
                .map_err(|_| format!("expected a whole number, got {raw:?}"))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            raw.trim()
                .parse()
                .map_err(|_| format!("expected true or false, got {raw:?}"))?,
        ),
        _ => toml::Value::String(raw.to_owned()),
    })
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_apply_without_file_or_env() {
        let c = Config::load_from(&Overrides::default(), env(&[])).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:4874");
        assert_eq!(c.database_url, "sqlite://tokengate.db");
        assert_eq!(c.registration, Registration::Closed);
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nregistration = \"open\"\n").unwrap();
        let flags = Overrides {
            config_file: Some(path),
            ..Default::default()
        };
        let c = Config::load_from(
            &flags,
            env(&[
                ("TOKENGATE_LISTEN", "127.0.0.1:2"),
                ("TOKENGATE_TRUSTED_PROXIES", "10.0.0.0/8, ::1/128"),
                ("TOKENGATE_MAX_BODY_BYTES", "4096"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.registration, Registration::Open);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.max_body_bytes, 4096);
        let flags = Overrides {
            listen: Some("127.0.0.1:3".parse().unwrap()),
            ..flags
        };
        let c = Config::load_from(&flags, env(&[("TOKENGATE_LISTEN", "127.0.0.1:2")])).unwrap();
        assert_eq!(c.listen.port(), 3);
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let e = Config::from_toml("listen_addr = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen_addr"), "{e}");
        let e = Config::from_toml("registration = \"maybe\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("maybe"), "{e}");
        let e = Config::from_toml("trusted_proxies = [\"10.0.0.300/8\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid"), "{e}");
        let e = Config::load_from(&Overrides::default(), env(&[("TOKENGATE_NOPE", "1")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("TOKENGATE_NOPE"), "{e}");
        let e = Config::load_from(
            &Overrides::default(),
            env(&[("TOKENGATE_MAX_BODY_BYTES", "x")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("TOKENGATE_MAX_BODY_BYTES"), "{e}");
        let e = Config::from_toml("token_prefix = \"a b\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("token_prefix"), "{e}");
    }

    /// Found by the properties: times past the calendar or the clock were accepted, and
    /// panicked where they were used (a token's expiry, a timeout, the cache's TTL).
    #[test]
    fn times_beyond_a_century_are_refused() {
        for text in [
            "request_timeout_secs = 9223372036854775807",
            "max_token_expiry_days = 4294967295",
            "session_expiry_hours = 4294967295",
            "token_cache_ttl_secs = 1099511627776",
            "[upstream]\ntimeout_secs = 9223372036854775807",
        ] {
            let key = text
                .trim_start_matches("[upstream]\n")
                .split(' ')
                .next()
                .unwrap();
            let e = Config::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("100 years"), "{text}: {e}");
        }
        assert!(Config::from_toml("max_token_expiry_days = 36500").is_ok());
    }

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../config.example.toml");
        let example = Config::from_toml(text).unwrap();
        assert_eq!(example.to_masked_toml(), Config::default().to_masked_toml());
        // Every key is documented in the example.
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for (key, value) in &defaults {
            match value.as_table() {
                None => assert!(
                    text.contains(&format!("\n{key} = ")),
                    "{key} missing from example"
                ),
                Some(section) => {
                    let body = text
                        .split_once(&format!("\n[{key}]\n"))
                        .unwrap_or_else(|| panic!("[{key}] missing from example"))
                        .1;
                    for inner in section.keys() {
                        assert!(
                            body.contains(&format!("\n{inner} = ")),
                            "{key}.{inner} missing from example"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn table_settings_come_from_the_environment_too() {
        let c = Config::load_from(
            &Overrides::default(),
            env(&[
                ("TOKENGATE_UPSTREAM_URL", "http://127.0.0.1:4873"),
                ("TOKENGATE_UPSTREAM_TIMEOUT_SECS", "9"),
                ("TOKENGATE_ANONYMOUS_READ", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.upstream.url, "http://127.0.0.1:4873");
        assert_eq!(c.upstream.timeout_secs, 9);
        assert!(c.anonymous_read);
        let e = Config::load_from(
            &Overrides::default(),
            env(&[("TOKENGATE_UPSTREAM_URL", "https://registry.example")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstream.url"), "{e}");
        let e = Config::load_from(
            &Overrides::default(),
            env(&[("TOKENGATE_UPSTREAM_NOPE", "1")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("upstream_nope"), "{e}");
    }

    #[test]
    fn metrics_path_is_checked() {
        let with = |path: &str| {
            Config::load_from(
                &Overrides::default(),
                env(&[("TOKENGATE_METRICS_PATH", path)]),
            )
        };
        assert_eq!(with("").unwrap().metrics_path, "");
        assert_eq!(with("/-/prometheus").unwrap().metrics_path, "/-/prometheus");
        for bad in [
            "/metrics",
            "metrics",
            "/-/",
            "/-/whoami",
            "/-/ping",
            "/-/x/{y}",
            "/-/a b",
        ] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("metrics_path"), "{bad}: {e}");
        }
        let c = Config::load_from(
            &Overrides::default(),
            env(&[("TOKENGATE_SHUTDOWN_TIMEOUT_SECS", "0")]),
        )
        .unwrap();
        assert_eq!(c.shutdown_timeout_secs, 0);
    }

    #[test]
    fn database_passwords_are_masked() {
        assert_eq!(
            mask_url_password("postgres://u:pw@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(mask_url_password("sqlite://x.db"), "sqlite://x.db");
        let c = Config {
            database_url: "postgres://u:hunter2@h/db".into(),
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
