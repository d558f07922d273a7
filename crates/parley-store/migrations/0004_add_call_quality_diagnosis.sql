-- Parley's extensions to `call:stats` (docs/api.md), kept so that `parley calls show` can say
-- why a call failed: the ICE connection state when the report was taken, the candidate types
-- each side gathered and the TURN transports that produced a local relay candidate. Lists are
-- comma-separated; NULL means the client did not report the list, '' that it was empty.
ALTER TABLE call_quality ADD COLUMN ice_state TEXT
    CHECK (ice_state IN ('new', 'checking', 'connected', 'completed', 'disconnected', 'failed',
                         'closed'));
ALTER TABLE call_quality ADD COLUMN local_candidate_types TEXT;
ALTER TABLE call_quality ADD COLUMN remote_candidate_types TEXT;
ALTER TABLE call_quality ADD COLUMN relay_protocols TEXT;
