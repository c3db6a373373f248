"""The suite's own machinery: `--dist loadgroup` keeps an xdist_group on one worker."""

import pathlib
import subprocess
import sys
import textwrap

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
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    workers = {path.stem: path.read_text() for path in tmp_path.glob("*.worker")}
    assert len(workers) == 4, workers
    assert workers["grouped_first"] == workers["grouped_second"] != "none"
