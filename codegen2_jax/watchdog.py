"""Failure detection for training processes: the step watchdog and peer heartbeats.

In a multi-process run every step holds collectives, so a process that dies or freezes leaves
the others failing inside a collective or blocked in one, or in a barrier, for good. Two
daemon threads bound that:

  Heartbeats  each process bumps a counter in the jax.distributed key-value store and reads
              the others' (a second thread, as a call to a frozen coordinator may block).
  Watchdog    aborts the process when the current unit of work (a step, a checkpoint save,
              an evaluation) overruns its time limit, or a peer's heartbeat stops for
              peer_timeout_s; the message names the silent process.

Aborting is os._exit(EXIT_CODE): the normal exit path runs orbax's finalisation and
jax.distributed's shutdown barrier, which would wait for the lost process. Whatever was
committed stays; the run resumes from the last checkpoint when all processes restart.
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

import jax

# EX_TEMPFAIL: a temporary failure, so a babysitter relaunches and the run resumes.
EXIT_CODE = 75
_KEY_PREFIX = "codegen2_jax/heartbeat/"
_WARN_EVERY_S = 10.0  # at most one "heartbeat failed" line per this many seconds

logger = logging.getLogger(__name__)


def abort(message: str) -> NoReturn:
    """Logs message, dumps every thread's Python stack to stderr and exits at once."""
    logger.error("%s", message)
    print(f"FATAL: {message}", file=sys.stderr, flush=True)
    faulthandler.dump_traceback(all_threads=True)  # where the main thread was stuck
    os._exit(EXIT_CODE)


class Heartbeats:
    """This process's heartbeat and its view of the others', through the coordinator's KV store.

    A peer counts as alive while its counter keeps changing; a peer that stopped cleanly or
    failed publishes that state as its last beat.

    Args:
      client: the jax.distributed client (key_value_set / key_value_dir_get).
      process_index, process_count: this process and the job's size.
      interval_s: seconds between beats.
      clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        client,
        process_index: int,
        process_count: int,
        *,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._client = client
        self._index = process_index
        self._interval_s = interval_s
        self._clock = clock
        now = clock()
        self._peers = {p: ("", now) for p in range(process_count) if p != process_index}
        self._answered = now  # when the coordinator last answered
        self._counter = 0
        self._state = "running"
        self._lock = threading.Lock()  # guards _peers and _answered
        self._beat_lock = threading.Lock()  # one beat at a time, so the last state set wins
        self._stopped = threading.Event()
        self._warned = -float("inf")  # when a failed beat was last logged
        self._thread = threading.Thread(target=self._run, name="heartbeats", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def publish(self, state: str) -> None:
        """Sets the state peers see with this process's heartbeat, and beats once now."""
        self._state = state
        self.beat()

    def stop(self) -> None:
        """Tells peers this process is done, so its silence from now on is not a loss."""
        self._stopped.set()
        with contextlib.suppress(Exception):
            self.publish("stopped")

    def beat(self) -> None:
        """Publishes the next counter value and reads every peer's last beat."""
        with self._beat_lock:
            self._counter += 1
            key = f"{_KEY_PREFIX}{self._index}"
            value = f"{self._counter} {self._state}"
            self._client.key_value_set(key, value, allow_overwrite=True)
            beats = dict(self._client.key_value_dir_get(_KEY_PREFIX))
        now = self._clock()
        with self._lock:
            self._answered = now
            for peer, (last, seen) in self._peers.items():
                value = beats.get(f"{_KEY_PREFIX}{peer}", last)
                self._peers[peer] = (value, now if value != last else seen)

    def silent(self, timeout_s: float, first_beat_timeout_s: float) -> list[str]:
        """Descriptions of the peers (or the coordinator) that fell silent.

        Args:
          timeout_s: how long a peer that has beaten may stay silent.
          first_beat_timeout_s: how long a peer may take to send its first beat (processes
            reach the training loop at different times).
        """
        now = self._clock()
        with self._lock:
            if now - self._answered > timeout_s:
                waited = now - self._answered
                return [f"the coordinator (process 0) has not answered for {waited:.1f} s"]
            return [
                f"process {peer} has sent no heartbeat for {now - seen:.1f} s "
                f"(its last state: {value.partition(' ')[2] or 'none yet'})"
                for peer, (value, seen) in sorted(self._peers.items())
                if now - seen > (timeout_s if value else first_beat_timeout_s)
                and not value.endswith(" stopped")
            ]

    def quiet(self) -> list[str]:
        """The peers silent for a few heartbeat intervals (for messages about other failures)."""
        return self.silent(3 * self._interval_s, 3 * self._interval_s)

    def peer_states(self) -> dict[int, str]:
        """Each peer's last published state: "running", "failed" or "stopped"."""
        with self._lock:
            return {p: value.partition(" ")[2] for p, (value, _) in self._peers.items()}

    def _run(self) -> None:
        while not self._stopped.wait(self._interval_s):
            try:
                self.beat()
            except Exception as e:  # the coordinator may be gone; silent() reports it
                if self._clock() - self._warned >= _WARN_EVERY_S:
                    self._warned = self._clock()
                    logger.warning("heartbeat failed: %s", e)


class Watchdog:
    """Aborts the process when its current unit of work overruns or a peer falls silent.

    The training loop arms it before each unit of work (expect, slow_op); the thread checks
    the deadline and the peers' heartbeats a few times a second.

    Args:
      step_timeout_s: limit for one training step.
      slow_op_timeout_s: limit for compilation, checkpoint restore, save and commit waits,
        and evaluation.
      peer_timeout_s: how long a peer may stay silent (multi-process runs).
      heartbeats: the peers' heartbeats; None in single-process runs.
      on_abort: called with the message (abort() unless a test replaces it).
    """

    def __init__(
        self,
        *,
        step_timeout_s: float,
        slow_op_timeout_s: float,
        peer_timeout_s: float,
        heartbeats: Heartbeats | None = None,
        on_abort: Callable[[str], None] = abort,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.step_timeout_s = step_timeout_s
        self.slow_op_timeout_s = slow_op_timeout_s
        self.peer_timeout_s = peer_timeout_s
        self._heartbeats = heartbeats
        self._on_abort = on_abort
        self._clock = clock
        self._activity, self._timeout_s, self._deadline = "start-up", float("inf"), float("inf")
        self._paused_s = 0.0
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watchdog", daemon=True)

    @classmethod
    def for_this_process(cls, **timeouts: float) -> Watchdog:
        """A started watchdog; with heartbeats through jax.distributed in multi-process runs."""
        heartbeats = None
        if jax.process_count() > 1:
            from jax._src import distributed  # the client jax.distributed.initialize made

            heartbeats = Heartbeats(
                distributed.global_state.client,
                jax.process_index(),
                jax.process_count(),
                interval_s=min(1.0, timeouts["peer_timeout_s"] / 5),
            )
            heartbeats.start()
        watchdog = cls(heartbeats=heartbeats, **timeouts)
        watchdog._thread.start()
        return watchdog

    def expect(self, activity: str, timeout_s: float | None = None) -> None:
        """Starts the clock on the next unit of work (a step unless timeout_s says otherwise)."""
        timeout_s = self.step_timeout_s if timeout_s is None else timeout_s
        self._activity, self._timeout_s = activity, timeout_s
        self._deadline = self._clock() + timeout_s

    @contextlib.contextmanager
    def slow_op(self, activity: str) -> Iterator[None]:
        """Allows slow_op_timeout_s for the body, then restarts the clock of what it interrupted."""
        before, timeout_s = self._activity, self._timeout_s
        self.expect(activity, self.slow_op_timeout_s)
        yield
        self.expect(before, timeout_s)

    def settle(self) -> None:
        """After an error: lets a lost peer be found (and named) before this process gives up.

        A collective fails at once when a peer's connection drops, before that peer's silence
        is certain. Returns when every peer has stopped or failed too, or after twice
        peer_timeout_s.
        """
        if self._heartbeats is None:
            return
        with contextlib.suppress(Exception):
            self._heartbeats.publish("failed")
        # A dead peer's silence shows peer_timeout_s after its last beat was seen, which may
        # be a little after the error here; twice that leaves room.
        deadline = self._clock() + 2 * self.peer_timeout_s
        while self._clock() < deadline:
            states = self._heartbeats.peer_states().values()
            if all(s in ("stopped", "failed") for s in states):
                return
            self.check()
            time.sleep(0.1)

    def stop(self) -> None:
        """Stops watching; peers are told this process stopped on purpose.

        The thread watches until the telling is done, in case the coordinator does not answer.
        """
        if self._heartbeats is not None:
            self._heartbeats.stop()
        self._stopped.set()

    def __enter__(self) -> Watchdog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def check(self) -> None:
        """Aborts when the current unit of work is overdue or a peer fell silent."""
        pid = jax.process_index()
        lost = self._heartbeats and self._heartbeats.silent(
            self.peer_timeout_s, self.slow_op_timeout_s
        )
        if lost:
            self._on_abort(
                f"process {pid}: lost contact with the job: {'; '.join(lost)}. It died, froze "
                "or is unreachable; stopping so that all processes can restart from the last "
                "checkpoint." + self._own_pause()
            )
        elif self._clock() > self._deadline:
            peers = self._heartbeats.quiet() if self._heartbeats else []
            self._on_abort(
                f"process {pid}: watchdog: {self._activity} did not finish within "
                f"{self._timeout_s:.0f} s; stopping so that all processes can restart from "
                "the last checkpoint."
                + (f" Quiet peers: {'; '.join(peers)}." if peers else "")
                + self._own_pause()
            )

    def _run(self) -> None:
        last = self._clock()
        while not self._stopped.wait(0.25):
            now = self._clock()
            if now - last > 5.0:  # this thread itself did not run: SIGSTOP, or a starved host
                self._paused_s = now - last
            last = now
            self.check()

    def _own_pause(self) -> str:
        if not self._paused_s:
            return ""
        return f" This process itself was not running for {self._paused_s:.0f} s (suspended?)."
