"""The suite's own machinery: `--dist loadgroup` keeps an xdist_group on one worker; a session
directory is built once however many workers ask for it at once."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

PROBE = """
import os
import pathlib

import pytest

OUT = pathlib.Path(__file__).parent


def record(name):
    (OUT / f"{name}.worker").write_text(os.environ.get("PYTEST_XDIST_WORKER", "none"))


@pytest.mark.xdist_group("together")
def test_grouped_first():
    record("grouped_first")


@pytest.mark.xdist_group("together")
def test_grouped_second():
    record("grouped_second")


def test_alone_first():
    record("alone_first")


def test_alone_second():
    record("alone_second")
"""


def test_an_xdist_group_runs_on_one_worker(tmp_path):
    """Two grouped tests first in line: plain load balancing would give each worker one."""
    (tmp_path / "test_probe.py").write_text(textwrap.dedent(PROBE))
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "tests.conftest",  # the suite's hooks, loaded as a plugin by the probe's session
        "-p",
        "no:cacheprovider",
        "-n",
        "2",
        "--dist",
        "loadgroup",
        "-q",
        f"--rootdir={tmp_path}",
        str(tmp_path / "test_probe.py"),
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # a new session
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    workers = {path.stem: path.read_text() for path in tmp_path.glob("*.worker")}
    assert len(workers) == 4, workers
    assert workers["grouped_first"] == workers["grouped_second"] != "none"


BUILDER = """
import pathlib, sys, time
from tests.conftest import session_directory

root = pathlib.Path(sys.argv[1])

def build(path):
    with open(root / "builds.txt", "a") as f:
        f.write("built\\n")
    time.sleep(1.0)  # long enough for the other process to ask meanwhile
    (path / "data.txt").write_text("ready")

print((session_directory(root, "shared", build) / "data.txt").read_text())
"""


def test_concurrent_requests_for_a_session_directory_build_it_once(tmp_path):
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", BUILDER, str(tmp_path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0, 0], outputs
    assert [out.strip() for out, _ in outputs] == ["ready"] * 3
    assert (tmp_path / "builds.txt").read_text() == "built\n"


def test_a_failed_build_is_redone_by_the_next_request(tmp_path):
    from tests.conftest import session_directory

    def failing(path):
        (path / "partial.txt").write_text("half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        session_directory(tmp_path, "shared", failing)
    done = session_directory(tmp_path, "shared", lambda path: (path / "data.txt").write_text("ok"))
    assert sorted(p.name for p in done.iterdir()) == ["data.txt"]
