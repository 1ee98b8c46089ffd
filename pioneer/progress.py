"""A one-line progress bar for long jobs (prepare, eval): images/s and ETA on stderr."""

from __future__ import annotations

import sys
import time
from typing import Any


class ProgressBar:
    """images/s and ETA on one line of stderr (a line every 10 s when not a terminal)."""

    def __init__(self, label: str, total: int, stream: Any = None):
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.start = time.perf_counter()
        self.last = 0.0
        self.shown = -1  # images done at the last line printed
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def show(self, done: int, skipped: int | None = None, final: bool = False) -> None:
        now = time.perf_counter()
        if done == self.shown or (not final and now - self.last < (0.5 if self.tty else 10.0)):
            return
        self.last, self.shown = now, done
        elapsed = now - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta != float("inf") else "--"
        width = 24
        filled = int(width * done / max(1, self.total))
        line = (
            f"{self.label} [{'#' * filled}{'.' * (width - filled)}] {done:,}/{self.total:,} "
            f"{rate:,.0f} img/s ETA {eta_text}"
        ) + (f" | {skipped:,} skipped" if skipped is not None else "")
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()
