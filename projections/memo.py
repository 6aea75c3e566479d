"""Answers kept between changes: the encoded answer of a one-session question, until a change
touches that session.

A dashboard asks for the same sessions again and again, and most of them have not changed
since the last time; planning and running the question costs the engine milliseconds, a
dictionary lookup costs nothing. `Facts` forgets a session's answers when an apply touches it,
and every answer when something may change them all (an erasure, new prices, a rebuild).

A question that was under way while its session changed may have read the facts before the
change: its answer is handed back to its caller but not kept (`Ticket`).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Hashable, Iterable

# What the kept answers may add up to; past it, the least recently read go first.
MAX_BYTES = 16 * 1024 * 1024


class Ticket:
    """Taken before a question reads the facts, handed back with its answer to `keep`."""

    __slots__ = ("key", "session", "epoch")

    def __init__(self, key: Hashable, session: str, epoch: int):
        self.key, self.session, self.epoch = key, session, epoch


class AnswerMemo:
    """Encoded answers by key, each about one session; bounded by `max_bytes`."""

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self._answers: OrderedDict[Hashable, tuple[str, object, bytes]] = OrderedDict()
        self._keys_of: dict[str, set[Hashable]] = {}
        self._bytes = 0
        # Bumped by `forget_all`; a ticket from before it keeps nothing.
        self._epoch = 0
        # Sessions with a question under way (how many), and those among them that changed.
        self._asking: dict[str, int] = {}
        self._changed: set[str] = set()

    def get(self, key: Hashable) -> tuple[object, bytes] | None:
        """(the `valid` tag it was kept with, the answer) for `key`, or None."""
        entry = self._answers.get(key)
        if entry is None:
            return None
        self._answers.move_to_end(key)
        return entry[1], entry[2]

    def ticket(self, key: Hashable, session: str) -> Ticket:
        """Call before reading the facts for `key`; pass the ticket to `keep` or `drop`."""
        self._asking[session] = self._asking.get(session, 0) + 1
        return Ticket(key, session, self._epoch)

    def keep(self, ticket: Ticket, answer: bytes, valid: object = None) -> None:
        """Keep `answer` unless its session changed while it was being computed; `valid` is
        what the caller needs to know, at `get`, whether it still holds."""
        if ticket.epoch == self._epoch and ticket.session not in self._changed:
            self._put(ticket.key, ticket.session, answer, valid)
        self.drop(ticket)

    def drop(self, ticket: Ticket) -> None:
        """The question ended without an answer to keep."""
        left = self._asking.get(ticket.session, 0) - 1
        if left > 0:
            self._asking[ticket.session] = left
        else:
            self._asking.pop(ticket.session, None)
            self._changed.discard(ticket.session)

    def forget(self, sessions: Iterable[str]) -> None:
        """These sessions changed: their answers are gone, and those under way not kept."""
        for session in sessions:
            for key in self._keys_of.pop(session, ()):
                self._bytes -= len(self._answers.pop(key)[2])
            if session in self._asking:
                self._changed.add(session)

    def forget_all(self) -> None:
        """Anything may have changed."""
        self._answers.clear()
        self._keys_of.clear()
        self._bytes = 0
        self._epoch += 1

    def _put(self, key: Hashable, session: str, answer: bytes, valid: object) -> None:
        if key in self._answers:
            self._remove(key)
        if len(answer) > self.max_bytes:
            return
        self._answers[key] = (session, valid, answer)
        self._keys_of.setdefault(session, set()).add(key)
        self._bytes += len(answer)
        while self._bytes > self.max_bytes:
            self._remove(next(iter(self._answers)))

    def _remove(self, key: Hashable) -> None:
        session, _, answer = self._answers.pop(key)
        self._bytes -= len(answer)
        keys = self._keys_of[session]
        keys.discard(key)
        if not keys:
            del self._keys_of[session]
