-- Erasure (docs/event-log.md, "Erasure"): a 16-byte hash of every erased event's id, so that
-- re-posting it counts as a duplicate; the id itself is gone with its row.
CREATE TABLE erased_events (
    id_hash BLOB PRIMARY KEY
) WITHOUT ROWID;

-- Type 4 is the tombstone an erasure appends.
DROP VIEW event_log;
CREATE VIEW event_log AS
SELECT position,
       event_id,
       CASE type WHEN 1 THEN 'LLM_REQUEST_STARTED'
                 WHEN 2 THEN 'LLM_REQUEST_COMPLETED'
                 WHEN 3 THEN 'LLM_REQUEST_FAILED'
                 WHEN 4 THEN 'ERASED' END AS type,
       strftime('%Y-%m-%dT%H:%M:%fZ', recorded_at / 1e6, 'unixepoch') AS recorded_at,
       length(payload) AS payload_bytes
FROM events;
