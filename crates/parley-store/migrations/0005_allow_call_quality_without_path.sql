-- A report from a client whose ICE never selected a candidate pair (issue 16): it knows its ICE
-- state and the candidates it gathered, which is what `parley calls show` needs to say why the
-- call failed, but it has no media path and no figures. So `path` and the four figures may be
-- NULL; SQLite cannot drop a NOT NULL constraint, hence the rebuild. The CHECKs added here say
-- the same as the daemon's decoder: a path always comes with its figures, and no path only with
-- an ICE state that has no selected pair.
CREATE TABLE call_quality_new (
    call_id                TEXT    NOT NULL REFERENCES calls(id),
    user_id                INTEGER NOT NULL REFERENCES users(id),
    reported_at            INTEGER NOT NULL, -- unix milliseconds
    path                   TEXT    CHECK (path IN ('direct', 'relay')),
    local_candidate        TEXT,
    remote_candidate       TEXT,
    relay_protocol         TEXT    CHECK (relay_protocol IN ('udp', 'tcp', 'tls')),
    rtt_ms                 REAL,
    jitter_ms              REAL,
    loss_in_pct            REAL,
    loss_out_pct           REAL,
    bitrate_in_kbps        REAL,
    bitrate_out_kbps       REAL,
    audio_concealed_pct    REAL,
    video_freezes          INTEGER,
    video_width            INTEGER,
    video_height           INTEGER,
    network_type           TEXT,
    ice_state              TEXT
        CHECK (ice_state IN ('new', 'checking', 'connected', 'completed', 'disconnected',
                             'failed', 'closed')),
    local_candidate_types  TEXT,
    remote_candidate_types TEXT,
    relay_protocols        TEXT,
    PRIMARY KEY (call_id, user_id),
    CHECK (path IS NULL OR (rtt_ms IS NOT NULL AND jitter_ms IS NOT NULL
                            AND loss_in_pct IS NOT NULL AND loss_out_pct IS NOT NULL)),
    -- `IS NOT NULL` first: `NULL IN (...)` is NULL, which a CHECK lets through.
    CHECK (path IS NOT NULL
           OR (ice_state IS NOT NULL
               AND ice_state IN ('new', 'checking', 'failed', 'disconnected', 'closed')))
);
INSERT INTO call_quality_new (call_id, user_id, reported_at, path, local_candidate,
    remote_candidate, relay_protocol, rtt_ms, jitter_ms, loss_in_pct, loss_out_pct,
    bitrate_in_kbps, bitrate_out_kbps, audio_concealed_pct, video_freezes, video_width,
    video_height, network_type, ice_state, local_candidate_types, remote_candidate_types,
    relay_protocols)
SELECT call_id, user_id, reported_at, path, local_candidate, remote_candidate, relay_protocol,
    rtt_ms, jitter_ms, loss_in_pct, loss_out_pct, bitrate_in_kbps, bitrate_out_kbps,
    audio_concealed_pct, video_freezes, video_width, video_height, network_type, ice_state,
    local_candidate_types, remote_candidate_types, relay_protocols
FROM call_quality;
DROP TABLE call_quality;
ALTER TABLE call_quality_new RENAME TO call_quality;
