"""What every backend's `erase` shares: the tombstone row and what the log keeps of the erased.

An erasure deletes rows from the log and appends one `Erased` record in their place
(docs/event-log.md, "Erasure"); the backends differ only in how they delete and scrub.
"""

from __future__ import annotations

import time
import uuid
from typing import Iterable, NamedTuple, Sequence

from events import codec
from events.records import Erased, erased_id_hash
from events.store import NewEvent, slot_key

# One tombstone names at most this many positions, so that no record grows without bound
# (a retention sweep of millions of events writes several).
MAX_POSITIONS = 50_000


def tombstone(positions: Sequence[int], scope: str, key_hash: str) -> NewEvent:
    """The log row that records an erasure of `positions` (sorted)."""
    record = Erased(tuple(sorted(positions)), scope, key_hash, len(positions),
                    time.time_ns() // 1000)
    # An id nobody posts (ingest ids are the client's; server ids are UUID-shaped).
    event_id = f"erasure:{uuid.uuid4().hex}"
    return NewEvent(event_id, codec.TYPE_CODES[Erased], codec.encode(record), b"", record)


class Traces(NamedTuple):
    """What must go with erased rows (`slots`) and what stays of them (`id_hashes`)."""

    slots: list[bytes]
    id_hashes: list[bytes]


def traces(rows: Iterable[tuple[str, bytes]]) -> Traces:
    """The request slots the erased `(event_id, payload)` rows filled, and their id hashes."""
    slots, hashes = [], []
    for event_id, payload in rows:
        hashes.append(erased_id_hash(event_id))
        try:
            record = codec.decode(payload)
        except codec.UndecodableEvent:
            continue  # its slot cannot be known; the row goes all the same
        if not isinstance(record, Erased):
            slots.append(slot_key(record))
    return Traces(slots, hashes)


def chunks(positions: Sequence[int], size: int = MAX_POSITIONS) -> list[Sequence[int]]:
    return [positions[i:i + size] for i in range(0, len(positions), size)]
