"""A dependency-free progress bar for long command-line runs (replay, import, export)."""

from __future__ import annotations

import sys
import time

# Shorter runs finish before a bar would help.
MIN_TOTAL = 50_000


class Progress:
    """`update(done)` as work goes; `done()` at the end. Writes to stderr only."""

    def __init__(self, total: int, label: str, stream=None):
        self.total = total
        self.label = label
        self.stream = stream or sys.stderr
        self.started = time.perf_counter()
        self._shown = total >= MIN_TOTAL
        self._tty = self.stream.isatty()
        self._next_line = 0.1

    def update(self, done: int) -> None:
        if not self._shown or not self.total:
            return
        fraction = min(done / self.total, 1.0)
        elapsed = time.perf_counter() - self.started
        rate = done / elapsed if elapsed > 0 else 0
        bar = "#" * int(fraction * 30)
        text = f"{self.label} [{bar:<30}] {fraction:6.1%} {done:,}/{self.total:,} {rate:,.0f}/s"
        if self._tty:
            self.stream.write("\r" + text)
            self.stream.flush()
        elif fraction >= self._next_line:
            self.stream.write(text + "\n")
            self._next_line = fraction + 0.1

    def done(self) -> None:
        if self._shown and self._tty:
            self.stream.write("\n")
            self.stream.flush()
