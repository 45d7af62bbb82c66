CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE,
    email         TEXT    NOT NULL,
    password_hash TEXT    NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created_ms    INTEGER NOT NULL,
    updated_ms    INTEGER NOT NULL
);

CREATE TABLE tokens (
    key                            TEXT    PRIMARY KEY,
    user_id                        INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    redacted                       TEXT    NOT NULL,
    kind                           TEXT    NOT NULL,
    name                           TEXT,
    description                    TEXT,
    readonly                       INTEGER NOT NULL,
    automation                     INTEGER NOT NULL,
    bypass_2fa                     INTEGER NOT NULL,
    cidr_whitelist                 TEXT,
    packages                       TEXT    NOT NULL,
    packages_all                   INTEGER NOT NULL,
    scopes                         TEXT    NOT NULL,
    orgs                           TEXT    NOT NULL,
    packages_and_scopes_permission TEXT,
    orgs_permission                TEXT,
    created_ms                     INTEGER NOT NULL,
    expires_ms                     INTEGER,
    revoked_ms                     INTEGER
);

CREATE INDEX tokens_by_user ON tokens (user_id, created_ms);
