-- When and from where each token was last used (written in batches, not per request).
ALTER TABLE tokens ADD COLUMN last_used_ms INTEGER;
ALTER TABLE tokens ADD COLUMN last_used_ip TEXT;

-- Security-relevant events: logins, token changes, refusals, 2FA and password changes.
CREATE TABLE audit_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms      INTEGER NOT NULL,
    event      TEXT    NOT NULL,
    user_name  TEXT,
    key_id     TEXT,
    client     TEXT,
    user_agent TEXT,
    detail     TEXT    NOT NULL
);

CREATE INDEX audit_by_time ON audit_events (at_ms);
CREATE INDEX audit_by_user ON audit_events (user_name, at_ms);
