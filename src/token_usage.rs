//! When and from where each token was last used, without a database write per request:
//! uses are kept in memory (newest per token) and written in one batch every few seconds.

use crate::store::{Store, TokenUse};
use crate::token::TokenKey;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct UsageTracker {
    store: Arc<dyn Store>,
    /// Newest use per token; turned into `TokenUse` rows only when flushed.
    pending: Mutex<HashMap<TokenKey, (DateTime<Utc>, IpAddr)>>,
}

impl UsageTracker {
    /// Starts the tracker and its flush task (every `every`).
    pub fn start(store: Arc<dyn Store>, every: Duration) -> Arc<UsageTracker> {
        let tracker = Arc::new(UsageTracker {
            store,
            pending: Mutex::new(HashMap::new()),
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
        let used = (Utc::now(), client);
        let mut pending = self.pending.lock().expect("usage lock");
        match pending.get_mut(key) {
            Some(entry) => *entry = used,
            None => {
                pending.insert(key.clone(), used);
            }
        }
    }

    /// Writes the pending uses now.
    pub async fn flush(&self) {
        let batch: Vec<TokenUse> = {
            let mut pending = self.pending.lock().expect("usage lock");
            if pending.is_empty() {
                return;
            }
            std::mem::take(&mut *pending)
                .into_iter()
                .map(|(key, (at, client))| TokenUse {
                    key,
                    at,
                    client: client.to_string(),
                })
                .collect()
        };
        if let Err(e) = self.store.record_token_uses(&batch).await {
            // Kept for the next flush (unless a newer use came in meanwhile), so a database
            // outage delays these times instead of losing them.
            tracing::warn!(error = %e, tokens = batch.len(), "last-used times not stored yet; retried at the next flush");
            let mut pending = self.pending.lock().expect("usage lock");
            for u in batch {
                if let Ok(client) = u.client.parse() {
                    pending.entry(u.key).or_insert((u.at, client));
                }
            }
        }
    }
}
