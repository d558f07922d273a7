-- Call quality: the latest `call:stats` report of each party of a call (one row per party,
-- replaced by each newer report). Kept apart from `calls` so that a report never rewrites the
-- call record, and a call without reports costs nothing.
CREATE TABLE call_quality (
    call_id             TEXT    NOT NULL REFERENCES calls(id),
    user_id             INTEGER NOT NULL REFERENCES users(id),
    reported_at         INTEGER NOT NULL, -- unix milliseconds
    path                TEXT    NOT NULL CHECK (path IN ('direct', 'relay')),
    local_candidate     TEXT,
    remote_candidate    TEXT,
    relay_protocol      TEXT    CHECK (relay_protocol IN ('udp', 'tcp', 'tls')),
    rtt_ms              REAL    NOT NULL,
    jitter_ms           REAL    NOT NULL,
    loss_in_pct         REAL    NOT NULL,
    loss_out_pct        REAL    NOT NULL,
    bitrate_in_kbps     REAL,
    bitrate_out_kbps    REAL,
    audio_concealed_pct REAL,
    video_freezes       INTEGER,
    video_width         INTEGER,
    video_height        INTEGER,
    network_type        TEXT,
    PRIMARY KEY (call_id, user_id)
);
