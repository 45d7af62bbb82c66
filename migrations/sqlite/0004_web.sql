-- Signed-in browsers: only the SHA-256 of the session cookie is stored.
CREATE TABLE web_sessions (
    id_hash      TEXT    PRIMARY KEY,
    user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- 1 while the password was right but the one-time password is still awaited.
    otp_pending  INTEGER NOT NULL,
    created_ms   INTEGER NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    expires_ms   INTEGER NOT NULL
);

CREATE INDEX web_sessions_by_user ON web_sessions (user_id);

-- npm's web login: the id in loginUrl (opened in the browser) and the one in doneUrl (polled by
-- npm) are different random values, both stored as SHA-256 only.
CREATE TABLE web_logins (
    id_hash        TEXT    PRIMARY KEY,
    done_hash      TEXT    NOT NULL UNIQUE,
    create_account INTEGER NOT NULL,
    created_ms     INTEGER NOT NULL,
    expires_ms     INTEGER NOT NULL,
    user_id        INTEGER REFERENCES users(id) ON DELETE CASCADE,
    cancelled      INTEGER NOT NULL DEFAULT 0,
    claimed_ms     INTEGER
);

CREATE INDEX web_logins_by_expiry ON web_logins (expires_ms);
