"""Bounded capture of a child's stdout and stderr under a wall-clock limit.

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

# After the kill, how long to wait for pipes to close (a process that escaped the kill, only
# possible without a PID namespace, may hold them until the uid sweep).
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


def _drain(sel: selectors.BaseSelector, deadline: float) -> bool:
    """Reads the registered pipes into their buffers until EOF; False if `deadline` came first."""
    while sel.get_map():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        for key, _ in sel.select(left):
            data = os.read(key.fd, 1 << 16)
            if data:
                key.data.add(data)
            else:
                sel.unregister(key.fileobj)
    return True


def collect(
    proc: subprocess.Popen, wall_s: float, output_bytes: int
) -> tuple[Capped, Capped, bool]:
    """Captures stdout/stderr (capped) and waits; kills everything at the wall-clock limit."""
    out, err = Capped(output_bytes), Capped(output_bytes)
    deadline = time.monotonic() + wall_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        timed_out = not _drain(sel, deadline)
        if not timed_out:
            try:  # the program may have closed its pipes and kept running
                proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
            except subprocess.TimeoutExpired:
                timed_out = True
        if timed_out:
            kill_group(proc)
            _drain(sel, time.monotonic() + _KILL_GRACE_S)
    proc.wait()
    proc.stdout.close()
    proc.stderr.close()
    return out, err, timed_out
