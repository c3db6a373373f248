"""Processes by uid: reserve a dedicated uid, find its processes in /proc, kill them all."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import time


def reserve_uid(base: int, count: int) -> tuple[int, socket.socket] | None:
    """Reserves a uid in [base, base + count) machine-wide; None if all are taken.

    The reservation is an abstract unix socket bound to a name derived from the uid: binding is
    atomic across threads and processes, and the name vanishes with the socket, so a crashed
    harness frees its uids. Close the returned socket to release the uid.
    """
    for uid in range(base, base + count):
        lease = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            lease.bind(f"\0codegen2_jax.sandbox.uid.{uid}")
        except OSError as e:
            lease.close()
            if e.errno != errno.EADDRINUSE:
                raise
            continue
        return uid, lease
    return None


def pids_of_uid(uid: int) -> list[int]:
    """Pids whose real, effective, saved or filesystem uid is `uid` (zombies included).

    Reads the Uid line of /proc/PID/status: after a uid change a process is not dumpable, so
    the owner of /proc/PID is root and says nothing.
    """
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as f:
                uids = next(line for line in f if line.startswith("Uid:")).split()[1:]
        except (OSError, StopIteration):
            continue  # exited while scanning
        if str(uid) in uids:
            pids.append(int(entry.name))
    return pids


def kill_uid(uid: int, *, timeout_s: float = 5.0) -> int:
    """SIGKILLs every process of `uid` until none is left; returns how many were found.

    Runs `kill -9 -1` as that uid: kill(-1) reaches every process the caller may signal, which
    for an unprivileged uid is exactly its own processes, even ones that left their process
    group or session. Repeats because a fork bomb can fork between scan and kill.

    Raises:
        RuntimeError: processes of `uid` remain after `timeout_s`.
    """
    found = len(pids_of_uid(uid))
    deadline = time.monotonic() + timeout_s
    while pids := pids_of_uid(uid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of uid {uid} survive SIGKILL: {pids}")
        subprocess.run(
            [shutil.which("kill") or "/bin/kill", "-9", "-1"],
            user=uid,
            group=uid,
            extra_groups=[],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        time.sleep(0.01)  # let the killed processes be reaped before scanning again
    return found
