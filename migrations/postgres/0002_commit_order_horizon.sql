-- Positions are no longer max(position) + 1 under a lock: a row's position is
-- (id of the transaction that appended it << 20) + its ordinal in that transaction, and readers
-- stop below pg_snapshot_xmin(pg_current_snapshot()) << 20 (see events/postgres_store.py and
-- docs/scaling.md). Rows of a log written before this migration keep their positions 1..n,
-- which must stay below every new one: refuse to migrate a log where they would not.
DO $$
BEGIN
    IF (SELECT coalesce(max(position), 0) FROM events)
           >= (pg_current_xact_id()::text::bigint << 20) THEN
        RAISE EXCEPTION 'the event log holds positions above the new scheme''s first one';
    END IF;
END
$$;

COMMENT ON COLUMN events.position IS
    '(appending transaction id << 20) + ordinal; final below pg_snapshot_xmin(pg_current_snapshot()) << 20';

-- The readable view gains the appending transaction (0 for rows of the old scheme).
CREATE OR REPLACE VIEW event_log AS
SELECT position,
       encode(event_id, 'escape') AS event_id,
       CASE type WHEN 1 THEN 'LLM_REQUEST_STARTED'
                 WHEN 2 THEN 'LLM_REQUEST_COMPLETED'
                 WHEN 3 THEN 'LLM_REQUEST_FAILED' END AS type,
       to_timestamp(recorded_at / 1e6) AS recorded_at,
       length(payload) AS payload_bytes,
       position >> 20 AS appended_by_xid
FROM events;
