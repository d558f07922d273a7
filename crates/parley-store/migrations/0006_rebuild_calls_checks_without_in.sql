-- The call log's upsert runs for every call state change, and SQLite evaluates a CHECK written
-- `x IN ('a', 'b', 'c')` by building an ephemeral b-tree of the list on every execution: four per
-- upsert (state and status, for the insert and again for the DO UPDATE), about a sixth of the
-- store's instructions per call setup (docs/benchmarks.md, issue 14). Written as `x = 'a' OR ...`
-- the same checks open none. The constraints accept and refuse exactly what they did: a NULL
-- status passes both forms. SQLite cannot alter a CHECK, hence the rebuild.
--
-- `call_quality` references `calls(id)`, and foreign keys are on (the store's connections and
-- sqlx's migration transaction): dropping `calls` counts each report as a violation, inserting
-- the rows back into the new `calls` uncounts them. Deferred until the commit, the two cancel
-- out; a row lost on the way would fail the commit instead.
PRAGMA defer_foreign_keys = ON;

CREATE TABLE calls_0006_copy AS SELECT * FROM calls;
CREATE TABLE calls_0006_sequence AS SELECT seq FROM sqlite_sequence WHERE name = 'calls';
DROP TABLE calls;

CREATE TABLE calls (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    id            TEXT    NOT NULL UNIQUE,
    caller_id     INTEGER NOT NULL REFERENCES users(id),
    callee_id     INTEGER NOT NULL REFERENCES users(id),
    media         TEXT    NOT NULL CHECK (media = 'audio' OR media = 'video'),
    state         TEXT    NOT NULL CHECK (state = 'ringing' OR state = 'active' OR state = 'ended'),
    status        TEXT    CHECK (status = 'completed' OR status = 'declined'
                                 OR status = 'cancelled' OR status = 'missed' OR status = 'busy'),
    reason        TEXT,
    ended_by      INTEGER REFERENCES users(id),
    message       TEXT,
    created_at    INTEGER NOT NULL, -- unix milliseconds
    answered_at   INTEGER,
    ended_at      INTEGER,
    callee_seen   INTEGER NOT NULL DEFAULT 0,
    caller_hidden INTEGER NOT NULL DEFAULT 0,
    callee_hidden INTEGER NOT NULL DEFAULT 0,
    caller_device TEXT,
    callee_device TEXT
);
INSERT INTO calls (seq, id, caller_id, callee_id, media, state, status, reason, ended_by, message,
    created_at, answered_at, ended_at, callee_seen, caller_hidden, callee_hidden, caller_device,
    callee_device)
SELECT seq, id, caller_id, callee_id, media, state, status, reason, ended_by, message,
    created_at, answered_at, ended_at, callee_seen, caller_hidden, callee_hidden, caller_device,
    callee_device
FROM calls_0006_copy ORDER BY seq;
-- The next `seq` continues where the old table's would have, even past rows it no longer had.
UPDATE sqlite_sequence SET seq = max(seq, (SELECT seq FROM calls_0006_sequence))
WHERE name = 'calls' AND EXISTS (SELECT 1 FROM calls_0006_sequence);
DROP TABLE calls_0006_copy;
DROP TABLE calls_0006_sequence;

CREATE INDEX calls_caller ON calls(caller_id, seq);
CREATE INDEX calls_callee ON calls(callee_id, seq);
CREATE INDEX calls_live ON calls(state) WHERE state != 'ended';
