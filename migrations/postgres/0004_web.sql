-- Signed-in browsers: only the SHA-256 of the session cookie is stored.
CREATE TABLE web_sessions (
    id_hash      TEXT    PRIMARY KEY,
    user_id      BIGINT  NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- 1 while the password was right but the one-time password is still awaited.
    otp_pending  BIGINT  NOT NULL,
    created_ms   BIGINT  NOT NULL,
    last_seen_ms BIGINT  NOT NULL,
    expires_ms   BIGINT  NOT NULL
);

CREATE INDEX web_sessions_by_user ON web_sessions (user_id);

-- npm's web login: the id in loginUrl (opened in the browser) and the one in doneUrl (polled by
-- npm) are different random values, both stored as SHA-256 only.
CREATE TABLE web_logins (
    id_hash        TEXT    PRIMARY KEY,
    done_hash      TEXT    NOT NULL UNIQUE,
    create_account BIGINT  NOT NULL,
    created_ms     BIGINT  NOT NULL,
    expires_ms     BIGINT  NOT NULL,
    user_id        BIGINT  REFERENCES users(id) ON DELETE CASCADE,
    cancelled      BIGINT  NOT NULL DEFAULT 0,
    claimed_ms     BIGINT
);

CREATE INDEX web_logins_by_expiry ON web_logins (expires_ms);
