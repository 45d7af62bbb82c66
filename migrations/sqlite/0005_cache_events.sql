-- Changes that invalidate cached token checks, read by every replica (see src/store/cache.rs).
CREATE TABLE cache_events (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    token_key TEXT,
    user_id   INTEGER,
    at_ms     INTEGER NOT NULL
);

CREATE INDEX cache_events_by_time ON cache_events (at_ms);
