-- The append-only event log. `position` is the rowid: gapless, increasing, never reused.
CREATE TABLE events (
    position    INTEGER PRIMARY KEY,
    event_id    TEXT    NOT NULL UNIQUE,
    type        INTEGER NOT NULL,          -- 1 started, 2 completed, 3 failed (see event_log)
    payload     BLOB    NOT NULL,          -- msgpack record, see events/records.py
    recorded_at INTEGER NOT NULL           -- microseconds since the Unix epoch, UTC
);

-- One row per filled request slot (started, terminal): a 16-byte hash of the slot, so the
-- "one terminal event per request" rule lives in an index, not in memory.
CREATE TABLE request_slots (
    slot BLOB PRIMARY KEY
) WITHOUT ROWID;

-- A readable view for people poking at the file with the sqlite3 shell.
CREATE VIEW event_log AS
SELECT position,
       event_id,
       CASE type WHEN 1 THEN 'LLM_REQUEST_STARTED'
                 WHEN 2 THEN 'LLM_REQUEST_COMPLETED'
                 WHEN 3 THEN 'LLM_REQUEST_FAILED' END AS type,
       strftime('%Y-%m-%dT%H:%M:%fZ', recorded_at / 1e6, 'unixepoch') AS recorded_at,
       length(payload) AS payload_bytes
FROM events;
