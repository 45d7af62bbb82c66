//! Storage for the web pages: browser sessions and npm's web logins. A supertrait of
//! [`super::Store`], so handlers reach it through the same `Arc<dyn Store>`.

use super::{StoreResult, User};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A signed-in browser, found by the SHA-256 of its cookie.
#[derive(Clone, Debug)]
pub struct WebSession {
    pub user: User,
    /// The password was right, the one-time password is still awaited.
    pub otp_pending: bool,
    pub created: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// The absolute end, whatever the activity.
    pub expires: DateTime<Utc>,
}

/// A new session row.
#[derive(Clone, Debug)]
pub struct NewWebSession<'a> {
    pub id_hash: &'a str,
    pub user_id: i64,
    pub otp_pending: bool,
    pub now: DateTime<Utc>,
    pub expires: DateTime<Utc>,
}

/// An npm web login as the browser side sees it (found by the hash of the loginUrl id).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WebLogin {
    /// npm asked for an account to be created (`npm adduser`).
    pub create: bool,
    pub expires: DateTime<Utc>,
    /// Someone approved or cancelled it already.
    pub decided: bool,
}

/// What npm's poll of `doneUrl` finds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WebLoginPoll {
    /// Unknown, expired, or already answered with a token.
    Gone,
    /// Nobody approved it yet.
    Pending,
    /// The person said no.
    Cancelled,
    /// Approved by the user of this name; the login is now used up (this answer is given
    /// once).
    Approved(String),
}

#[async_trait]
pub trait WebStore: Send + Sync {
    async fn insert_web_session(&self, session: &NewWebSession<'_>) -> StoreResult<()>;
    /// The session and its user, expired or not (the caller applies the limits).
    async fn web_session(&self, id_hash: &str) -> StoreResult<Option<WebSession>>;
    /// Records activity (for the idle limit).
    async fn touch_web_session(&self, id_hash: &str, now: DateTime<Utc>) -> StoreResult<()>;
    async fn delete_web_session(&self, id_hash: &str) -> StoreResult<()>;
    /// Ends the user's browser sessions except `keep`; returns how many.
    async fn delete_user_web_sessions(&self, user_id: i64, keep: Option<&str>) -> StoreResult<u64>;

    /// Stores a pending npm web login.
    async fn insert_web_login(
        &self,
        id_hash: &str,
        done_hash: &str,
        create: bool,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> StoreResult<()>;
    /// The login opened in the browser; `None` when unknown or expired.
    async fn web_login(&self, id_hash: &str, now: DateTime<Utc>) -> StoreResult<Option<WebLogin>>;
    /// Approves (`Some(user)`) or cancels (`None`) a pending, unexpired login; false when it is
    /// not pending any more.
    async fn decide_web_login(
        &self,
        id_hash: &str,
        user_id: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool>;
    /// npm's poll: an approved login is claimed (atomically, so only one poll gets it).
    async fn poll_web_login(
        &self,
        done_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<WebLoginPoll>;
    /// Deletes expired logins and sessions past their end or idle since `idle_since`; returns
    /// how many rows went.
    async fn prune_web(&self, now: DateTime<Utc>, idle_since: DateTime<Utc>) -> StoreResult<u64>;
}
