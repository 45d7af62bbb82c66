//! The verification cache: what the per-request check needs about a token (its record and its
//! owner), keyed by the token's SHA-512 key, bounded in size and age.
//!
//! Every change that can make a cached answer wrong (revocation, logout, user disable,
//! password and 2FA changes) is written by the store as a change event: the replica that made
//! it forgets the entries at once, and every replica polls the events (and, on PostgreSQL, is
//! woken by NOTIFY) to forget them within a fraction of a second.

use super::TokenWithOwner;
use crate::token::TokenKey;
use std::sync::RwLock;
use std::time::{Duration, Instant};

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

/// Entries live in a `quick_cache` (S3-FIFO eviction): its lookup is a hash probe under a
/// shard's read lock, where moka's also queued the read for its eviction bookkeeping, which
/// cost about 600 instructions on every request (docs/performance.md).
pub struct TokenCache {
    entries: quick_cache::sync::Cache<TokenKey, Cached>,
    ttl: Duration,
    /// How many changes were forgotten so far. A lookup notes it before reading the database
    /// and caches what it read only if no change came in between: else a revocation landing
    /// during the read would be forgotten first and the token, read just before it, cached
    /// as live afterwards.
    forgotten: RwLock<u64>,
}

#[derive(Clone)]
struct Cached {
    found: TokenWithOwner,
    /// Trusted until then, even if no change event arrives.
    until: Instant,
}

impl TokenCache {
    pub fn new(settings: &CacheSettings) -> TokenCache {
        TokenCache {
            entries: quick_cache::sync::Cache::new(settings.capacity.max(1) as usize),
            ttl: settings.ttl,
            forgotten: RwLock::new(0),
        }
    }

    pub fn get(&self, key: &TokenKey) -> Option<TokenWithOwner> {
        let cached = self.entries.get(key)?;
        if Instant::now() >= cached.until {
            self.entries.remove(key);
            return None;
        }
        Some(cached.found)
    }

    /// To pass to [`TokenCache::insert`] with what is read from the database after this call.
    pub fn generation(&self) -> u64 {
        *self.forgotten.read().expect("cache generation lock")
    }

    /// Caches `found`, read from the database after `generation` returned `read_after`, unless
    /// a change was forgotten since.
    pub fn insert(&self, found: TokenWithOwner, read_after: u64) {
        // Held while inserting: a change forgotten now waits, then removes this entry.
        let forgotten = self.forgotten.read().expect("cache generation lock");
        if *forgotten != read_after {
            return;
        }
        let until = Instant::now() + self.ttl;
        self.entries
            .insert(found.token.key.clone(), Cached { found, until });
    }

    pub fn forget(&self, change: &Change) {
        let mut forgotten = self.forgotten.write().expect("cache generation lock");
        *forgotten += 1;
        match change {
            Change::Token(key) => {
                self.entries.remove(key);
            }
            Change::User(id) => self.entries.retain(|_, v| v.found.owner.id != *id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{ProfileFields, TokenKind, User};
    use crate::token::PlainToken;
    use crate::token_request::TokenSpec;
    use chrono::Utc;
    use std::sync::Arc;

    fn cache(ttl: Duration) -> TokenCache {
        TokenCache::new(&CacheSettings {
            capacity: 100,
            ttl,
            poll: Duration::from_millis(25),
        })
    }

    fn token_of(user_id: i64) -> TokenWithOwner {
        let token = PlainToken::generate("npm_");
        let owner = User {
            id: user_id,
            name: format!("user{user_id}"),
            email: format!("user{user_id}@example.com"),
            password_hash: String::new(),
            disabled: false,
            created: Utc::now(),
            updated: Utc::now(),
            tfa: None,
            profile: ProfileFields::default(),
        };
        let record = TokenSpec::unrestricted(TokenKind::Publish, None, None).into_record(
            token.key(),
            user_id,
            token.redacted("npm_"),
            Utc::now(),
        );
        TokenWithOwner {
            token: Arc::new(record),
            owner: Arc::new(owner),
        }
    }

    fn key(t: &TokenWithOwner) -> TokenKey {
        t.token.key.clone()
    }

    #[test]
    fn forgetting_a_token_or_its_owner_removes_it_and_nothing_else() {
        let cache = cache(Duration::from_secs(60));
        let (a1, a2, b) = (token_of(1), token_of(1), token_of(2));
        for t in [&a1, &a2, &b] {
            cache.insert(t.clone(), cache.generation());
        }
        assert!(cache.get(&key(&a1)).is_some());
        cache.forget(&Change::Token(key(&a1)));
        assert!(cache.get(&key(&a1)).is_none());
        assert!(cache.get(&key(&a2)).is_some());
        cache.forget(&Change::User(1));
        assert!(cache.get(&key(&a2)).is_none());
        assert!(cache.get(&key(&b)).is_some());
    }

    #[test]
    fn what_was_read_before_a_change_is_not_cached_after_it() {
        let cache = cache(Duration::from_secs(60));
        let t = token_of(1);
        // A lookup notes the generation and reads the database; the token is revoked (and
        // forgotten) before the lookup caches what it read.
        let read_after = cache.generation();
        cache.forget(&Change::Token(key(&t)));
        cache.insert(t.clone(), read_after);
        assert!(cache.get(&key(&t)).is_none());
        // The next lookup reads after the change and caches.
        cache.insert(t.clone(), cache.generation());
        assert!(cache.get(&key(&t)).is_some());
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let cache = cache(Duration::from_millis(50));
        let t = token_of(1);
        cache.insert(t.clone(), cache.generation());
        assert!(cache.get(&key(&t)).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.get(&key(&t)).is_none());
    }
}
