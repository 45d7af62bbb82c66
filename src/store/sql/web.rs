//! [`WebStore`] on the SQL store: browser sessions and npm web logins.

use super::{map_err, ms, time, user_from_row, SqlStore, USER_COLUMNS};
use crate::store::web::{NewWebSession, WebLogin, WebLoginPoll, WebSession, WebStore};
use crate::store::StoreResult;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

#[async_trait]
impl WebStore for SqlStore {
    async fn insert_web_session(&self, s: &NewWebSession<'_>) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO web_sessions (id_hash, user_id, otp_pending, created_ms, last_seen_ms, \
             expires_ms) VALUES ($1, $2, $3, $4, $4, $5)",
        )
        .bind(s.id_hash)
        .bind(s.user_id)
        .bind(i64::from(s.otp_pending))
        .bind(ms(s.now))
        .bind(ms(s.expires))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn web_session(&self, id_hash: &str) -> StoreResult<Option<WebSession>> {
        let owner = USER_COLUMNS
            .split(", ")
            .map(|c| format!("u.{c} AS u_{c}", c = c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        let row = sqlx::query(&format!(
            "SELECT s.otp_pending, s.created_ms, s.last_seen_ms, s.expires_ms, {owner} \
             FROM web_sessions s JOIN users u ON u.id = s.user_id WHERE s.id_hash = $1"
        ))
        .bind(id_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some(WebSession {
            user: user_from_row(&row, "u_").map_err(map_err)?,
            otp_pending: row.try_get::<i64, _>("otp_pending").map_err(map_err)? != 0,
            created: time(row.try_get("created_ms").map_err(map_err)?),
            last_seen: time(row.try_get("last_seen_ms").map_err(map_err)?),
            expires: time(row.try_get("expires_ms").map_err(map_err)?),
        }))
    }

    async fn touch_web_session(&self, id_hash: &str, now: DateTime<Utc>) -> StoreResult<()> {
        sqlx::query("UPDATE web_sessions SET last_seen_ms = $1 WHERE id_hash = $2")
            .bind(ms(now))
            .bind(id_hash)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn delete_web_session(&self, id_hash: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM web_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn delete_user_web_sessions(&self, user_id: i64, keep: Option<&str>) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM web_sessions WHERE user_id = $1 AND id_hash <> $2")
            .bind(user_id)
            .bind(keep.unwrap_or(""))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn insert_web_login(
        &self,
        id_hash: &str,
        done_hash: &str,
        create: bool,
        now: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO web_logins (id_hash, done_hash, create_account, created_ms, expires_ms, \
             user_id, cancelled, claimed_ms) VALUES ($1, $2, $3, $4, $5, NULL, 0, NULL)",
        )
        .bind(id_hash)
        .bind(done_hash)
        .bind(i64::from(create))
        .bind(ms(now))
        .bind(ms(expires))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn web_login(&self, id_hash: &str, now: DateTime<Utc>) -> StoreResult<Option<WebLogin>> {
        let row = sqlx::query(
            "SELECT create_account, expires_ms, user_id, cancelled FROM web_logins \
             WHERE id_hash = $1 AND expires_ms > $2",
        )
        .bind(id_hash)
        .bind(ms(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let user: Option<i64> = row.try_get("user_id").map_err(map_err)?;
        let cancelled = row.try_get::<i64, _>("cancelled").map_err(map_err)? != 0;
        Ok(Some(WebLogin {
            create: row.try_get::<i64, _>("create_account").map_err(map_err)? != 0,
            expires: time(row.try_get("expires_ms").map_err(map_err)?),
            decided: user.is_some() || cancelled,
        }))
    }

    async fn decide_web_login(
        &self,
        id_hash: &str,
        user_id: Option<i64>,
        now: DateTime<Utc>,
    ) -> StoreResult<bool> {
        // One conditional UPDATE: a login is decided once.
        let done = sqlx::query(
            "UPDATE web_logins SET user_id = $1, cancelled = $2 WHERE id_hash = $3 \
             AND user_id IS NULL AND cancelled = 0 AND expires_ms > $4",
        )
        .bind(user_id)
        .bind(i64::from(user_id.is_none()))
        .bind(id_hash)
        .bind(ms(now))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }

    async fn poll_web_login(
        &self,
        done_hash: &str,
        now: DateTime<Utc>,
    ) -> StoreResult<WebLoginPoll> {
        // Claimed by exactly one poll (a conditional UPDATE): the token is made once.
        let claimed = sqlx::query(
            "UPDATE web_logins SET claimed_ms = $1 WHERE done_hash = $2 AND user_id IS NOT NULL \
             AND claimed_ms IS NULL AND expires_ms > $1",
        )
        .bind(ms(now))
        .bind(done_hash)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        if claimed.rows_affected() > 0 {
            let row = sqlx::query(
                "SELECT u.name FROM web_logins w JOIN users u ON u.id = w.user_id \
                 WHERE w.done_hash = $1",
            )
            .bind(done_hash)
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
            return Ok(WebLoginPoll::Approved(
                row.try_get("name").map_err(map_err)?,
            ));
        }
        let row = sqlx::query(
            "SELECT cancelled, user_id, claimed_ms FROM web_logins \
             WHERE done_hash = $1 AND expires_ms > $2",
        )
        .bind(done_hash)
        .bind(ms(now))
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else {
            return Ok(WebLoginPoll::Gone);
        };
        let claimed: Option<i64> = row.try_get("claimed_ms").map_err(map_err)?;
        Ok(
            if row.try_get::<i64, _>("cancelled").map_err(map_err)? != 0 {
                WebLoginPoll::Cancelled
            } else if claimed.is_some() {
                WebLoginPoll::Gone
            } else {
                // Not approved yet, or approved just now (the next poll claims it).
                WebLoginPoll::Pending
            },
        )
    }

    async fn prune_web(&self, now: DateTime<Utc>, idle_since: DateTime<Utc>) -> StoreResult<u64> {
        let sessions =
            sqlx::query("DELETE FROM web_sessions WHERE expires_ms <= $1 OR last_seen_ms < $2")
                .bind(ms(now))
                .bind(ms(idle_since))
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
        let logins = sqlx::query("DELETE FROM web_logins WHERE expires_ms <= $1")
            .bind(ms(now))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(sessions.rows_affected() + logins.rows_affected())
    }
}
