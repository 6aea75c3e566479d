"""The event store port: the narrow interface every backend implements.

A backend keeps an append-only log of `(position, event_id, type, payload, recorded_at)` rows.
Two rules are enforced by the store's own indexes, not by memory: an `event_id` is stored once
(re-posting the same content is a duplicate, different content a conflict), and a request has
at most one started and one terminal event (its "slots").

What a position promises, on every backend:

- positions are positive and increase in the order `read` returns rows; the rows of one batch
  have increasing positions in the batch's order;
- **they may have holes**: SQLite's are 1, 2, 3, ...; PostgreSQL's jump between transactions
  (a position there is the appending transaction's id shifted left by 20 bits, plus the row's
  ordinal in it), so `position + 1` is not "the next event" and a count of events is not a
  difference of positions;
- `read` returns only final rows: once a reader has seen position p, no row can ever appear
  at a position <= p. Reading `after` the last position seen, page after page, therefore sees
  every event exactly once, in the same order for every reader (what read models rely on);
- `last_position()` is the newest final position, and a batch's `Accepted.last_position` is
  at least the newest position among its events, appended or found as duplicates (SQLite: the
  log's end; PostgreSQL: exactly that newest one): a reader that has applied it has applied
  the whole batch.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple, Protocol, Sequence

import msgspec

from events.records import Record, Started


class NewEvent(NamedTuple):
    """An event ready to append: everything the store needs, computed before the writer runs."""

    event_id: str
    type_code: int
    payload: bytes
    slot: bytes
    record: Record


# A row of the log as `read` returns it: (position, event_id, payload, recorded_at_us).
# Plain tuples, not a NamedTuple: replay reads millions of them.
StoredRow = tuple[int, str, bytes, int]


class Issue(msgspec.Struct, frozen=True):
    """One problem with one event of a request: which event, which field, what is wrong."""

    index: int
    path: str
    message: str


class Accepted(NamedTuple):
    """A batch that was committed; `rows` are its newly appended events with their positions."""

    appended: int
    duplicates: int
    last_position: int
    rows: list[tuple[int, NewEvent]]


class Rejected(NamedTuple):
    """A batch that conflicts with the log; nothing of it was stored."""

    details: list[Issue]


class Erasure(NamedTuple):
    """What `erase` did: how many events went, and the tombstone it appended (position 0 and
    no row when nothing was there to erase)."""

    count: int
    position: int
    rows: list[tuple[int, NewEvent]]


class StoreError(Exception):
    """Base of the errors a store raises; backends translate their driver's errors into these."""


class StoreUnavailable(StoreError):
    """The store cannot take writes now (disk full, read-only, locked); worth retrying later."""


def slot_key(record: Record) -> bytes:
    """The key of the slot a record fills: (started | terminal, session_id, request_id).

    `kind, session, NUL, request` is unambiguous only when the session id holds no NUL (else
    `a\\0b`/`c` and `a`/`b\\0c` meet), so such sessions' keys are length-prefixed under their
    own leading byte. Every other key is computed as before, so the slots of existing logs stay
    valid without rewriting them (see docs/event-log.md).
    """
    kind = "S" if type(record) is Started else "T"
    session = record.session_id
    if "\x00" in session:
        session_bytes = session.encode()
        raw = b"L" + kind.encode() + len(session_bytes).to_bytes(4, "big") + session_bytes \
            + record.request_id.encode()
    else:
        # One str joined and encoded: the same bytes as joining the encoded parts, cheaper
        # (a batch computes one key per event).
        raw = (kind + session + "\x00" + record.request_id).encode()
    return hashlib.blake2b(raw, digest_size=16).digest()


class EventStore(Protocol):
    """Where events live. Every backend passes `tests/integration/test_store_contract.py`."""

    # Whether other processes append to this log too (then the service follows it with
    # service/tailer.py), and whether `limit_size(max_bytes)` can cap its size.
    shared: bool
    limits_size: bool

    async def append(self, batches: Sequence[Sequence[NewEvent]]) -> list[Accepted | Rejected]:
        """Commit every acceptable batch in one durable transaction, all-or-nothing per batch.

        Returns one result per batch, in order. Raises `StoreUnavailable` when nothing could
        be committed (then no batch was stored).
        """
        ...

    async def read(self, after: int, limit: int) -> list[StoredRow]:
        """Up to `limit` final rows with position > `after`, in position order."""
        ...

    async def last_position(self) -> int:
        """The position of the newest final event, 0 for an empty log."""
        ...

    async def erase(self, positions: Sequence[int], scope: str, key_hash: str) -> Erasure:
        """Delete the events at `positions` (those still there) with their slots, keep a hash
        of each one's event id (re-posting it is then a duplicate) and append an `Erased`
        tombstone naming the positions deleted, in one transaction; then make the deleted
        bytes unreadable as far as the backend can (docs/event-log.md, "Erasure").

        Nothing is appended when none of `positions` is in the log (`Erasure.position` 0).
        """
        ...

    async def close(self) -> None:
        ...


class AppendPlan(NamedTuple):
    results: list[Accepted | Rejected]
    rows: list[tuple[int, NewEvent]]
    slots: list[bytes]


def plan_append(
    batches: Sequence[Sequence[NewEvent]],
    stored_payloads: dict[str, bytes],
    taken_slots: set[bytes],
    last_position: int,
    erased_ids: set[str] | frozenset[str] = frozenset(),
) -> AppendPlan:
    """Decide, batch by batch, what to append given what the log already holds.

    `stored_payloads` maps the batches' event ids already in the log to their payloads and
    `taken_slots` holds the batches' slots already filled; `erased_ids` are the batches' event
    ids that were erased (a duplicate whatever the content: it cannot be compared any more).
    Shared by every backend so the duplicate and conflict rules exist once.
    """
    results: list[Accepted | Rejected] = []
    rows: list[tuple[int, NewEvent]] = []
    slots: list[bytes] = []
    position = last_position
    for batch in batches:
        ids: dict[str, bytes] = {}
        filled: set[bytes] = set()
        fresh: list[NewEvent] = []
        issues: list[Issue] = []
        duplicates = 0
        for index, event in enumerate(batch):
            known = ids.get(event.event_id)
            if known is None:
                known = stored_payloads.get(event.event_id)
            if known is None and event.event_id in erased_ids:
                duplicates += 1
                continue
            if known is not None:
                if known == event.payload:
                    duplicates += 1
                else:
                    issues.append(
                        Issue(index, "$.event_id", f"event_id {event.event_id!r} is already "
                              "stored with different content")
                    )
                continue
            if event.slot in filled or event.slot in taken_slots:
                kind = "started" if event.type_code == 1 else "terminal (completed or failed)"
                issues.append(
                    Issue(index, "$.request_id", f"request {event.record.request_id!r} of "
                          f"session {event.record.session_id!r} already has a {kind} event")
                )
                continue
            ids[event.event_id] = event.payload
            filled.add(event.slot)
            fresh.append(event)
        if issues:
            results.append(Rejected(issues))
            continue
        stored_payloads.update(ids)
        taken_slots.update(filled)
        appended = list(zip(range(position + 1, position + 1 + len(fresh)), fresh))
        rows.extend(appended)
        slots.extend(filled)
        position += len(fresh)
        results.append(Accepted(len(fresh), duplicates, position, appended))
    return AppendPlan(results, rows, slots)
