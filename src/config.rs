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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    Closed,
    Open,
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
            log_format: LogFormat::Text,
            tfa_key: String::new(),
            tfa_key_file: PathBuf::from("tokengate.key"),
            tfa_issuer: "tokengate".into(),
            auth_failure_limit: 10,
            auth_failure_window_secs: 300,
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
            let Some(default) = defaults.get(&key) else {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: format!("`{key}` is not a setting (see config.example.toml)"),
                });
            };
            let parsed = env_value(default, value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            table.insert(key, parsed);
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
        if self.auth_failure_limit == 0 || self.auth_failure_window_secs == 0 {
            return invalid(
                "auth_failure_limit",
                "the limit and its window must be at least 1",
            );
        }
        if self.tfa_issuer.is_empty() || self.tfa_issuer.contains(':') {
            return invalid("tfa_issuer", "must be non-empty and contain no colon");
        }
        if self.password_min_length == 0 {
            return invalid("password_min_length", "must be at least 1");
        }
        Ok(())
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut masked = self.clone();
        masked.database_url = mask_url_password(&self.database_url);
        if !masked.tfa_key.is_empty() {
            masked.tfa_key = "***".into();
        }
        toml::to_string(&masked).expect("config serializes")
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_masked_toml())
    }
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

    #[test]
    fn the_example_file_is_the_defaults() {
        let text = include_str!("../config.example.toml");
        let example = Config::from_toml(text).unwrap();
        assert_eq!(example.to_masked_toml(), Config::default().to_masked_toml());
        // Every key is documented in the example.
        let defaults = toml::Table::try_from(Config::default()).unwrap();
        for key in defaults.keys() {
            assert!(
                text.contains(&format!("\n{key} = ")),
                "{key} missing from example"
            );
        }
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
