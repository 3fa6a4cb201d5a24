"""Proportional set size of a whole process tree, sampled in a background thread (``bench.data.scale``).

PSS counts a page shared by k processes as 1/k to each, so the sum over a process and its descendants (DataLoader
workers, torchrun ranks, the ONNX Runtime sessions' helpers) is what the tree really holds: summing RSS would count
the copy-on-write pages a forked worker shares with its parent twice. Each tick reads ``/proc/<pid>/smaps_rollup``
of the root and of every descendant (found through ``/proc/<pid>/task/<tid>/children``); a process that exits
between listing and reading is skipped.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (children of every thread, recursively)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                try:
                    todo += [int(c) for c in (task / "children").read_text().split()]
                except OSError:
                    continue
        except OSError:
            continue
    return out


def pss_kb(pid: int) -> int | None:
    """``pid``'s PSS in KiB (None when it is gone or unreadable)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def tree_pss_kb(pid: int) -> tuple[int, int]:
    """(PSS of ``pid``'s tree in KiB, processes counted)."""
    total, count = 0, 0
    for p in descendants(pid):
        kb = pss_kb(p)
        if kb is not None:
            total, count = total + kb, count + 1
    return total, count


class TreeSampler:
    """Samples ``tree_pss_kb(pid)`` every ``interval`` seconds until ``stop``; ``samples`` holds
    (monotonic time, PSS KiB, processes)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> TreeSampler:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            kb, n = tree_pss_kb(self.pid)
            if n:
                self.samples.append((time.monotonic(), kb, n))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, t0: float = float("-inf"), t1: float = float("inf")) -> tuple[int | None, int, int]:
        """(peak PSS KiB, most processes at once, samples) over the samples taken in [t0, t1]; (None, 0, 0) when
        none fell inside (a stage shorter than the interval)."""
        inside = [(kb, n) for t, kb, n in self.samples if t0 <= t <= t1]
        if not inside:
            return None, 0, 0
        return max(kb for kb, _ in inside), max(n for _, n in inside), len(inside)
