"""Hostile programs against the sandbox: each is contained and the harness keeps running."""

import dataclasses
import os
import socket
import tempfile
import textwrap
from pathlib import Path

import pytest

from codegen2_jax.evaluation import capture, processes, sandbox

MARKER = "sandbox-test-done"
LIMITS = sandbox.Limits(wall_s=4.0, cpu_s=2, tmpfs_bytes=8 << 20, file_bytes=4 << 20)


@pytest.fixture(scope="module")
def box():
    return sandbox.Sandbox(LIMITS)


def _require(box, *names):
    missing = {n: box.protections[n] for n in names if box.protections[n] != sandbox.ACTIVE}
    if missing:
        pytest.skip(f"protection not available here: {missing}")


def _run(box, source, **kwargs):
    """Runs `source`, then checks nothing of it survives and the harness still runs programs."""
    result = box.run(textwrap.dedent(source), **kwargs)
    if result.uid is not None:
        assert processes.pids_of_uid(result.uid) == []
    assert box.run(f"print({MARKER!r})", success_marker=MARKER).passed
    return result


@pytest.fixture
def planted():
    """A root-owned, world-writable dir holding a world-writable file: only the read-only
    mount (not file permissions) keeps the sandbox from changing them."""
    root = Path(tempfile.mkdtemp(prefix="sandbox-planted-"))
    root.chmod(0o777)
    victim = root / "victim.txt"
    victim.write_text("planted")
    victim.chmod(0o666)
    yield victim
    victim.unlink(missing_ok=True)
    for extra in root.iterdir():
        extra.unlink()
    root.rmdir()


def _assert_untouched(victim):
    assert victim.read_text() == "planted"
    assert [p.name for p in victim.parent.iterdir()] == ["victim.txt"]


def test_every_protection_is_reported(box):
    result = box.run("pass")
    assert result.protections == box.protections
    assert set(box.protections) >= {
        "network_namespace",
        "ipc_namespace",
        "pid_namespace",
        "mount_namespace",
        "read_only_filesystem",
        "hidden_home",
        "private_tmpfs",
        "unprivileged_uid",
        "no_new_privs",
        "rlimits",
        "kill_all_processes",
    }
    for value in box.protections.values():
        assert value == sandbox.ACTIVE or value.startswith(("unavailable: ", "failed: "))


def test_environment_is_scrubbed_and_cwd_is_private(box):
    os.environ["SANDBOX_TEST_SECRET_VAR"] = "leak"
    try:
        result = _run(
            box,
            """
            import os
            print(sorted(os.environ), os.getcwd() == os.environ["HOME"], os.listdir("."))
            print(os.getuid(), os.getgroups())
            """,
        )
    finally:
        del os.environ["SANDBOX_TEST_SECRET_VAR"]
    assert result.passed, result
    first, second = result.stdout.splitlines()
    assert first == "['HOME', 'LANG', 'LC_ALL', 'PATH', 'TMPDIR'] True []"
    if result.uid is not None:
        assert second == f"{result.uid} []"


def test_fork_bomb(box):
    _require(box, "kill_all_processes")
    limits = dataclasses.replace(LIMITS, wall_s=2.0)
    result = _run(
        box,
        """
        import os
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """,
        limits=limits,
    )
    assert result.status in ("timed_out", "killed"), result
    assert result.duration_s < limits.wall_s + 5


def test_memory_bomb(box):
    result = _run(
        box,
        """
        hog = []
        while True:
            hog.append(bytearray(64 << 20))
        """,
    )
    assert result.status == "failed", result
    assert "MemoryError" in result.stderr


def test_infinite_loop_hits_the_cpu_limit(box):
    result = _run(box, "while True:\n    pass\n", limits=dataclasses.replace(LIMITS, cpu_s=1))
    assert result.status == "killed", result
    assert "CPU" in result.reason


def test_sleeping_past_the_wall_clock_limit(box):
    limits = dataclasses.replace(LIMITS, wall_s=1.0)
    result = _run(box, "import time\ntime.sleep(60)\n", limits=limits)
    assert result.status == "timed_out", result
    assert result.duration_s < limits.wall_s + 3


def test_detached_child_is_killed_when_the_program_ends(box):
    _require(box, "kill_all_processes")
    result = _run(
        box,
        """
        import os, time
        if os.fork() == 0:
            os.setsid()
            time.sleep(60)
        print("parent leaves")
        """,
    )
    assert result.passed, result


def test_disk_fill_is_capped(box):
    _require(box, "private_tmpfs")
    result = _run(
        box,
        """
        import errno
        written = 0
        for i in range(1000):
            try:
                with open(f"fill{i}", "wb") as f:
                    for _ in range(16):
                        f.write(b"x" * (1 << 20))
                        written += 1 << 20
            except OSError as e:
                print(errno.errorcode[e.errno], written)
                if e.errno == 28:
                    break
        """,
    )
    assert result.passed, result
    lines = result.stdout.split("\n")
    assert lines[0].startswith("EFBIG")  # one file beyond RLIMIT_FSIZE
    code, written = result.stdout.strip().splitlines()[-1].split()
    assert code == "ENOSPC" and int(written) <= LIMITS.tmpfs_bytes


def test_socket_connect_is_blocked(box):
    _require(box, "network_namespace")
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = _run(
            box,
            f"""
            import socket
            for address in [("127.0.0.1", {port}), ("1.1.1.1", 53)]:
                try:
                    socket.create_connection(address, timeout=1).sendall(b"exfiltrate")
                    print("connected", address)
                except OSError as e:
                    print("blocked", type(e).__name__)
            """,
        )
        # A completed TCP handshake waits in the backlog even without accept().
        server.setblocking(False)
        with pytest.raises(BlockingIOError):
            server.accept()
    assert result.passed, result
    assert result.stdout.splitlines() == ["blocked OSError"] * 2


def test_writing_and_deleting_outside_the_temp_dir(box, planted):
    _require(box, "read_only_filesystem")
    result = _run(
        box,
        f"""
        import os, shutil
        victim = {str(planted)!r}
        attempts = [
            lambda: open(victim, "w").write("pwned"),
            lambda: os.remove(victim),
            lambda: os.rename(victim, victim + ".moved"),
            lambda: open(os.path.join(os.path.dirname(victim), "new"), "w"),
            lambda: shutil.rmtree(os.path.dirname(victim)),
            lambda: open("/tmp/sandbox-escape", "w"),
        ]
        for attempt in attempts:
            try:
                attempt()
                print("succeeded")
            except OSError as e:
                print("refused", e.errno)
        """,
    )
    assert result.passed, result
    assert "succeeded" not in result.stdout
    _assert_untouched(planted)
    assert not Path("/tmp/sandbox-escape").exists()


@pytest.fixture
def secret_home(monkeypatch):
    """A harness $HOME readable by anyone, so only hiding it protects the secret inside."""
    home = Path(tempfile.mkdtemp(prefix="sandbox-home-"))
    home.chmod(0o755)
    (home / "secret").write_text("s3cr3t-token")
    (home / "secret").chmod(0o644)
    monkeypatch.setenv("HOME", str(home))
    yield home / "secret"
    (home / "secret").unlink()
    home.rmdir()


def test_secret_in_the_harness_home_is_unreadable(box, secret_home):
    _require(box, "hidden_home")
    result = _run(
        box,
        f"""
        import os
        for path in [{str(secret_home)!r}, os.path.expanduser("~/secret")]:
            try:
                print(open(path).read())
            except OSError as e:
                print("refused", type(e).__name__)
        """,
    )
    assert result.passed, result
    assert "s3cr3t" not in result.stdout + result.stderr


def test_a_user_namespace_cannot_uncover_the_hidden_home(box, secret_home):
    _require(box, "hidden_home", "unprivileged_uid")
    result = _run(
        box,
        f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        # Root of a new user namespace may unmount in its own mount namespace, except mounts
        # inherited as one locked unit from the more privileged one.
        print("unshare", libc.unshare(0x10000000 | 0x00020000))
        print("umount", libc.umount2({str(secret_home.parent).encode()!r}, 2))
        try:
            print(open({str(secret_home)!r}).read())
        except OSError as e:
            print("refused", type(e).__name__)
        """,
    )
    assert result.passed, result
    assert "s3cr3t" not in result.stdout + result.stderr
    assert "umount -1" in result.stdout


def test_killing_the_parent(box):
    result = _run(
        box,
        f"""
        import os, signal
        for pid in [os.getppid(), 1, {os.getpid()}, -1, 0]:
            try:
                os.kill(pid, signal.SIGKILL)
                print("sent", pid, flush=True)
            except OSError as e:
                print("refused", pid, type(e).__name__, flush=True)
        """,
    )
    # Reaching this line means the test process survived. kill(0) (its own process group)
    # ends the program itself.
    assert result.stdout.splitlines()[:3] == [
        "refused 1 PermissionError",
        "refused 1 PermissionError",
        f"refused {os.getpid()} "
        + (
            "ProcessLookupError"
            if box.protections["pid_namespace"] == sandbox.ACTIVE
            else "PermissionError"
        ),
    ]
    assert result.status == "killed" and result.reason == "SIGKILL", result


def test_ctypes_cannot_regain_privileges(box, planted):
    _require(box, "unprivileged_uid", "read_only_filesystem")
    result = _run(
        box,
        f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        print("setuid", libc.setuid(0), "setresuid", libc.setresuid(0, 0, 0))
        # A new user namespace gives capabilities there, but not over the inherited mounts.
        print("unshare", libc.unshare(0x10000000 | 0x00020000))
        print("remount", libc.mount(None, b"/", None, 0x20 | 0x1000, None))
        fd = libc.open({str(planted).encode()!r}, os.O_WRONLY | os.O_TRUNC)
        print("open", fd, "unlink", libc.unlink({str(planted).encode()!r}))
        """,
    )
    assert result.passed, result
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert lines["setuid"] == "-1 setresuid -1"
    assert lines["remount"] == "-1"
    assert lines["open"] == "-1 unlink -1"
    _assert_untouched(planted)


def test_reloading_os_undoes_nothing(box, planted):
    _require(box, "read_only_filesystem")
    result = _run(
        box,
        f"""
        import importlib, os
        os.remove = os.unlink = None  # what a Python-level guard would do
        os = importlib.reload(os)
        try:
            os.remove({str(planted)!r})
        except OSError as e:
            print("refused", type(e).__name__)
        """,
    )
    assert result.passed and "refused" in result.stdout, result
    _assert_untouched(planted)


def test_exit_zero_before_the_asserts_fails(box):
    result = _run(
        box,
        f"""
        import sys
        sys.exit(0)
        assert False
        print({MARKER!r})
        """,
        success_marker=MARKER,
    )
    assert result.status == "failed" and result.returncode == 0
    assert "pass marker" in result.reason


def test_huge_stdout_is_truncated(box):
    result = _run(
        box,
        f"""
        import sys
        for _ in range(800):
            sys.stdout.write("x" * 65536)
        print()
        print({MARKER!r})
        """,
        success_marker=MARKER,
    )
    assert result.passed, result
    assert len(result.stdout) < LIMITS.output_bytes + 100
    assert "bytes truncated" in result.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/python3").exists(),
    reason="needs root and a system python3 the sandbox uid can run without a mount namespace",
)
def test_without_namespaces_the_gaps_are_reported_and_the_uid_sweep_kills(monkeypatch):
    unavailable = {n: "unavailable: disabled by the test" for n in sandbox._NAMESPACE_FLAGS}
    monkeypatch.setattr(sandbox.Sandbox, "_probe_namespaces", lambda self: unavailable)
    box = sandbox.Sandbox(LIMITS, python="/usr/bin/python3")
    for name in ("mount_namespace", "read_only_filesystem", "hidden_home", "private_tmpfs"):
        assert box.protections[name].startswith("unavailable: "), name
    assert box.protections["unprivileged_uid"] == sandbox.ACTIVE
    # Without a PID namespace a detached child outlives the program: the sweep must get it.
    result = box.run("import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n")
    assert result.passed and result.leftover_killed == 1, result
    assert processes.pids_of_uid(result.uid) == []


def test_capped_keeps_head_and_tail():
    capped = capture.Capped(8)
    for chunk in [b"ab", b"cdefgh", b"ijkl"]:
        capped.add(chunk)
    assert capped.text() == "abcd\n...[4 bytes truncated]...\nijkl"
    small = capture.Capped(8)
    small.add(b"abc")
    assert small.text() == "abc"
