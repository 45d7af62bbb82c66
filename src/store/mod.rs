//! Storage: one trait for every operation the server needs, one SQL implementation that runs
//! on SQLite and PostgreSQL (each with its own migrations folder).

pub mod cache;
pub mod page;
mod sql;
pub mod web;

pub use page::{TokenCursor, TokensFrom};
pub use sql::{Backend, PoolSettings, SqlStore};
pub use web::{NewWebSession, WebLogin, WebLoginPoll, WebSession, WebStore};

use crate::token::TokenKey;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time: the request gets a 503.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The database answers but cannot store changes (the detail says how it failed); reads
    /// still work. The request gets a 503 that names the cause.
    #[error("database cannot store changes ({0}): {1}")]
    CannotWrite(WriteProblem, String),
    /// A unique value already exists (e.g. a user name).
    #[error("{0}")]
    Conflict(String),
    #[error("not found")]
    NotFound,
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Why the database cannot store changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteProblem {
    /// The disk (or file system, or quota) is full.
    DiskFull,
    /// The database file or its directory is read-only, or the server is a read-only replica.
    ReadOnly,
    /// Writing the file failed otherwise (a failing disk, a file size limit).
    Io,
}

impl std::fmt::Display for WriteProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WriteProblem::DiskFull => "disk full",
            WriteProblem::ReadOnly => "read-only",
            WriteProblem::Io => "I/O error",
        })
    }
}

#[derive(Clone, Debug)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub email: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub disabled: bool,
    pub created: DateTime<Utc>,
    pub updated: DateTime<Utc>,
    /// Two-factor state; `None` when off.
    pub tfa: Option<TfaState>,
    pub profile: ProfileFields,
}

/// npm's two-factor modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TfaMode {
    /// OTP for login, token and account changes.
    AuthOnly,
    /// Also for package writes.
    AuthAndWrites,
}

impl TfaMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TfaMode::AuthOnly => "auth-only",
            TfaMode::AuthAndWrites => "auth-and-writes",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auth-only" => Some(TfaMode::AuthOnly),
            "auth-and-writes" => Some(TfaMode::AuthAndWrites),
            _ => None,
        }
    }
}

#[derive(Clone, Debug)]
pub struct TfaState {
    pub mode: TfaMode,
    /// Enrolment started but not confirmed with a code: not enforced yet.
    pub pending: bool,
    /// The TOTP secret, sealed with the server key (see `keyring`).
    pub sealed_secret: String,
    /// The newest TOTP time step accepted; codes of this step or older are refused.
    pub last_step: Option<i64>,
}

impl TfaState {
    /// Whether an OTP is enforced (enrolment confirmed).
    pub fn enabled(&self) -> bool {
        !self.pending
    }
}

/// The free-form profile fields `npm profile set` may change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProfileFields {
    pub fullname: Option<String>,
    pub homepage: Option<String>,
    pub github: Option<String>,
    pub twitter: Option<String>,
    pub freenode: Option<String>,
}

#[derive(Clone, Debug)]
pub struct NewUser {
    pub name: String,
    pub email: String,
    pub password_hash: String,
}

/// What kind of token a row is; decides what it may do before any finer limit applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TokenKind {
    /// Made by `npm login`: everything the user may do.
    Session,
    /// A full-permission token from `npm token create`.
    Publish,
    /// Reads only.
    ReadOnly,
    /// Full permission for packages, skips the OTP for package writes; cannot manage tokens.
    Automation,
    /// Limited to packages, scopes and orgs with their permissions.
    Granular,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::Publish => "publish",
            TokenKind::ReadOnly => "read-only",
            TokenKind::Automation => "automation",
            TokenKind::Granular => "granular",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "session" => TokenKind::Session,
            "publish" => TokenKind::Publish,
            "read-only" => TokenKind::ReadOnly,
            "automation" => TokenKind::Automation,
            "granular" => TokenKind::Granular,
            _ => return None,
        })
    }
}

/// npm's permission values for packages/scopes and for orgs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    NoAccess,
    ReadOnly,
    ReadWrite,
    ReadWriteStageOnly,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::NoAccess => "no-access",
            Permission::ReadOnly => "read-only",
            Permission::ReadWrite => "read-write",
            Permission::ReadWriteStageOnly => "read-write-stage-only",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "no-access" => Permission::NoAccess,
            "read-only" => Permission::ReadOnly,
            "read-write" => Permission::ReadWrite,
            "read-write-stage-only" => Permission::ReadWriteStageOnly,
            _ => return None,
        })
    }

    pub fn can_write(self) -> bool {
        matches!(self, Permission::ReadWrite | Permission::ReadWriteStageOnly)
    }
}

/// A token's stored metadata. The token itself is never stored; `key` is its SHA-512 hex.
#[derive(Clone, Debug)]
pub struct TokenRecord {
    pub key: TokenKey,
    pub user_id: i64,
    /// A true prefix of the token, shown in lists.
    pub redacted: String,
    pub kind: TokenKind,
    pub name: Option<String>,
    pub description: Option<String>,
    pub readonly: bool,
    pub automation: bool,
    pub bypass_2fa: bool,
    /// `None`: no restriction. Entries are normalised CIDRs.
    pub cidr_whitelist: Option<Vec<String>>,
    pub packages: Vec<String>,
    pub packages_all: bool,
    pub scopes: Vec<String>,
    pub orgs: Vec<String>,
    pub packages_and_scopes_permission: Option<Permission>,
    pub orgs_permission: Option<Permission>,
    pub created: DateTime<Utc>,
    pub expires: Option<DateTime<Utc>>,
    pub revoked: Option<DateTime<Utc>>,
    /// When and from which address the token was last used (flushed in batches).
    pub last_used: Option<DateTime<Utc>>,
    pub last_used_ip: Option<String>,
}

impl TokenRecord {
    /// Read-only by kind or by flag (legacy read-only tokens, granular read-only permission).
    pub fn is_read_only(&self) -> bool {
        self.readonly || self.kind == TokenKind::ReadOnly
    }
}

/// One use of a token, recorded in memory and written in batches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenUse {
    pub key: TokenKey,
    pub at: DateTime<Utc>,
    pub client: String,
}

/// A stored audit event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub at: DateTime<Utc>,
    pub event: String,
    pub user: Option<String>,
    /// A short, non-secret id of the token concerned (the start of its key).
    pub key_id: Option<String>,
    pub client: Option<String>,
    pub user_agent: Option<String>,
    pub detail: serde_json::Value,
}

/// Which audit events to list.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub user: Option<String>,
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// A token found by its key, with the owner it acts for.
#[derive(Clone, Debug)]
/// Shared, so the verification cache and each request hold it without copying.
pub struct TokenWithOwner {
    pub token: std::sync::Arc<TokenRecord>,
    pub owner: std::sync::Arc<User>,
}

#[async_trait]
pub trait Store: WebStore + Send + Sync + 'static {
    /// Whether the database answers (readiness).
    async fn ping(&self) -> StoreResult<()>;

    /// Creates a user; `Conflict` when the name is taken.
    async fn create_user(&self, user: &NewUser) -> StoreResult<User>;
    async fn user_by_name(&self, name: &str) -> StoreResult<Option<User>>;
    async fn list_users(&self) -> StoreResult<Vec<User>>;
    /// Replaces the password hash; with `revoke_sessions` also revokes the user's login
    /// sessions. Returns how many sessions were revoked.
    async fn set_password(
        &self,
        user_id: i64,
        password_hash: &str,
        revoke_sessions: bool,
    ) -> StoreResult<u64>;

    /// Starts (or restarts) two-factor enrolment: pending until confirmed.
    async fn start_tfa(&self, user_id: i64, mode: TfaMode, sealed_secret: &str) -> StoreResult<()>;
    /// Confirms enrolment: records the accepted step and stores the recovery-code hashes.
    /// False when the account is not pending any more (a concurrent confirmation won).
    async fn confirm_tfa(
        &self,
        user_id: i64,
        step: i64,
        recovery_hashes: &[String],
    ) -> StoreResult<bool>;
    async fn set_tfa_mode(&self, user_id: i64, mode: TfaMode) -> StoreResult<()>;
    /// Turns two-factor off and forgets its secret and recovery codes.
    async fn disable_tfa(&self, user_id: i64) -> StoreResult<()>;
    /// Records `step` as used if it is newer than the last one: false means a replay.
    async fn use_totp_step(&self, user_id: i64, step: i64) -> StoreResult<bool>;
    /// Marks an unused recovery code as used: false when unknown or already used.
    async fn use_recovery_code(&self, user_id: i64, code_hash: &str) -> StoreResult<bool>;
    /// Updates e-mail and the free-form fields.
    async fn update_profile(
        &self,
        user_id: i64,
        email: &str,
        fields: &ProfileFields,
    ) -> StoreResult<()>;
    /// Revokes the user's login sessions except `keep`.
    async fn revoke_sessions(&self, user_id: i64, keep: Option<&TokenKey>) -> StoreResult<u64>;

    /// Stores a new token row; it is durable when this returns.
    async fn insert_token(&self, token: &TokenRecord) -> StoreResult<()>;
    /// The token with that key and its owner, revoked and expired ones included.
    async fn token_by_key(&self, key: &TokenKey) -> StoreResult<Option<TokenWithOwner>>;
    /// Live (not revoked, not expired) tokens of a user other than login sessions.
    async fn count_live_tokens(&self, user_id: i64, now: DateTime<Utc>) -> StoreResult<i64>;
    /// Up to `limit` of a user's unrevoked tokens from `from`, newest first (ties by key), and
    /// how many there are in all.
    async fn list_tokens(
        &self,
        user_id: i64,
        from: &TokensFrom,
        limit: i64,
    ) -> StoreResult<(Vec<TokenRecord>, i64)>;
    /// Disables or enables an account; a disabled account's tokens stop working at once.
    async fn set_user_disabled(&self, user_id: i64, disabled: bool) -> StoreResult<()>;
    /// Tokens (any user's, revoked ones included) whose key starts with `hex_prefix`.
    async fn tokens_by_key_prefix(
        &self,
        hex_prefix: &str,
        limit: i64,
    ) -> StoreResult<Vec<TokenWithOwner>>;
    /// Revokes every live token of a user; returns how many.
    async fn revoke_all_tokens(&self, user_id: i64, now: DateTime<Utc>) -> StoreResult<u64>;
    /// Records token uses (newest wins), in one transaction.
    async fn record_token_uses(&self, uses: &[TokenUse]) -> StoreResult<()>;
    async fn insert_audit(&self, events: &[AuditRecord]) -> StoreResult<()>;
    /// Events, newest first.
    async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>>;
    /// Deletes events older than `before`; returns how many.
    async fn prune_audit(&self, before: DateTime<Utc>) -> StoreResult<u64>;

    /// Revokes one of the user's tokens; false when it is unknown, not theirs or already revoked.
    async fn revoke_token(
        &self,
        user_id: i64,
        key: &TokenKey,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
}
