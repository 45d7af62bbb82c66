//! The audit log: security-relevant events with time, user, token key id, client address and
//! user agent. Recording never blocks or fails the request it describes: events go through a
//! bounded channel to a writer task that stores them in batches (and prunes old ones).

use crate::store::{AuditRecord, Store, StoreError};
use crate::token::TokenKey;
use chrono::{Duration as Days, Utc};
use serde_json::Value;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

const QUEUE: usize = 10_000;
const BATCH: usize = 200;
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Longest user agent kept.
const MAX_USER_AGENT: usize = 256;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    LoginSucceeded,
    LoginFailed,
    Logout,
    UserCreated,
    TokenCreated,
    TokenRevoked,
    /// A token used from an address outside its CIDR list.
    RefusedCidr,
    /// A valid credential that may not do what it asked (read-only, scope, kind).
    RefusedPermission,
    OtpFailed,
    /// Too many failed password or OTP attempts.
    LockedOut,
    TfaEnabled,
    TfaModeChanged,
    TfaDisabled,
    PasswordChanged,
    ProfileChanged,
    UserDisabled,
    UserEnabled,
    TokensRevokedAll,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::LoginSucceeded => "login.success",
            Event::LoginFailed => "login.failure",
            Event::Logout => "logout",
            Event::UserCreated => "user.created",
            Event::TokenCreated => "token.created",
            Event::TokenRevoked => "token.revoked",
            Event::RefusedCidr => "refused.cidr",
            Event::RefusedPermission => "refused.permission",
            Event::OtpFailed => "otp.failure",
            Event::LockedOut => "locked_out",
            Event::TfaEnabled => "tfa.enabled",
            Event::TfaModeChanged => "tfa.mode_changed",
            Event::TfaDisabled => "tfa.disabled",
            Event::PasswordChanged => "password.changed",
            Event::ProfileChanged => "profile.changed",
            Event::UserDisabled => "user.disabled",
            Event::UserEnabled => "user.enabled",
            Event::TokensRevokedAll => "token.revoked_all",
        }
    }
}

/// Where the current request comes from; set by the gate for the whole request.
#[derive(Clone, Debug)]
pub struct RequestMeta {
    pub client: IpAddr,
    /// As sent; cleaned only when an event is recorded (most requests record none).
    pub user_agent: Option<axum::http::HeaderValue>,
}

tokio::task_local! {
    static REQUEST: RequestMeta;
}

/// Runs `f` with `meta` as the current request's origin for the events it records.
/// Not an `async fn`: that would hold `f` twice in its state (the argument and the scope), and
/// this future is moved on every request.
pub fn within<F: std::future::Future>(
    meta: RequestMeta,
    f: F,
) -> impl std::future::Future<Output = F::Output> {
    REQUEST.scope(meta, f)
}

/// A user agent as stored: printable ASCII, truncated.
pub fn clean_user_agent(raw: &str) -> String {
    raw.chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control())
        .take(MAX_USER_AGENT)
        .collect()
}

/// A new event, with the current request's client and user agent when there is one.
pub fn event(
    event: Event,
    user: Option<&str>,
    key: Option<&TokenKey>,
    detail: Value,
) -> AuditRecord {
    let meta = REQUEST.try_with(Clone::clone).ok();
    AuditRecord {
        at: Utc::now(),
        event: event.as_str().to_owned(),
        user: user.map(str::to_owned),
        key_id: key.map(|k| k.short().to_owned()),
        client: meta.as_ref().map(|m| m.client.to_string()),
        user_agent: meta
            .and_then(|m| m.user_agent)
            .and_then(|ua| ua.to_str().ok().map(clean_user_agent)),
        detail,
    }
}

enum Message {
    Record(Box<AuditRecord>),
    Flush(oneshot::Sender<()>),
}

pub struct AuditLog {
    tx: mpsc::Sender<Message>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Starts the writer task; events older than `retention_days` are pruned (0: kept).
    pub fn start(store: Arc<dyn Store>, retention_days: u32) -> AuditLog {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(store, rx, retention_days));
        AuditLog {
            tx,
            dropped: AtomicU64::new(0),
        }
    }

    /// Records an event made with [`event`]; never waits.
    pub fn record(&self, record: AuditRecord) {
        tracing::info!(
            audit = record.event,
            user = record.user.as_deref().unwrap_or("-"),
            key = record.key_id.as_deref().unwrap_or("-"),
            client = record.client.as_deref().unwrap_or("-"),
            "audit event"
        );
        if self.tx.try_send(Message::Record(Box::new(record))).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::warn!(dropped = n, "audit queue full or closed: event not stored");
        }
    }

    /// Shorthand for `record(event(…))`.
    pub fn note(&self, what: Event, user: Option<&str>, key: Option<&TokenKey>, detail: Value) {
        self.record(event(what, user, key, detail));
    }

    /// Waits until every event recorded so far is stored (tests, shutdown).
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

async fn writer(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Message>, retention_days: u32) {
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    loop {
        let first = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => return },
            _ = prune.tick() => {
                prune_old(&*store, retention_days).await;
                continue;
            }
        };
        let mut batch = Vec::new();
        let mut waiting = Vec::new();
        let mut next = Some(first);
        while let Some(m) = next.take() {
            match m {
                Message::Record(r) => batch.push(*r),
                Message::Flush(done) => waiting.push(done),
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            store_batch(&*store, &batch).await;
        }
        for done in waiting {
            let _ = done.send(());
        }
    }
}

/// Waits between attempts to store a batch while the database is unavailable; then the batch
/// is dropped (with a warning) so the queue does not stall for good.
const RETRY_WAITS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
];

/// Stores a batch, retrying while the database is unavailable (new events wait in the queue
/// meanwhile).
async fn store_batch(store: &dyn Store, batch: &[AuditRecord]) {
    let mut waits = RETRY_WAITS.iter();
    loop {
        let e = match store.insert_audit(batch).await {
            Ok(()) => return,
            Err(e) => e,
        };
        let retry = matches!(e, StoreError::Unavailable(_) | StoreError::CannotWrite(..));
        match waits.next().filter(|_| retry) {
            Some(wait) => {
                tracing::warn!(error = %e, events = batch.len(), "audit events not stored yet; retrying in {}s", wait.as_secs());
                tokio::time::sleep(*wait).await;
            }
            None => {
                tracing::warn!(error = %e, events = batch.len(), "audit events not stored");
                return;
            }
        }
    }
}

async fn prune_old(store: &dyn Store, retention_days: u32) {
    if retention_days == 0 {
        return;
    }
    let before = Utc::now() - Days::days(i64::from(retention_days));
    match store.prune_audit(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(pruned = n, "old audit events removed"),
        Err(e) => tracing::warn!(error = %e, "pruning audit events failed"),
    }
}
