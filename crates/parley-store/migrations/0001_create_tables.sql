-- Users. A removed user is anonymised rather than deleted, so that the other party's call
-- history keeps its rows (the call log never loses a record).
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    display_name  TEXT    NOT NULL,
    -- argon2id PHC string; empty for a removed user, so no password matches.
    password_hash TEXT    NOT NULL,
    disabled      INTEGER NOT NULL DEFAULT 0,
    removed       INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL -- unix milliseconds
);

-- Login sessions. Only a SHA-256 of the bearer token is stored: a copy of the database does
-- not let anyone log in.
CREATE TABLE sessions (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash  BLOB    NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX sessions_user ON sessions(user_id);

-- The call log: one row per call attempt, written when it starts and updated as it changes.
-- `seq` orders rows for cursor pagination; `id` is the public call id.
CREATE TABLE calls (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    caller_id     INTEGER NOT NULL REFERENCES users(id),
    callee_id     INTEGER NOT NULL REFERENCES users(id),
    media         TEXT    NOT NULL CHECK (media IN ('audio', 'video')),
    state         TEXT    NOT NULL CHECK (state IN ('ringing', 'active', 'ended')),
    status        TEXT    CHECK (status IN ('completed', 'declined', 'cancelled', 'missed', 'busy')),
    reason        TEXT,
    ended_by      INTEGER REFERENCES users(id),
    message       TEXT,
    created_at    INTEGER NOT NULL, -- unix milliseconds
    answered_at   INTEGER,
    ended_at      INTEGER,
    -- Per-party flags: a missed call is "seen" by its callee; each party may hide the entry
    -- from their own history without touching the other's.
    callee_seen   INTEGER NOT NULL DEFAULT 0,
    caller_hidden INTEGER NOT NULL DEFAULT 0,
    callee_hidden INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX calls_caller ON calls(caller_id, seq);
CREATE INDEX calls_callee ON calls(callee_id, seq);
CREATE INDEX calls_live ON calls(state) WHERE state != 'ended';
