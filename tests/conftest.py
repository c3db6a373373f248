"""Test environment: 8 fake CPU devices, fp32, quiet TensorFlow; set before jax is imported.

XLA compiles without LLVM's optimisations (the processes the tests start inherit it): the
tests' programs are tiny, so compiling is most of their time, and unoptimised machine code
halves it (tests/model: 89 s -> 45 s) while running them no slower. Every comparison the
tests make is between programs compiled the same way, or within a tolerance.

Also the collection hook that makes ``--dist loadgroup`` keep an ``xdist_group`` on one worker,
and the session's shared fixtures: the embedded corpus, built once for all xdist workers, and
one persistent compilation cache for every process the tests start.
"""

import contextlib
import fcntl
import functools
import os
import pathlib
import shutil

import pytest

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count=8"
for flag in ("--xla_backend_optimization_level=0", DEVICE_COUNT_FLAG):
    if flag not in os.environ.get("XLA_FLAGS", ""):  # xdist workers inherit them
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")


@pytest.hookimpl(trylast=True)  # after xdist's worker hook, which names each item's group
def pytest_collection_modifyitems(items):
    """Slow cases first: under xdist both workers start on them and short tests fill in.

    Under ``--dist loadgroup`` xdist appends ``@<group>`` to the node id of each item with an
    ``xdist_group`` mark, and its scheduler keeps items with one suffix on one worker.
    pytest-xdist 3.8 stores the new id in ``item._nodeid``, which pytest 9.2 no longer reads
    (a node's id lives in ``item._id``), so the suffix was lost and a group's tests were
    spread over the workers. Moving it into ``_id`` here restores the grouping; it changes
    nothing where xdist's assignment took effect, or without xdist.
    """
    for item in items:
        grouped = item.__dict__.get("_nodeid")
        if isinstance(grouped, str) and grouped != item.nodeid and hasattr(item, "_id"):
            item._id = type(item._id).parse(grouped)
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@contextlib.contextmanager
def _exclusive(lock_path):
    """Holds an exclusive lock on lock_path (other processes of the session wait)."""
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def session_root(tmp_path_factory) -> pathlib.Path:
    """The session's temporary directory: xdist workers' own directories sit in it."""
    root = tmp_path_factory.getbasetemp()
    return root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root


def session_directory(root: pathlib.Path, name: str, build) -> pathlib.Path:
    """root/name, filled by build(path) once: the first process to ask builds it under a lock
    while the others wait, then all read the finished directory.

    A build that failed part way (no root/name.done) is discarded and redone by the next.
    """
    path, done = root / name, root / f"{name}.done"
    with _exclusive(root / f"{name}.lock"):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            build(path)
            done.touch()
    return path


@pytest.fixture(scope="session")
def shared_directory(tmp_path_factory):
    """shared_directory(name, build): session_directory for a test module's costly fixture."""
    return functools.partial(session_directory, session_root(tmp_path_factory))


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> str:
    """A TFDS data_dir holding the embedded corpus (both configs), built once per session.

    Read-only for the tests: each reads the prepared dataset (subprocesses included), none
    builds its own copy.
    """

    def build(path):
        from codegen2_jax.data import corpus

        for config in ("python", "natural"):
            corpus.StdlibSource(config, data_dir=str(path)).builder()

    return str(session_directory(session_root(tmp_path_factory), "tfds", build))


@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
    """One persistent XLA compilation cache for every process the session starts.

    Set in the environment after this process's jax has read its own (test modules import it
    at collection), so only child processes use it: training runs, sweeps, the command lines.
    Most of them compile the tiny model's same programs, which are then compiled once per
    session; a cached executable is the same program, so no bits move. Every program is
    cached, however quick to compile, since a restarted run needs them all.
    """
    path = session_root(tmp_path_factory) / "compilation_cache"
    path.mkdir(exist_ok=True)
    cache_env = {
        "JAX_COMPILATION_CACHE_DIR": str(path),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in cache_env.items():
            patch.setenv(name, value)
        yield str(path)
