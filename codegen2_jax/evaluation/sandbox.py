"""Execution sandbox: runs one untrusted Python program per fresh, contained process tree.

Layers, each detected at startup and reported in every result (`Result.protections`):

- new network, IPC, PID and mount namespaces (unshare); the program sees only loopback (down)
  and its own processes; when the namespace's init exits, the kernel kills every process in it;
- a mount setup inside that namespace (sandbox_init.py): the harness's home is covered by an
  empty tmpfs (the interpreter is bound back where it lives), every mount is made read-only
  for this namespace only, and the program's cwd/HOME/TMPDIR is a private, size-capped tmpfs.
  Writes outside it fail with EROFS whatever the file permissions say;
- an unprivileged uid (one dedicated uid per concurrent run, so RLIMIT_NPROC and signals never
  cross runs), no supplementary groups, no capabilities, no_new_privs (setpriv);
- rlimits (CPU seconds, address space, file size, processes, open files, no core files), a
  scrubbed environment, a wall-clock timeout that kills the whole process group;
- after each run, /proc is scanned for processes of the run's uid; any found are killed (as that
  uid: kill(-1)) and counted in `Result.leftover_killed`, and the run fails loudly if some stay.

Without root, namespaces and the uid change are unavailable: the results say so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from codegen2_jax.evaluation import capture, processes

ACTIVE = "active"
_INIT_SCRIPT = str(Path(__file__).with_name("sandbox_init.py"))
_PROGRAM_PATH = "/usr/local/bin:/usr/bin:/bin"
_MOUNT_STEPS = ("hidden_home", "read_only_filesystem", "private_tmpfs")
_NAMESPACE_FLAGS = {
    "network_namespace": ["--net"],
    "ipc_namespace": ["--ipc"],  # no System V / POSIX IPC objects of the host
    "pid_namespace": ["--pid", "--fork", "--kill-child"],
    "mount_namespace": ["--mount", "--propagation=private"],
}


class SandboxError(RuntimeError):
    """The harness itself failed (not the program): a protection broke or a process survived."""


@dataclasses.dataclass(frozen=True)
class Limits:
    """Per-run resource limits.

    Memory is bounded per process, not per run (no cgroup): a run can hold at most about
    `processes * memory_bytes + tmpfs_bytes` (4.1 GiB by default); HumanEval programs need
    one process and under 20 MiB.

    Attributes:
        wall_s: wall-clock seconds before the whole run is killed ("timed_out").
        cpu_s: CPU seconds per process (RLIMIT_CPU; SIGXCPU, then SIGKILL one second later).
        memory_bytes: address space per process (RLIMIT_AS).
        file_bytes: largest file a process may write (RLIMIT_FSIZE).
        tmpfs_bytes: size of the private working directory when it is a tmpfs.
        processes: processes of the run's uid (RLIMIT_NPROC).
        open_files: open file descriptors per process (RLIMIT_NOFILE).
        output_bytes: bytes kept of stdout and of stderr (half from the start, half the end).
    """

    wall_s: float = 10.0
    cpu_s: int = 5
    memory_bytes: int = 512 << 20
    file_bytes: int = 16 << 20
    tmpfs_bytes: int = 64 << 20
    processes: int = 8
    open_files: int = 64
    output_bytes: int = 64 << 10

    def rlimits(self) -> dict[str, list[int]]:
        return {
            "RLIMIT_CPU": [self.cpu_s, self.cpu_s + 1],
            "RLIMIT_AS": [self.memory_bytes] * 2,
            "RLIMIT_FSIZE": [self.file_bytes] * 2,
            "RLIMIT_NPROC": [self.processes] * 2,
            "RLIMIT_NOFILE": [self.open_files] * 2,
            "RLIMIT_CORE": [0, 0],
        }


@dataclasses.dataclass(frozen=True)
class Result:
    """Outcome of one run.

    Attributes:
        status: "passed" (exit 0 and, when asked, the pass marker as the last stdout line),
            "failed" (any other exit), "timed_out" (wall clock) or "killed" (by a signal, e.g.
            the CPU limit).
        reason: one line saying why.
        returncode: the program's exit status (negative: signal number); None if timed out.
        stdout: captured stdout, truncated in the middle beyond `Limits.output_bytes`.
        stderr: captured stderr, truncated likewise.
        duration_s: wall-clock seconds of the run.
        protections: protection name -> "active" or "unavailable: ..." / "failed: ...".
        leftover_killed: processes of the run's uid still alive after it ended (then killed).
        uid: the uid the program ran as (None when the harness could not change uid).
    """

    status: str
    reason: str
    returncode: int | None
    stdout: str
    stderr: str
    duration_s: float
    protections: Mapping[str, str]
    leftover_killed: int = 0
    uid: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class Sandbox:
    """Runs untrusted Python programs; thread-safe (one `run` per thread, any number of threads).

    Args:
        limits: default resource limits.
        python: interpreter for the programs (default: this one).
        uid_base: first of the dedicated uids (never a real account's uid).
        uid_count: how many runs may be in flight at once, machine-wide.
    """

    def __init__(
        self,
        limits: Limits = Limits(),
        *,
        python: str = sys.executable,
        uid_base: int = 2_100_000_000,
        uid_count: int = 256,
    ):
        self.limits = limits
        self._python = python
        self._uid_base, self._uid_count = uid_base, uid_count
        self._setpriv = shutil.which("setpriv")
        self._root = os.geteuid() == 0 and self._setpriv is not None
        self._namespaces = self._probe_namespaces()
        self._required: tuple[str, ...] = ()
        self.protections = self._probe()

    def _probe_namespaces(self) -> dict[str, str]:
        """Tries each namespace on its own with `unshare ... true`."""
        unshare = shutil.which("unshare")
        result = {}
        for name, flags in _NAMESPACE_FLAGS.items():
            if unshare is None:
                result[name] = "unavailable: no unshare binary"
                continue
            probe = subprocess.run(
                [unshare, *flags, "true"], capture_output=True, text=True, check=False
            )
            err = probe.stderr.strip().splitlines()[-1:] or [f"exit {probe.returncode}"]
            result[name] = ACTIVE if probe.returncode == 0 else f"unavailable: {err[0]}"
        return result

    def _probe(self) -> dict[str, str]:
        """Runs a trivial program to learn which mount steps work; later runs require them."""
        result = self.run(
            "print('ok')", success_marker="ok", limits=dataclasses.replace(self.limits, wall_s=30.0)
        )
        if not result.passed:
            raise SandboxError(f"a trivial program does not run in the sandbox: {result}")
        self._required = tuple(n for n in _MOUNT_STEPS if result.protections[n] == ACTIVE)
        return dict(result.protections)

    def run(
        self, program: str, *, success_marker: str | None = None, limits: Limits | None = None
    ) -> Result:
        """Runs `program` (Python source) in a fresh sandbox and waits for it.

        Args:
            program: the source to execute as a script.
            success_marker: if given, passing also needs this as the last line of stdout, so a
                program that exits 0 early (sys.exit(0) before its asserts) fails.
            limits: overrides the sandbox's default limits.

        Returns:
            The run's Result.

        Raises:
            SandboxError: a required protection failed or a process outlived its run.
        """
        limits = limits or self.limits
        reserved = processes.reserve_uid(self._uid_base, self._uid_count)
        if reserved is None:
            raise SandboxError(f"all {self._uid_count} uids from {self._uid_base} are in use")
        uid, lease = reserved
        try:
            with tempfile.TemporaryDirectory(prefix="codegen2_jax-sandbox-") as sample_dir:
                return self._run_in(Path(sample_dir), program, uid, limits, success_marker)
        finally:
            lease.close()

    def _run_in(
        self, sample_dir: Path, program: str, uid: int, limits: Limits, marker: str | None
    ) -> Result:
        self._prepare(sample_dir, program, uid)
        read_end, write_end = os.pipe()
        start = time.monotonic()
        try:
            proc = self._launch(self._init_config(sample_dir, uid, limits, write_end))
        finally:
            os.close(write_end)
        streams = capture.RunStreams(proc, read_end, limits.output_bytes)
        timed_out = not streams.wait_for_exit(limits.wall_s)
        # The run ends with its program: kill the init and unshare (the PID namespace goes with
        # them), then whatever else still runs as the run's uid.
        capture.kill_group(proc)
        try:
            leftovers = self._sweep(uid)
        finally:
            streams.finish()
        out, err = streams.out, streams.err
        report = json.loads(streams.status.text() or "{}")
        if "returncode" not in report and not timed_out:
            raise SandboxError(f"sandbox init failed: {report or err.text()}")
        status_, reason = _classify(report, timed_out, out, err, marker, limits)
        return Result(
            status=status_,
            reason=reason,
            returncode=report.get("returncode"),
            stdout=out.text(),
            stderr=err.text(),
            duration_s=time.monotonic() - start,
            protections=self._protections(report.get("steps", {})),
            leftover_killed=leftovers,
            uid=uid if self._root else None,
        )

    def _prepare(self, sample_dir: Path, program: str, uid: int) -> None:
        """Lays out program.py (root-owned, read-only), work/ (the sandbox uid's) and stage/."""
        (sample_dir / "work").mkdir()
        (sample_dir / "stage").mkdir()
        (sample_dir / "program.py").write_text(program)
        (sample_dir / "program.py").chmod(0o644)
        sample_dir.chmod(0o711)  # the sandbox uid may enter, but not list, the sample dir
        if self._root:
            os.chown(sample_dir / "work", uid, uid)

    def _launch(self, config: dict) -> subprocess.Popen:
        """Starts the init (in fresh namespaces when available) in a new process group."""
        argv = [self._python, "-I", "-S", _INIT_SCRIPT, json.dumps(config)]
        return subprocess.Popen(
            [*self._unshare_prefix(), *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={"PATH": os.defpath, "LANG": "C.UTF-8"},
            pass_fds=(config["status_fd"],),
            start_new_session=True,
        )

    def _init_config(self, sample_dir: Path, uid: int, limits: Limits, status_fd: int) -> dict:
        """What sandbox_init.py needs: paths, mount steps, rlimits, the program's argv and env."""
        mount_ns = self._namespaces["mount_namespace"] == ACTIVE
        work = str(sample_dir / "work")
        python = Path(self._python).absolute()
        # The interpreter's own tree and the real one behind a venv's symlink.
        expose = {str(python.parent.parent), str(Path(os.path.realpath(python)).parent.parent)}
        return {
            "work": work,
            "stage": str(sample_dir / "stage"),
            "uid": uid,
            "gid": uid,
            "hide": [h for h in [os.path.realpath(Path.home())] if h != "/" and Path(h).is_dir()],
            "expose": sorted(expose | {str(sample_dir)}),
            "tmpfs_bytes": limits.tmpfs_bytes,
            "steps": list(_MOUNT_STEPS) if mount_ns else [],
            "required": list(self._required),
            "rlimits": limits.rlimits(),
            "argv": [
                *self._privilege_drop(uid),
                str(python),
                "-I",
                "-B",
                str(sample_dir / "program.py"),
            ],
            "env": _program_env(work),
            "status_fd": status_fd,
        }

    def _privilege_drop(self, uid: int) -> list[str]:
        if not self._setpriv:
            return []
        if not self._root:
            return [self._setpriv, "--no-new-privs", "--"]
        ids = [f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
        caps = ["--inh-caps=-all", "--bounding-set=-all"]
        return [self._setpriv, *ids, "--no-new-privs", *caps, "--"]

    def _unshare_prefix(self) -> list[str]:
        active = [n for n, v in self._namespaces.items() if v == ACTIVE]
        if not active:
            return []
        flags = [f for n in active for f in _NAMESPACE_FLAGS[n]]
        if {"pid_namespace", "mount_namespace"} <= set(active):
            flags.append("--mount-proc")  # /proc shows only the sandbox's processes
        return [shutil.which("unshare"), *flags, "--"]

    def _protections(self, steps: Mapping[str, str]) -> dict[str, str]:
        result = dict(self._namespaces)
        for name in _MOUNT_STEPS:
            result[name] = steps.get(name, "unavailable: no mount namespace")
        not_root = "unavailable: the harness is not root (or setpriv is missing)"
        result["unprivileged_uid"] = ACTIVE if self._root else not_root
        result["no_new_privs"] = ACTIVE if self._setpriv else "unavailable: no setpriv"
        result["rlimits"] = result["scrubbed_environment"] = result["wall_timeout"] = ACTIVE
        kills_all = self._root or self._namespaces["pid_namespace"] == ACTIVE
        result["kill_all_processes"] = ACTIVE if kills_all else "unavailable: process group only"
        return result

    def _sweep(self, uid: int) -> int:
        """Kills what is left of the run's uid; a uid is never reused with a survivor."""
        if not self._root:
            return 0
        try:
            return processes.kill_uid(uid)
        except RuntimeError as e:
            raise SandboxError(str(e)) from e


def _program_env(work: str) -> dict[str, str]:
    """The program's whole environment: nothing of the harness's passes through."""
    return {
        "PATH": _PROGRAM_PATH,
        "HOME": work,
        "TMPDIR": work,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }


def _classify(
    report: Mapping,
    timed_out: bool,
    out: capture.Capped,
    err: capture.Capped,
    marker: str | None,
    limits: Limits,
) -> tuple[str, str]:
    """(status, reason) of a finished run."""
    if timed_out:
        return "timed_out", f"wall-clock limit of {limits.wall_s:g} s"
    returncode = report["returncode"]
    if returncode < 0:
        name = signal.Signals(-returncode).name
        # SIGXCPU at the soft CPU limit; SIGKILL at the hard one if the program ignored it.
        cpu = name == "SIGXCPU" or (name == "SIGKILL" and report["cpu_s"] >= limits.cpu_s)
        return "killed", name + (" (CPU time limit)" if cpu else "")
    last_error = (err.text().strip().splitlines() or [""])[-1][:200]
    if returncode != 0:
        return "failed", f"exit status {returncode}: {last_error}".rstrip(": ")
    last_line = (out.text().rstrip("\n").rsplit("\n", 1) or [""])[-1]
    if marker is not None and last_line != marker:
        return "failed", "exit status 0 without the pass marker (exited before its checks)"
    return "passed", "exit status 0" + (" and pass marker" if marker is not None else "")
