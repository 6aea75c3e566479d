-- Erasure (docs/event-log.md, "Erasure"): a 16-byte hash of every erased event's id, so that
-- re-posting it counts as a duplicate on every replica; the id itself is gone with its row.
CREATE TABLE erased_events (
    id_hash bytea PRIMARY KEY
);

-- Type 4 is the tombstone an erasure appends.
CREATE OR REPLACE VIEW event_log AS
SELECT position,
       encode(event_id, 'escape') AS event_id,
       CASE type WHEN 1 THEN 'LLM_REQUEST_STARTED'
                 WHEN 2 THEN 'LLM_REQUEST_COMPLETED'
                 WHEN 3 THEN 'LLM_REQUEST_FAILED'
                 WHEN 4 THEN 'ERASED' END AS type,
       to_timestamp(recorded_at / 1e6) AS recorded_at,
       length(payload) AS payload_bytes,
       position >> 20 AS appended_by_xid
FROM events;
