//! The SQL store, on SQLite or PostgreSQL through sqlx's `Any` driver. Queries are written
//! once in the dialect both accept (`$N` parameters, integers for flags and times).

use super::cache::{CacheSettings, Change, TokenCache};
use super::*;
use anyhow::Context;
use chrono::TimeZone;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Connection, Row, Transaction};
use std::sync::Arc;
use std::time::Duration;

mod web;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
    /// The verification cache, when the server enabled it (see `store::cache`).
    cache: std::sync::OnceLock<Arc<TokenCache>>,
}

/// Pool settings taken from the configuration.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl SqlStore {
    /// Connects (creating a SQLite file when missing) and runs pending migrations.
    pub async fn connect(url: &str, settings: &PoolSettings) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            (Backend::Sqlite, sqlite_url(url))
        } else {
            (Backend::Postgres, url.to_owned())
        };
        let mut options = AnyPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(settings.acquire_timeout)
            .after_release(|conn, _| {
                Box::pin(async move {
                    // A transaction dropped without commit queues its rollback; the ping runs
                    // it. Still inside a transaction after that means the connection and sqlx
                    // disagree on it: SQLite rolls a transaction back by itself when COMMIT
                    // hits a full disk, sqlx's ROLLBACK then fails and keeps counting one
                    // level, and the next transaction opens as a SAVEPOINT whose rollback
                    // leaves it open for good (stale reads, writes never committed). Such a
                    // connection is closed instead of reused.
                    if conn.is_in_transaction() {
                        conn.ping().await?;
                    }
                    if conn.is_in_transaction() {
                        tracing::warn!(
                            "closed a database connection left inside a failed transaction"
                        );
                        return Ok(false);
                    }
                    Ok(true)
                })
            });
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            });
        }
        let pool = options.connect(&url).await.with_context(|| {
            format!(
                "cannot open database {}",
                crate::config::mask_url_password(&url)
            )
        })?;
        let store = SqlStore {
            pool,
            backend,
            cache: std::sync::OnceLock::new(),
        };
        store.migrate().await?;
        Ok(store)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies pending migrations of this backend.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        migrator
            .run(&self.pool)
            .await
            .context("migrations failed")?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Writes the event of a change every replica's verification cache must see, in the
    /// transaction that makes the change: the change is never stored without its event. On
    /// PostgreSQL the NOTIFY that wakes the other replicas is part of the same transaction, so
    /// it is delivered exactly when the change commits.
    async fn record_change(
        &self,
        tx: &mut Transaction<'_, Any>,
        change: &Change,
    ) -> StoreResult<()> {
        let (key, user) = match change {
            Change::Token(k) => (Some(k.0.as_str()), None),
            Change::User(id) => (None, Some(*id)),
        };
        sqlx::query("INSERT INTO cache_events (token_key, user_id, at_ms) VALUES ($1, $2, $3)")
            .bind(key)
            .bind(user)
            .bind(ms(Utc::now()))
            .execute(&mut **tx)
            .await
            .map_err(map_err)?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_notify('tokengate_changes', '')")
                .execute(&mut **tx)
                .await
                .map_err(map_err)?;
        }
        Ok(())
    }

    /// Forgets a change in this replica's cache at once (others learn it from its event).
    fn forget_locally(&self, change: &Change) {
        if let Some(cache) = self.cache.get() {
            cache.forget(change);
        }
    }

    /// Turns on the verification cache and the change polling (the server does; the admin
    /// commands do not). `url` is the database URL, for PostgreSQL's LISTEN.
    pub async fn enable_cache(
        self: &Arc<Self>,
        settings: CacheSettings,
        url: &str,
    ) -> anyhow::Result<()> {
        let last = sqlx::query("SELECT COALESCE(MAX(seq), 0) AS seq FROM cache_events")
            .fetch_one(&self.pool)
            .await
            .context("reading the change events")?
            .try_get::<i64, _>("seq")
            .context("reading the change events")?;
        if self
            .cache
            .set(Arc::new(TokenCache::new(&settings)))
            .is_err()
        {
            return Ok(());
        }
        let wake = Arc::new(tokio::sync::Notify::new());
        if self.backend == Backend::Postgres {
            let wake = wake.clone();
            let url = url.to_owned();
            tokio::spawn(async move { listen_for_changes(&url, &wake).await });
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last = last;
            let mut seen = std::collections::HashMap::new();
            let mut since_prune = 0u32;
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(settings.poll) => {}
                    _ = wake.notified() => {}
                }
                let Some(store) = weak.upgrade() else { return };
                match store.apply_changes(last, &mut seen).await {
                    Ok(seq) => {
                        last = seq;
                        if std::mem::take(&mut failing) {
                            tracing::info!("change events readable again");
                        }
                    }
                    // Once per outage, not at every poll: the requests' own errors tell the rest.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "polling change events failed; retrying");
                    }
                    Err(_) => {}
                }
                since_prune += 1;
                if since_prune >= 20_000 {
                    since_prune = 0;
                    store.prune_changes().await;
                }
            }
        });
        Ok(())
    }

    /// Forgets what changed after `last` (and, since sequence numbers of concurrent
    /// transactions can become visible out of order, in the last few seconds too).
    /// `seen` holds the recent events already applied (sequence → time), so each is applied
    /// once even though the last seconds are read again.
    async fn apply_changes(
        &self,
        last: i64,
        seen: &mut std::collections::HashMap<i64, i64>,
    ) -> StoreResult<i64> {
        let now = ms(Utc::now());
        let recent = now - 5_000;
        seen.retain(|_, at| *at > recent - 5_000);
        let rows = sqlx::query(
            "SELECT seq, token_key, user_id, at_ms FROM cache_events WHERE seq > $1 OR at_ms > $2 ORDER BY seq",
        )
        .bind(last)
        .bind(recent)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        let mut newest = last;
        if let Some(cache) = self.cache.get() {
            for row in &rows {
                let seq: i64 = row.try_get("seq").map_err(map_err)?;
                newest = newest.max(seq);
                let at: i64 = row.try_get("at_ms").map_err(map_err)?;
                if seen.insert(seq, at).is_some() {
                    continue;
                }
                let key: Option<String> = row.try_get("token_key").map_err(map_err)?;
                let user: Option<i64> = row.try_get("user_id").map_err(map_err)?;
                if let Some(key) = key {
                    cache.forget(&Change::Token(TokenKey(key)));
                }
                if let Some(user) = user {
                    cache.forget(&Change::User(user));
                }
            }
        }
        Ok(newest)
    }

    async fn prune_changes(&self) {
        let before = ms(Utc::now()) - 3_600_000;
        if let Err(e) = sqlx::query("DELETE FROM cache_events WHERE at_ms < $1")
            .bind(before)
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "pruning change events failed");
        }
    }

    /// Inserts many tokens in one transaction (seeding benchmarks and imports).
    pub async fn insert_tokens(&self, tokens: &[TokenRecord]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for t in tokens {
            insert_token_query(t)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    /// Connections open in the pool (idle and in use) and how many of them are idle.
    pub fn pool_stats(&self) -> (u32, usize) {
        (self.pool.size(), self.pool.num_idle())
    }
}

/// How long the LISTEN connection waits before connecting again after losing its connection.
const LISTEN_RETRY: Duration = Duration::from_millis(250);

/// Wakes the change poller on PostgreSQL NOTIFY; reconnects after errors. Polling goes on
/// regardless, so this only makes propagation faster.
async fn listen_for_changes(url: &str, wake: &tokio::sync::Notify) {
    // A pool of its own, through which the listener also reconnects, with a short acquire
    // timeout: with sqlx's default (30 s of growing back-off between attempts) the listener
    // came back only seconds after the database did.
    let pool = match sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy(url)
    {
        Ok(pool) => pool,
        Err(e) => {
            tracing::warn!(error = %e, "no LISTEN connection; polling only");
            return;
        }
    };
    let mut lost = false;
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen("tokengate_changes").await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match listening.await {
            Ok(mut listener) => {
                if std::mem::take(&mut lost) {
                    tracing::info!("LISTEN connection back");
                }
                // Events written while it was away are read now, not at the next poll.
                wake.notify_one();
                let e = loop {
                    match listener.recv().await {
                        Ok(_) => wake.notify_one(),
                        Err(e) => break e,
                    }
                };
                tracing::warn!(error = %e, "LISTEN connection lost; polling only until it is back");
                lost = true;
            }
            Err(e) => tracing::debug!(error = %e, "LISTEN connection failed; polling only"),
        }
        tokio::time::sleep(LISTEN_RETRY).await;
    }
}

/// `sqlite://file.db` → `sqlite://file.db?mode=rwc`, so a missing file is created.
fn sqlite_url(url: &str) -> String {
    if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&mode=rwc")
    } else {
        format!("{url}?mode=rwc")
    }
}

fn map_err(e: sqlx::Error) -> StoreError {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(e.to_string()),
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::Conflict("already exists".into())
        }
        sqlx::Error::Database(db) => {
            let sqlite = db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some();
            match classify_code(sqlite, db.code().as_deref().unwrap_or_default()) {
                Fault::CannotWrite(problem) => StoreError::CannotWrite(problem, db.to_string()),
                Fault::Unavailable => StoreError::Unavailable(db.to_string()),
                Fault::Other => StoreError::Other(sqlx::Error::Database(db).into()),
            }
        }
        other => StoreError::Other(other.into()),
    }
}

/// What a database error code means for the request.
#[derive(Debug, PartialEq, Eq)]
enum Fault {
    CannotWrite(WriteProblem),
    Unavailable,
    Other,
}

/// Classifies SQLite result codes (extended codes: the primary code is the low byte) and
/// PostgreSQL SQLSTATEs.
fn classify_code(sqlite: bool, code: &str) -> Fault {
    if sqlite {
        return match code.parse::<i32>().map(|c| c & 0xff) {
            // SQLITE_FULL
            Ok(13) => Fault::CannotWrite(WriteProblem::DiskFull),
            // SQLITE_READONLY
            Ok(8) => Fault::CannotWrite(WriteProblem::ReadOnly),
            // SQLITE_IOERR (EFBIG over a file size limit lands here too)
            Ok(10) => Fault::CannotWrite(WriteProblem::Io),
            // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_CANTOPEN
            Ok(5 | 6 | 14) => Fault::Unavailable,
            _ => Fault::Other,
        };
    }
    match code {
        // disk_full
        "53100" => Fault::CannotWrite(WriteProblem::DiskFull),
        // read_only_sql_transaction: a standby, or default_transaction_read_only
        "25006" => Fault::CannotWrite(WriteProblem::ReadOnly),
        // io_error
        "58030" => Fault::CannotWrite(WriteProblem::Io),
        // connection exceptions, operator intervention (shutdown, starting up), insufficient
        // resources (too many connections, out of memory)
        c if c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") => {
            Fault::Unavailable
        }
        _ => Fault::Other,
    }
}

fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

fn json_list(v: &[String]) -> String {
    serde_json::to_string(v).expect("strings serialize")
}

fn parse_list(s: &str) -> anyhow::Result<Vec<String>> {
    serde_json::from_str(s).context("stored list is not JSON")
}

const USER_COLUMNS: &str = "id, name, email, password_hash, disabled, created_ms, updated_ms, \
    tfa_mode, tfa_pending, tfa_secret, tfa_last_step, fullname, homepage, github, twitter, freenode";
const TOKEN_COLUMNS: &str = "t.key, t.user_id, t.redacted, t.kind, t.name, t.description, \
    t.readonly, t.automation, t.bypass_2fa, t.cidr_whitelist, t.packages, t.packages_all, \
    t.scopes, t.orgs, t.packages_and_scopes_permission, t.orgs_permission, t.created_ms, \
    t.expires_ms, t.revoked_ms, t.last_used_ms, t.last_used_ip";

fn user_from_row(row: &AnyRow, prefix: &str) -> Result<User, sqlx::Error> {
    let col = |c: &str| format!("{prefix}{c}");
    let text = |c: &str| row.try_get::<Option<String>, _>(col(c).as_str());
    let tfa = match (text("tfa_mode")?, text("tfa_secret")?) {
        (Some(mode), Some(sealed_secret)) => Some(TfaState {
            mode: TfaMode::parse(&mode)
                .ok_or_else(|| sqlx::Error::Decode(format!("bad stored 2FA mode {mode}").into()))?,
            pending: row.try_get::<i64, _>(col("tfa_pending").as_str())? != 0,
            sealed_secret,
            last_step: row.try_get(col("tfa_last_step").as_str())?,
        }),
        _ => None,
    };
    Ok(User {
        tfa,
        profile: ProfileFields {
            fullname: text("fullname")?,
            homepage: text("homepage")?,
            github: text("github")?,
            twitter: text("twitter")?,
            freenode: text("freenode")?,
        },
        id: row.try_get(col("id").as_str())?,
        name: row.try_get(col("name").as_str())?,
        email: row.try_get(col("email").as_str())?,
        password_hash: row.try_get(col("password_hash").as_str())?,
        disabled: row.try_get::<i64, _>(col("disabled").as_str())? != 0,
        created: time(row.try_get(col("created_ms").as_str())?),
        updated: time(row.try_get(col("updated_ms").as_str())?),
    })
}

fn token_from_row(row: &AnyRow) -> StoreResult<TokenRecord> {
    let get_bool = |c: &str| row.try_get::<i64, _>(c).map(|v| v != 0);
    let kind: String = row.try_get("kind").map_err(map_err)?;
    let perm = |c: &str| -> StoreResult<Option<Permission>> {
        let v: Option<String> = row.try_get(c).map_err(map_err)?;
        v.map(|s| Permission::parse(&s).with_context(|| format!("bad stored permission {s}")))
            .transpose()
            .map_err(StoreError::Other)
    };
    let cidr: Option<String> = row.try_get("cidr_whitelist").map_err(map_err)?;
    let list = |c: &str| -> StoreResult<Vec<String>> {
        let s: String = row.try_get(c).map_err(map_err)?;
        parse_list(&s).map_err(StoreError::Other)
    };
    Ok(TokenRecord {
        key: TokenKey(row.try_get("key").map_err(map_err)?),
        user_id: row.try_get("user_id").map_err(map_err)?,
        redacted: row.try_get("redacted").map_err(map_err)?,
        kind: TokenKind::parse(&kind)
            .with_context(|| format!("bad stored token kind {kind}"))
            .map_err(StoreError::Other)?,
        name: row.try_get("name").map_err(map_err)?,
        description: row.try_get("description").map_err(map_err)?,
        readonly: get_bool("readonly").map_err(map_err)?,
        automation: get_bool("automation").map_err(map_err)?,
        bypass_2fa: get_bool("bypass_2fa").map_err(map_err)?,
        cidr_whitelist: cidr
            .map(|s| parse_list(&s))
            .transpose()
            .map_err(StoreError::Other)?,
        packages: list("packages")?,
        packages_all: get_bool("packages_all").map_err(map_err)?,
        scopes: list("scopes")?,
        orgs: list("orgs")?,
        packages_and_scopes_permission: perm("packages_and_scopes_permission")?,
        orgs_permission: perm("orgs_permission")?,
        created: time(row.try_get("created_ms").map_err(map_err)?),
        expires: row
            .try_get::<Option<i64>, _>("expires_ms")
            .map_err(map_err)?
            .map(time),
        revoked: row
            .try_get::<Option<i64>, _>("revoked_ms")
            .map_err(map_err)?
            .map(time),
        last_used: row
            .try_get::<Option<i64>, _>("last_used_ms")
            .map_err(map_err)?
            .map(time),
        last_used_ip: row.try_get("last_used_ip").map_err(map_err)?,
    })
}

/// The `INSERT` of one token row.
fn insert_token_query(
    t: &TokenRecord,
) -> sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments<'_>> {
    sqlx::query(
        "INSERT INTO tokens (key, user_id, redacted, kind, name, description, readonly, \
         automation, bypass_2fa, cidr_whitelist, packages, packages_all, scopes, orgs, \
         packages_and_scopes_permission, orgs_permission, created_ms, expires_ms, revoked_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, \
         $18, NULL)",
    )
    .bind(&t.key.0)
    .bind(t.user_id)
    .bind(&t.redacted)
    .bind(t.kind.as_str())
    .bind(t.name.as_deref())
    .bind(t.description.as_deref())
    .bind(t.readonly as i64)
    .bind(t.automation as i64)
    .bind(t.bypass_2fa as i64)
    .bind(t.cidr_whitelist.as_deref().map(json_list))
    .bind(json_list(&t.packages))
    .bind(t.packages_all as i64)
    .bind(json_list(&t.scopes))
    .bind(json_list(&t.orgs))
    .bind(t.packages_and_scopes_permission.map(Permission::as_str))
    .bind(t.orgs_permission.map(Permission::as_str))
    .bind(ms(t.created))
    .bind(t.expires.map(ms))
}

/// `SELECT` of tokens joined with their owners (owner columns prefixed `u_`).
fn token_with_owner_query(condition: &str) -> String {
    let owner = USER_COLUMNS
        .split(", ")
        .map(|c| format!("u.{c} AS u_{c}", c = c.trim()))
        .collect::<Vec<_>>()
        .join(", ");
    format!("SELECT {TOKEN_COLUMNS}, {owner} FROM tokens t JOIN users u ON u.id = t.user_id WHERE {condition}")
}

fn token_with_owner(row: &AnyRow) -> StoreResult<TokenWithOwner> {
    Ok(TokenWithOwner {
        token: Arc::new(token_from_row(row)?),
        owner: Arc::new(user_from_row(row, "u_").map_err(map_err)?),
    })
}

fn audit_from_row(row: &AnyRow) -> StoreResult<AuditRecord> {
    let detail: String = row.try_get("detail").map_err(map_err)?;
    Ok(AuditRecord {
        at: time(row.try_get("at_ms").map_err(map_err)?),
        event: row.try_get("event").map_err(map_err)?,
        user: row.try_get("user_name").map_err(map_err)?,
        key_id: row.try_get("key_id").map_err(map_err)?,
        client: row.try_get("client").map_err(map_err)?,
        user_agent: row.try_get("user_agent").map_err(map_err)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
    })
}

#[async_trait]
impl Store for SqlStore {
    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn create_user(&self, user: &NewUser) -> StoreResult<User> {
        let now = ms(Utc::now());
        let row = sqlx::query(&format!(
            "INSERT INTO users (name, email, password_hash, disabled, created_ms, updated_ms) \
             VALUES ($1, $2, $3, 0, $4, $4) RETURNING {USER_COLUMNS}"
        ))
        .bind(&user.name)
        .bind(&user.email)
        .bind(&user.password_hash)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match map_err(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("user {} exists", user.name)),
            other => other,
        })?;
        user_from_row(&row, "").map_err(map_err)
    }

    async fn user_by_name(&self, name: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| user_from_row(&r, ""))
            .transpose()
            .map_err(map_err)
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        let rows = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users ORDER BY name"))
            .fetch_all(&self.pool)
            .await
            .map_err(map_err)?;
        rows.iter()
            .map(|r| user_from_row(r, ""))
            .collect::<Result<_, _>>()
            .map_err(map_err)
    }

    async fn set_password(
        &self,
        user_id: i64,
        password_hash: &str,
        revoke_sessions: bool,
    ) -> StoreResult<u64> {
        let now = ms(Utc::now());
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let updated =
            sqlx::query("UPDATE users SET password_hash = $1, updated_ms = $2 WHERE id = $3")
                .bind(password_hash)
                .bind(now)
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        if updated.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        let mut revoked = 0;
        if revoke_sessions {
            revoked = sqlx::query(
                "UPDATE tokens SET revoked_ms = $1 \
                 WHERE user_id = $2 AND kind = 'session' AND revoked_ms IS NULL",
            )
            .bind(now)
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?
            .rows_affected();
            // Signed-in browsers end too: a session could approve an npm login.
            sqlx::query("DELETE FROM web_sessions WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        self.record_change(&mut tx, &Change::User(user_id)).await?;
        tx.commit().await.map_err(map_err)?;
        self.forget_locally(&Change::User(user_id));
        Ok(revoked)
    }

    async fn start_tfa(&self, user_id: i64, mode: TfaMode, sealed_secret: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "UPDATE users SET tfa_mode = $1, tfa_pending = 1, tfa_secret = $2, tfa_last_step = NULL, \
             updated_ms = $3 WHERE id = $4",
        )
        .bind(mode.as_str())
        .bind(sealed_secret)
        .bind(ms(Utc::now()))
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        self.record_change(&mut tx, &Change::User(user_id)).await?;
        tx.commit().await.map_err(map_err)?;
        self.forget_locally(&Change::User(user_id));
        Ok(())
    }

    async fn confirm_tfa(
        &self,
        user_id: i64,
        step: i64,
        recovery_hashes: &[String],
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE users SET tfa_pending = 0, tfa_last_step = $1, updated_ms = $2 \
             WHERE id = $3 AND tfa_pending = 1 AND tfa_secret IS NOT NULL",
        )
        .bind(step)
        .bind(ms(Utc::now()))
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        for hash in recovery_hashes {
            sqlx::query(
                "INSERT INTO recovery_codes (user_id, code_hash, used_ms) VALUES ($1, $2, NULL)",
            )
            .bind(user_id)
            .bind(hash)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        self.record_change(&mut tx, &Change::User(user_id)).await?;
        tx.commit().await.map_err(map_err)?;
        self.forget_locally(&Change::User(user_id));
        Ok(true)
    }

    async fn set_tfa_mode(&self, user_id: i64, mode: TfaMode) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("UPDATE users SET tfa_mode = $1, updated_ms = $2 WHERE id = $3 AND tfa_secret IS NOT NULL")
            .bind(mode.as_str())
            .bind(ms(Utc::now()))
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        self.record_change(&mut tx, &Change::User(user_id)).await?;
        tx.commit().await.map_err(map_err)?;
        self.forget_locally(&Change::User(user_id));
        Ok(())
    }

    async fn disable_tfa(&self, user_id: i64) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "UPDATE users SET tfa_mode = NULL, tfa_pending = 0, tfa_secret = NULL, \
             tfa_last_step = NULL, updated_ms = $1 WHERE id = $2",
        )
        .bind(ms(Utc::now()))
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        self.record_change(&mut tx, &Change::User(user_id)).await?;
        tx.commit().await.map_err(map_err)?;
        self.forget_locally(&Change::User(user_id));
        Ok(())
    }

    async fn use_totp_step(&self, user_id: i64, step: i64) -> StoreResult<bool> {
        // One conditional UPDATE: two racing requests cannot both use the same step.
        let done = sqlx::query(
            "UPDATE users SET tfa_last_step = $1 WHERE id = $2 \
             AND (tfa_last_step IS NULL OR tfa_last_step < $1)",
        )
        .bind(step)
        .bind(user_id)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        // The owner's cached last step is only a hint (this UPDATE decides), so no event.
        self.forget_locally(&Change::User(user_id));
        Ok(done.rows_affected() > 0)
    }

    async fn use_recovery_code(&self, user_id: i64, code_hash: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE recovery_codes SET used_ms = $1 WHERE user_id = $2 AND code_hash = $3 AND used_ms IS NULL",
        )
        .bind(ms(Utc::now()))
        .bind(user_id)
        .bind(code_hash)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn update_profile(
        &self,
        user_id: i64,
        email: &str,
        f: &ProfileFields,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query(
            "UPDATE users SET email = $1, fullname = $2, homepage = $3, github = $4, twitter = $5, \
             freenode = $6, updated_ms = $7 WHERE id = $8",
        )
        .bind(email)
        .bind(f.fullname.as_deref())
        .bind(f.homepage.as_deref())
        .bind(f.github.as_deref())
        .bind(f.twitter.as_deref())
        .bind(f.freenode.as_deref())
        .bind(ms(Utc::now()))
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        self.record_change(&mut tx, &Change::User(user_id)).await?;
        tx.commit().await.map_err(map_err)?;
        self.forget_locally(&Change::User(user_id));
        Ok(())
    }

    async fn revoke_sessions(&self, user_id: i64, keep: Option<&TokenKey>) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_ms = $1 WHERE user_id = $2 AND kind = 'session' \
             AND revoked_ms IS NULL AND key <> $3",
        )
        .bind(ms(Utc::now()))
        .bind(user_id)
        .bind(keep.map(|k| k.0.as_str()).unwrap_or(""))
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        self.record_change(&mut tx, &Change::User(user_id)).await?;
        tx.commit().await.map_err(map_err)?;
        self.forget_locally(&Change::User(user_id));
        Ok(done.rows_affected())
    }

    async fn insert_token(&self, t: &TokenRecord) -> StoreResult<()> {
        insert_token_query(t)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn token_by_key(&self, key: &TokenKey) -> StoreResult<Option<TokenWithOwner>> {
        let cache = self.cache.get();
        if let Some(hit) = cache.and_then(|c| c.get(key)) {
            return Ok(Some(hit));
        }
        let generation = cache.map(|c| c.generation()).unwrap_or_default();
        let row = sqlx::query(&token_with_owner_query("t.key = $1"))
            .bind(&key.0)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        let found = row.as_ref().map(token_with_owner).transpose()?;
        if let (Some(cache), Some(found)) = (cache, &found) {
            cache.insert(found.clone(), generation);
        }
        Ok(found)
    }

    async fn count_live_tokens(&self, user_id: i64, now: DateTime<Utc>) -> StoreResult<i64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM tokens WHERE user_id = $1 AND kind <> 'session' \
             AND revoked_ms IS NULL AND (expires_ms IS NULL OR expires_ms > $2)",
        )
        .bind(user_id)
        .bind(ms(now))
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?;
        row.try_get::<i64, _>("n").map_err(map_err)
    }

    async fn list_tokens(
        &self,
        user_id: i64,
        from: &TokensFrom,
        limit: i64,
    ) -> StoreResult<(Vec<TokenRecord>, i64)> {
        // Both walk the partial index `tokens_live_by_user` from the newest token; only the
        // cursor form starts where the previous page ended, without stepping over it.
        let live = "FROM tokens t WHERE t.user_id = $1 AND t.revoked_ms IS NULL";
        let order = "ORDER BY t.created_ms DESC, t.key";
        let rows = match from {
            TokensFrom::Offset(offset) => {
                sqlx::query(&format!(
                    "SELECT {TOKEN_COLUMNS} {live} {order} LIMIT $2 OFFSET $3"
                ))
                .bind(user_id)
                .bind(limit)
                .bind(*offset)
                .fetch_all(&self.pool)
                .await
            }
            // `created_ms <= $2` first, so the index range starts at the cursor; then the ties.
            TokensFrom::After(cursor) => {
                sqlx::query(&format!(
                    "SELECT {TOKEN_COLUMNS} {live} AND t.created_ms <= $2 \
                     AND (t.created_ms < $3 OR t.key > $4) {order} LIMIT $5"
                ))
                .bind(user_id)
                .bind(cursor.created_ms)
                .bind(cursor.created_ms)
                .bind(cursor.key.0.as_str())
                .bind(limit)
                .fetch_all(&self.pool)
                .await
            }
        }
        .map_err(map_err)?;
        // Kept by triggers (migrations/*/0006_token_list.sql); no row: no live token yet.
        let total = sqlx::query(
            "SELECT COALESCE((SELECT live FROM token_counts WHERE user_id = $1), 0) AS n",
        )
        .bind(user_id)
        .fetch_one(&self.pool)
        .await
        .map_err(map_err)?
        .try_get::<i64, _>("n")
        .map_err(map_err)?;
        let tokens = rows
            .iter()
            .map(token_from_row)
            .collect::<StoreResult<_>>()?;
        Ok((tokens, total))
    }

    async fn revoke_token(
        &self,
        user_id: i64,
        key: &TokenKey,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_ms = $1 WHERE key = $2 AND user_id = $3 AND revoked_ms IS NULL",
        )
        .bind(ms(now))
        .bind(&key.0)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let revoked = done.rows_affected() > 0;
        let change = Change::Token(key.clone());
        if revoked {
            self.record_change(&mut tx, &change).await?;
        }
        tx.commit().await.map_err(map_err)?;
        if revoked {
            self.forget_locally(&change);
        }
        Ok(revoked)
    }

    async fn set_user_disabled(&self, user_id: i64, disabled: bool) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        sqlx::query("UPDATE users SET disabled = $1, updated_ms = $2 WHERE id = $3")
            .bind(i64::from(disabled))
            .bind(ms(Utc::now()))
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        if disabled {
            sqlx::query("DELETE FROM web_sessions WHERE user_id = $1")
                .bind(user_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        self.record_change(&mut tx, &Change::User(user_id)).await?;
        tx.commit().await.map_err(map_err)?;
        self.forget_locally(&Change::User(user_id));
        Ok(())
    }

    async fn tokens_by_key_prefix(
        &self,
        hex_prefix: &str,
        limit: i64,
    ) -> StoreResult<Vec<TokenWithOwner>> {
        if !hex_prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "{} ORDER BY t.created_ms DESC LIMIT $2",
            token_with_owner_query("t.key LIKE $1")
        ))
        .bind(format!("{}%", hex_prefix.to_ascii_lowercase()))
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(token_with_owner).collect()
    }

    async fn revoke_all_tokens(&self, user_id: i64, now: DateTime<Utc>) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        let done = sqlx::query(
            "UPDATE tokens SET revoked_ms = $1 WHERE user_id = $2 AND revoked_ms IS NULL",
        )
        .bind(ms(now))
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query("DELETE FROM web_sessions WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        self.record_change(&mut tx, &Change::User(user_id)).await?;
        tx.commit().await.map_err(map_err)?;
        self.forget_locally(&Change::User(user_id));
        Ok(done.rows_affected())
    }

    async fn record_token_uses(&self, uses: &[TokenUse]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for u in uses {
            sqlx::query(
                "UPDATE tokens SET last_used_ms = $1, last_used_ip = $2 \
                 WHERE key = $3 AND (last_used_ms IS NULL OR last_used_ms < $1)",
            )
            .bind(ms(u.at))
            .bind(&u.client)
            .bind(&u.key.0)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn insert_audit(&self, events: &[AuditRecord]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for e in events {
            sqlx::query(
                "INSERT INTO audit_events (at_ms, event, user_name, key_id, client, user_agent, detail) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(ms(e.at))
            .bind(&e.event)
            .bind(&e.user)
            .bind(&e.key_id)
            .bind(&e.client)
            .bind(&e.user_agent)
            .bind(e.detail.to_string())
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn list_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT at_ms, event, user_name, key_id, client, user_agent, detail FROM audit_events \
             WHERE ($1 IS NULL OR user_name = $1) AND at_ms >= $2 \
             ORDER BY at_ms DESC, id DESC LIMIT $3",
        )
        .bind(&filter.user)
        .bind(filter.since.map(ms).unwrap_or(0))
        .bind(filter.limit)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(audit_from_row).collect()
    }

    async fn prune_audit(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM audit_events WHERE at_ms < $1")
            .bind(ms(before))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_faults_are_told_apart_by_code() {
        use WriteProblem::*;
        for (sqlite, code, fault) in [
            (true, "13", Fault::CannotWrite(DiskFull)),
            (true, "8", Fault::CannotWrite(ReadOnly)),
            // SQLITE_READONLY_DBMOVED, SQLITE_IOERR_WRITE, SQLITE_IOERR_FSYNC
            (true, "1032", Fault::CannotWrite(ReadOnly)),
            (true, "778", Fault::CannotWrite(Io)),
            (true, "1034", Fault::CannotWrite(Io)),
            (true, "5", Fault::Unavailable),
            (true, "517", Fault::Unavailable),
            (true, "262", Fault::Unavailable),
            (true, "1", Fault::Other),
            (true, "19", Fault::Other),
            (false, "53100", Fault::CannotWrite(DiskFull)),
            (false, "25006", Fault::CannotWrite(ReadOnly)),
            (false, "58030", Fault::CannotWrite(Io)),
            (false, "08006", Fault::Unavailable),
            (false, "57P01", Fault::Unavailable),
            (false, "57P03", Fault::Unavailable),
            (false, "53300", Fault::Unavailable),
            (false, "42601", Fault::Other),
            // A PostgreSQL code that happens to be digits is not read as SQLite's.
            (false, "13", Fault::Other),
        ] {
            assert_eq!(classify_code(sqlite, code), fault, "{sqlite} {code}");
        }
    }
}
