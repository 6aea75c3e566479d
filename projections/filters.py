"""Which events a question is about: one filter, used by in-memory views and filtered replays."""

from __future__ import annotations

import msgspec

from events.records import Record


class EventFilter(msgspec.Struct, kw_only=True, frozen=True):
    """Events of a session / model / user / tag, with an event time in `[from_us, to_us)`."""

    session_id: str | None = None
    model: str | None = None
    user_id: str | None = None
    tag: str | None = None
    from_us: int | None = None
    to_us: int | None = None

    def __call__(self, record: Record) -> bool:
        if self.session_id is not None and record.session_id != self.session_id:
            return False
        if self.model is not None and record.model != self.model:
            return False
        if self.user_id is not None and record.user_id != self.user_id:
            return False
        if self.tag is not None and self.tag not in record.tags:
            return False
        if self.from_us is not None and record.timestamp_us < self.from_us:
            return False
        if self.to_us is not None and record.timestamp_us >= self.to_us:
            return False
        return True

    @property
    def in_memory(self) -> bool:
        """Whether the live projections hold the answer (otherwise it takes a filtered replay):
        no time window, and at most one of user and tag (each is kept per model)."""
        return self.from_us is None and self.to_us is None and not (
            self.user_id is not None and self.tag is not None)

    @property
    def empty(self) -> bool:
        return self == _NONE


_NONE = EventFilter()
