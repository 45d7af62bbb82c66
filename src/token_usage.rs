//! When and from where each token was last used, without a database write per request:
//! uses are kept in memory (newest per token) and written in one batch every few seconds.

use crate::store::{Store, TokenUse};
use crate::token::TokenKey;
use chrono::{DateTime, Utc};
use std::cell::Cell;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Pending uses are spread over this many locks (by the key's first hex digit), so the worker
/// threads of a busy server do not queue on one lock.
const SHARDS: usize = 16;

type Pending = HashMap<TokenKey, (DateTime<Utc>, IpAddr)>;

pub struct UsageTracker {
    store: Arc<dyn Store>,
    /// Newest use per token; turned into `TokenUse` rows only when flushed.
    pending: [Mutex<Pending>; SHARDS],
}

/// A use as compared with the one before: tracker, key fingerprint, second, address.
type Noted = (usize, [u8; 16], i64, IpAddr);

thread_local! {
    /// The use this thread noted last: a token used again in the same second from the same
    /// address needs no lock at all. The stored time is then at most a second older than the
    /// last use, and when two addresses use one token in the same second the one stored may not
    /// be the very last.
    static LAST_NOTED: Cell<Option<Noted>> = const { Cell::new(None) };
}

/// [`TokenKey::head`] as an array, to keep in [`LAST_NOTED`].
fn fingerprint(key: &TokenKey) -> [u8; 16] {
    let mut out = [0u8; 16];
    let head = key.head();
    out[..head.len()].copy_from_slice(head);
    out
}

impl UsageTracker {
    /// Starts the tracker and its flush task (every `every`).
    pub fn start(store: Arc<dyn Store>, every: Duration) -> Arc<UsageTracker> {
        let tracker = Arc::new(UsageTracker {
            store,
            pending: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        });
        let weak = Arc::downgrade(&tracker);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(tracker) = weak.upgrade() else {
                    return;
                };
                tracker.flush().await;
            }
        });
        tracker
    }

    /// Notes a use; cheap: a map update under a short lock, no allocation for a token already
    /// pending.
    pub fn record(&self, key: &TokenKey, client: IpAddr) {
        let now = Utc::now();
        let noted = (
            self as *const Self as usize,
            fingerprint(key),
            now.timestamp(),
            client,
        );
        if LAST_NOTED.replace(Some(noted)) == Some(noted) {
            return;
        }
        let used = (now, client);
        let mut pending = self.shard(key).lock().expect("usage lock");
        match pending.get_mut(key) {
            Some(entry) => *entry = used,
            None => {
                pending.insert(key.clone(), used);
            }
        }
    }

    fn shard(&self, key: &TokenKey) -> &Mutex<Pending> {
        let first = key.0.chars().next().and_then(|c| c.to_digit(16));
        &self.pending[first.unwrap_or_default() as usize % SHARDS]
    }

    /// Writes the pending uses now.
    pub async fn flush(&self) {
        let mut batch: Vec<TokenUse> = Vec::new();
        for shard in &self.pending {
            let taken = std::mem::take(&mut *shard.lock().expect("usage lock"));
            batch.extend(taken.into_iter().map(|(key, (at, client))| TokenUse {
                key,
                at,
                client: client.to_string(),
            }));
        }
        if batch.is_empty() {
            return;
        }
        if let Err(e) = self.store.record_token_uses(&batch).await {
            // Kept for the next flush (unless a newer use came in meanwhile), so a database
            // outage delays these times instead of losing them.
            tracing::warn!(error = %e, tokens = batch.len(), "last-used times not stored yet; retried at the next flush");
            for u in batch {
                if let Ok(client) = u.client.parse() {
                    let mut pending = self.shard(&u.key).lock().expect("usage lock");
                    pending.entry(u.key).or_insert((u.at, client));
                }
            }
        }
    }
}
