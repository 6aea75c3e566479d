"""Replay and snapshots: how read models are rebuilt from the log.

`replay` is the one function both server startup and `python -m service replay` use. A snapshot
stores every projection's state, its fingerprint (version and prices) and the log position
they reflect; it is used only
when its checksum, versions and position all check out, otherwise the log is replayed in full.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from array import array
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import msgspec

from events.codec import UndecodableEvent, decode
from events.records import Record
from events.store import EventStore
from projections.metrics import MetricsProjection
from projections.prices import PriceTable, default_prices
from projections.prometheus import PrometheusProjection
from projections.timeseries import TimeseriesProjection

PAGE = 20_000


class ReadModels:
    """Every projection, plus the log position all of them have applied.

    A projection has `name`, `fingerprint` (its version plus the configuration it folds with;
    a snapshot is used only when it matches), `state_type` (a msgspec Struct), `state`, and
    `apply(record)`, a pure fold.
    """

    def __init__(self, prices: PriceTable | None = None) -> None:
        self.prices = prices if prices is not None else default_prices()
        self.metrics = MetricsProjection(self.prices)
        self.timeseries = TimeseriesProjection()
        self.prometheus = PrometheusProjection()
        self.projections = [self.metrics, self.timeseries, self.prometheus]
        self.position = 0

    def apply(self, position: int, record: Record) -> None:
        for projection in self.projections:
            projection.apply(record)
        self.position = position

    async def apply_rows(self, rows: Sequence[tuple[int, Record]]) -> None:
        """Apply `(position, record)` rows, in increasing position order, after `position`."""
        for position, record in rows:
            self.apply(position, record)


class ReplayReport(NamedTuple):
    events: int
    seconds: float
    skipped: list[int]

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds > 0 else 0.0


class UndecodableLog(Exception):
    """A row of the log that cannot be decoded; names its position."""

    def __init__(self, position: int, reason: str):
        super().__init__(
            f"the event at position {position} cannot be decoded ({reason}); nothing was "
            "changed. Run `python -m service replay --skip-undecodable` to see what would be "
            "skipped, or fix the code that reads it."
        )
        self.position = position


class UnfoldableLog(UndecodableLog):
    """A row that decodes but a projection fails to apply: a bug in the projection."""

    def __init__(self, position: int, reason: str):
        Exception.__init__(
            self,
            f"the event at position {position} decodes but cannot be applied to the read "
            f"models ({reason}); nothing was changed. This is a bug in a projection: report it "
            "with this message.",
        )
        self.position = position


async def replay(
    store: EventStore,
    models: ReadModels,
    *,
    skip_undecodable: bool = False,
    on_progress: Callable[[int], None] | None = None,
    page: int = PAGE,
    until: int | None = None,
    where: Callable[[Record], bool] | None = None,
) -> ReplayReport:
    """Apply every event after `models.position` to `models`, in position order.

    `until` stops after that position (for "as of" questions); `where` applies only the
    records it accepts (for filtered questions), though the position still advances.
    """
    started = time.perf_counter()
    applies = [p.apply for p in models.projections]
    skipped: list[int] = []
    count = 0

    def fetch(after: int):
        limit = page if until is None else min(page, until - after)
        if limit <= 0:
            return None
        return asyncio.ensure_future(store.read(after, limit))

    pending = fetch(models.position)
    while pending is not None:
        rows = await pending
        if not rows:
            break
        # Fetch the next page in the store's thread while this one is folded.
        pending = fetch(rows[-1][0])
        for position, _event_id, payload, _recorded_at in rows:
            try:
                record = decode(payload)
            except UndecodableEvent as exc:
                if not skip_undecodable:
                    if pending is not None:
                        pending.cancel()
                    raise UndecodableLog(position, str(exc)) from exc
                skipped.append(position)
                continue
            if where is not None and not where(record):
                continue
            try:
                for apply in applies:
                    apply(record)
            except Exception as exc:  # a projection bug: say where, do not guess a fix
                if pending is not None:
                    pending.cancel()
                raise UnfoldableLog(position, repr(exc)) from exc
        count += len(rows)
        models.position = rows[-1][0]
        if on_progress is not None:
            on_progress(models.position)
    return ReplayReport(count - len(skipped), time.perf_counter() - started, skipped)


# ---- snapshots -------------------------------------------------------------------------------

_MAGIC = b"LLM-METRICS-SNAPSHOT\x01"
_DIGEST = 32


class _ProjectionSnapshot(msgspec.Struct, array_like=True):
    # The projection's version and the configuration it folded with (e.g. the price table).
    fingerprint: str
    state: msgspec.Raw


class _Snapshot(msgspec.Struct, array_like=True):
    position: int
    # The event id at `position`, so a snapshot of another log of the same length is refused.
    event_id: str | None
    projections: dict[str, _ProjectionSnapshot]


def _enc_hook(value: object) -> object:
    # Projections may keep compact `array`s of integers; they travel as their raw bytes.
    if isinstance(value, array):
        return value.tobytes()
    raise NotImplementedError(f"cannot snapshot {type(value).__name__}")


def _dec_hook(kind: type, value: object) -> object:
    if kind is array and isinstance(value, bytes):
        restored = array("q")
        restored.frombytes(value)
        return restored
    raise NotImplementedError(f"cannot restore {kind.__name__} from a snapshot")


_state_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def decode_state(projection, raw: bytes):
    """A projection's state from its snapshot bytes."""
    return msgspec.msgpack.decode(raw, type=projection.state_type, dec_hook=_dec_hook)


def encode_snapshot(models: ReadModels, event_id: str | None) -> bytes:
    """The snapshot file's bytes: magic, checksum, body. Runs on the loop (state must not move)."""
    body = msgspec.msgpack.encode(
        _Snapshot(
            models.position,
            event_id,
            {
                p.name: _ProjectionSnapshot(p.fingerprint,
                                            msgspec.Raw(_state_encoder.encode(p.state)))
                for p in models.projections
            },
        )
    )
    return _MAGIC + hashlib.blake2b(body, digest_size=_DIGEST).digest() + body


def write_file_atomically(path: str | Path, data: bytes) -> None:
    """Write, fsync, rename: a crash leaves the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


async def write_snapshot(path: str | Path, models: ReadModels, store: EventStore) -> int:
    """Snapshot `models` to `path`; returns the position it covers."""
    while True:
        position = models.position
        event_id = None
        if position:
            rows = await store.read(position - 1, 1)
            event_id = rows[0][1] if rows and rows[0][0] == position else None
        # The writer or a tailer may have applied events during the read: then the event id
        # is not the one at the state's position, so read again.
        if models.position == position:
            break
    # Encoded after the check and without an await in between: the state cannot move.
    data = encode_snapshot(models, event_id)
    await asyncio.to_thread(write_file_atomically, path, data)
    return position


class SnapshotRefused(Exception):
    """Why a snapshot cannot be used (the caller logs it and replays the whole log)."""


def decode_snapshot(data: bytes) -> _Snapshot:
    if not data.startswith(_MAGIC):
        raise SnapshotRefused("not a snapshot file (bad magic)")
    digest = data[len(_MAGIC):len(_MAGIC) + _DIGEST]
    body = data[len(_MAGIC) + _DIGEST:]
    if hashlib.blake2b(body, digest_size=_DIGEST).digest() != digest:
        raise SnapshotRefused("checksum mismatch (truncated or corrupted)")
    try:
        return msgspec.msgpack.decode(body, type=_Snapshot)
    except msgspec.MsgspecError as exc:
        raise SnapshotRefused(f"undecodable body: {exc}") from exc


async def load_snapshot(path: str | Path, models: ReadModels, store: EventStore) -> int:
    """Restore `models` from the snapshot at `path`; returns its position.

    Raises `SnapshotRefused` (models untouched) when the file is missing, damaged, of another
    projection version, or does not match the log.
    """
    try:
        data = await asyncio.to_thread(Path(path).read_bytes)
    except FileNotFoundError:
        raise SnapshotRefused("no snapshot file") from None
    except OSError as exc:
        raise SnapshotRefused(f"unreadable: {exc}") from exc
    snap = decode_snapshot(data)
    states = {}
    for projection in models.projections:
        saved = snap.projections.get(projection.name)
        if saved is None or saved.fingerprint != projection.fingerprint:
            raise SnapshotRefused(f"projection {projection.name!r} changed version or prices")
        try:
            states[projection.name] = decode_state(projection, saved.state)
        except msgspec.MsgspecError as exc:
            raise SnapshotRefused(f"projection {projection.name!r}: {exc}") from exc
    if snap.position:
        rows = await store.read(snap.position - 1, 1)
        if not rows or rows[0][0] != snap.position or rows[0][1] != snap.event_id:
            raise SnapshotRefused(f"it is for another log (position {snap.position})")
    for projection in models.projections:
        projection.state = states[projection.name]
    models.position = snap.position
    return snap.position
