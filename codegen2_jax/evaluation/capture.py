"""Bounded capture of a run's stdout and stderr, and the wait for its end under a time limit.

A program can print without end or close its pipes and keep running; neither may block the
harness or grow its memory. Kept: the first and last halves of each stream's byte budget.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Callable

# After the kill, how long to wait for the pipes to close: without a PID namespace or root, a
# process that escaped the kill may hold them open for ever.
_KILL_GRACE_S = 2.0


class Capped:
    """Keeps the first and last `limit // 2` bytes of a stream and counts the rest."""

    def __init__(self, limit: int):
        self._half = limit // 2
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = max(self._half - len(self.head), 0)
        self.head += data[:room]
        self.tail += data[room:]
        del self.tail[: -self._half or len(self.tail)]

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        middle = f"\n...[{dropped} bytes truncated]...\n".encode() if dropped else b""
        return (bytes(self.head) + middle + bytes(self.tail)).decode("utf-8", "replace")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILLs the run's process group: unshare, whose --kill-child takes the PID namespace."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class RunStreams:
    """The pipes of one run: stdout and stderr (capped) and the init's status report.

    The init closes the status pipe when the program has exited, which marks the end of the
    run even if a leftover process still holds stdout/stderr open.
    """

    def __init__(self, proc: subprocess.Popen, status_fd: int, output_bytes: int):
        self.out, self.err = Capped(output_bytes), Capped(output_bytes)
        self.status = Capped(1 << 20)
        self._proc = proc
        self._status_file = os.fdopen(status_fd, "rb", buffering=0)
        self._sel = selectors.DefaultSelector()
        self._sel.register(proc.stdout, selectors.EVENT_READ, self.out)
        self._sel.register(proc.stderr, selectors.EVENT_READ, self.err)
        self._sel.register(self._status_file, selectors.EVENT_READ, self.status)

    def wait_for_exit(self, wall_s: float) -> bool:
        """Reads output until the program has exited; False if `wall_s` passed first."""
        deadline = time.monotonic() + wall_s
        return self._pump(deadline, lambda: self._status_file not in self._sel.get_map())

    def finish(self) -> None:
        """Once everything of the run is killed: reads the rest of the output and reaps."""
        self._pump(time.monotonic() + _KILL_GRACE_S, lambda: not self._sel.get_map())
        self._sel.close()
        self._proc.wait()
        for f in (self._proc.stdout, self._proc.stderr, self._status_file):
            f.close()

    def _pump(self, deadline: float, done: Callable[[], bool]) -> bool:
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            for key, _ in self._sel.select(left):
                data = os.read(key.fd, 1 << 16)
                if data:
                    key.data.add(data)
                else:
                    self._sel.unregister(key.fileobj)
        return True
