-- The append-only event log. `position` is assigned by the appender under a transaction-level
-- advisory lock (see events/postgres_store.py), not by a sequence: positions are gapless and
-- committed in increasing order, so a tailer reading `position > n` never skips a row.
CREATE TABLE events (
    position    bigint   PRIMARY KEY,
    -- bytea, not text: an event id is any string, and PostgreSQL text cannot hold NUL.
    event_id    bytea    NOT NULL UNIQUE,
    type        smallint NOT NULL,          -- 1 started, 2 completed, 3 failed (see event_log)
    payload     bytea    NOT NULL,          -- msgpack record, see events/records.py
    recorded_at bigint   NOT NULL           -- microseconds since the Unix epoch, UTC
);

-- One row per filled request slot (started, terminal): a 16-byte hash of the slot, so the
-- "one terminal event per request" rule lives in an index shared by every replica.
CREATE TABLE request_slots (
    slot bytea PRIMARY KEY
);

-- A readable view for people poking at the log with psql.
CREATE VIEW event_log AS
SELECT position,
       encode(event_id, 'escape') AS event_id,
       CASE type WHEN 1 THEN 'LLM_REQUEST_STARTED'
                 WHEN 2 THEN 'LLM_REQUEST_COMPLETED'
                 WHEN 3 THEN 'LLM_REQUEST_FAILED' END AS type,
       to_timestamp(recorded_at / 1e6) AS recorded_at,
       length(payload) AS payload_bytes
FROM events;
