ALTER TABLE users ADD COLUMN tfa_mode TEXT;
ALTER TABLE users ADD COLUMN tfa_pending INTEGER NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN tfa_secret TEXT;
ALTER TABLE users ADD COLUMN tfa_last_step INTEGER;
ALTER TABLE users ADD COLUMN fullname TEXT;
ALTER TABLE users ADD COLUMN homepage TEXT;
ALTER TABLE users ADD COLUMN github TEXT;
ALTER TABLE users ADD COLUMN twitter TEXT;
ALTER TABLE users ADD COLUMN freenode TEXT;

CREATE TABLE recovery_codes (
    user_id   INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_ms   INTEGER,
    PRIMARY KEY (user_id, code_hash)
);
