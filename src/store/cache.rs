//! The verification cache: what the per-request check needs about a token (its record and its
//! owner), keyed by the token's SHA-512 key, bounded in size and age.
//!
//! Every change that can make a cached answer wrong (revocation, logout, user disable,
//! password and 2FA changes) is written by the store as a change event: the replica that made
//! it forgets the entries at once, and every replica polls the events (and, on PostgreSQL, is
//! woken by NOTIFY) to forget them within a fraction of a second.

use super::TokenWithOwner;
use crate::token::TokenKey;
use moka::sync::Cache;
use std::time::Duration;

/// What a change event invalidates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// One token (revoked, logged out).
    Token(TokenKey),
    /// Every token of a user (disabled, password or 2FA changed, sessions revoked).
    User(i64),
}

/// Settings of the cache and of the change polling.
#[derive(Clone, Debug)]
pub struct CacheSettings {
    pub capacity: u64,
    /// Longest time an entry is trusted, as a bound on staleness if an event is missed.
    pub ttl: Duration,
    /// How often change events are polled.
    pub poll: Duration,
}

impl CacheSettings {
    /// The cache and polling settings of a configuration.
    pub fn of(config: &crate::config::Config) -> CacheSettings {
        CacheSettings {
            capacity: config.token_cache_capacity,
            ttl: Duration::from_secs(config.token_cache_ttl_secs),
            poll: Duration::from_millis(config.change_poll_ms),
        }
    }
}

pub struct TokenCache {
    entries: Cache<TokenKey, TokenWithOwner>,
}

impl TokenCache {
    pub fn new(settings: &CacheSettings) -> TokenCache {
        TokenCache {
            entries: Cache::builder()
                .max_capacity(settings.capacity)
                .time_to_live(settings.ttl)
                .support_invalidation_closures()
                .build(),
        }
    }

    pub fn get(&self, key: &TokenKey) -> Option<TokenWithOwner> {
        self.entries.get(key)
    }

    pub fn insert(&self, found: TokenWithOwner) {
        self.entries.insert(found.token.key.clone(), found);
    }

    pub fn forget(&self, change: &Change) {
        match change {
            Change::Token(key) => self.entries.invalidate(key),
            Change::User(id) => {
                let id = *id;
                // Only fails when closures are not enabled, which `new` does.
                let _ = self
                    .entries
                    .invalidate_entries_if(move |_, v| v.owner.id == id);
            }
        }
    }
}
