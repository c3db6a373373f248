"""What the command lines print: a quiet console by default, everything with --verbose.

Quiet: this project's INFO lines as `HH:MM:SS message`, and from everything else (absl,
orbax, seqio, TFDS, jax, TensorFlow, clu: their Python loggers) only warnings and errors,
which name their source. Native libraries read their log levels from the environment when
they load, so importing this module sets those variables when one of this project's commands
runs (not when a test or a notebook imports the package), unless the command line asks for
--verbose or they are already set: every entry module imports it before anything else.
--verbose: every library's INFO lines, in a long format, and the native banners.

Native libraries also print lines of their own that no variable silences (TensorFlow's CPU
build looking for CUDA at each load, absl's note on logging before its initialisation): a
quiet command sends its stderr through a small filter process that drops NATIVE_NOISE lines
and passes everything else on. A separate process, so a crash still gets its last lines out.

Library code logs through `logging.getLogger(__name__)`; entry points call configure().
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
from collections.abc import Sequence

PROJECT_LOGGERS = ("codegen2_jax", "tasks", "__main__")  # __main__: a module run with -m

# Set before the libraries load (they read them once). TensorFlow's C++ INFO, WARNING and
# ERROR lines: on a machine without a GPU these are "failed call to cuInit" and the like;
# TensorFlow's real errors reach Python as exceptions.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "3"}

# Library warnings about what this project does on purpose, left out of the quiet console:
# (module, message start). Sampling and export open checkpoints read-only.
EXPECTED_WARNINGS = (
    ("checkpoint_manager", "CheckpointManagerOptions.read_only=True"),
    ("checkpoint_manager", "Given directory is read only"),
)

# Native stderr lines left out of the quiet console (substrings).
NATIVE_NOISE = (
    "All log messages before absl::InitializeLog() is called are written to STDERR",
    "cudart_stub.cc",  # "Could not find cuda drivers on your machine, GPU will not be used."
    "cpu_feature_guard.cc",  # "This TensorFlow binary is optimized to use ..."
    "To enable the following instructions:",  # its second line
    "precompiled_charsmap is empty",  # TensorFlow Text's sentencepiece, at each pipeline
    "oneDNN custom operations are on",  # TensorFlow's note on float round-off, at import
)
_FILTER_PROGRAM = """
import sys
noise = [n.encode() for n in sys.argv[1:]]
for line in sys.stdin.buffer:
    if not any(n in line for n in noise):
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
"""
_FILTERED = "CODEGEN2_JAX_STDERR_FILTERED"  # set once installed: child commands share it

_QUIET_FORMAT = "%(asctime)s%(level)s %(message)s"
_VERBOSE_FORMAT = "%(levelname).1s%(asctime)s %(name)s %(filename)s:%(lineno)d] %(message)s"


def verbose_requested(argv: Sequence[str]) -> bool:
    """Whether a command line asks for --verbose (read before its flags are parsed)."""
    return any(a == "--verbose" or a.lower() in ("--verbose=true", "--verbose=1") for a in argv)


def command_running() -> bool:
    """Whether this process is one of the project's commands (python -m or a console script)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    module = getattr(spec, "name", None) or ""
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    return module.partition(".")[0] == "codegen2_jax" or script.startswith("codegen2-")


def is_project(logger_name: str) -> bool:
    return any(logger_name == p or logger_name.startswith(p + ".") for p in PROJECT_LOGGERS)


class _Stderr(logging.StreamHandler):
    """Writes to sys.stderr as it is at each line (a test harness may swap it)."""

    def __init__(self):
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        del value


def _unexpected(record: logging.LogRecord) -> bool:
    return not any(
        record.module == module and record.getMessage().startswith(start)
        for module, start in EXPECTED_WARNINGS
    )


class _QuietFormatter(logging.Formatter):
    """`HH:MM:SS message`; warnings and errors say so, and name a library's module."""

    def __init__(self):
        super().__init__(_QUIET_FORMAT, "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        level = ""
        if record.levelno >= logging.WARNING:
            level = f" {record.levelname}"
            if not is_project(record.name):
                # absl's logger carries orbax's, seqio's, TFDS's and clu's lines: their module
                # says more than its name.
                level += f" [{record.module if record.name == 'absl' else record.name}]"
        record.level = level
        return super().format(record)


def configure(verbose: bool = False) -> None:
    """Sets up the console for a command line; called again, replaces what it set up.

    Quiet: the project's loggers at INFO, everything else at WARNING (but EXPECTED_WARNINGS).
    Verbose: everything at INFO (or lower, if already lower), in a long format. The root
    logger's other handlers that print to stderr go: absl's (app.run adds it) and a plain one
    (an early logging.warning() adds it), as this handler prints their lines; others stay.
    """
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Stderr) or _is_absl_handler(handler) or _plain_stderr(handler):
            root.removeHandler(handler)
    handler = _Stderr()
    if verbose:
        handler.setFormatter(logging.Formatter(_VERBOSE_FORMAT, "%m%d %H:%M:%S"))
        root.setLevel(min(root.level or logging.INFO, logging.INFO))
    else:
        handler.setFormatter(_QuietFormatter())
        handler.addFilter(_unexpected)
        root.setLevel(logging.WARNING)
    root.addHandler(handler)
    level = logging.NOTSET if verbose else logging.INFO
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(level)
    logging.getLogger("absl").setLevel(logging.NOTSET)  # follows the root logger
    _set_sentencepiece_level(verbose)


def _is_absl_handler(handler: logging.Handler) -> bool:
    absl_logging = sys.modules.get("absl.logging")
    return absl_logging is not None and handler is absl_logging.get_absl_handler()


def _plain_stderr(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return type(handler) is logging.StreamHandler and stream in (sys.stderr, sys.__stderr__)


def _set_sentencepiece_level(verbose: bool) -> None:
    # Its C++ INFO lines ("precompiled_charsmap is empty ...") print whenever a model loads.
    try:
        import sentencepiece
    except ImportError:
        return
    sentencepiece.set_min_log_level(0 if verbose else 1)


def filter_native_stderr() -> None:
    """Sends this process's stderr (file descriptor 2) through the NATIVE_NOISE filter."""
    if os.environ.get(_FILTERED):
        return
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    stderr = os.dup(2)
    process = subprocess.Popen(
        [sys.executable, "-c", _FILTER_PROGRAM, *NATIVE_NOISE],
        stdin=read_end,
        stdout=stderr,
        stderr=stderr,
    )
    os.dup2(write_end, 2)
    for fd in (read_end, write_end, stderr):
        os.close(fd)
    os.environ[_FILTERED] = "1"

    def drain():
        # The filter ends at end of input; wait so its last lines print before the shell's.
        sys.stderr.flush()
        os.close(2)
        process.wait(timeout=10)

    atexit.register(drain)


if command_running() and not verbose_requested(sys.argv[1:]):
    for _name, _value in QUIET_ENVIRONMENT.items():
        os.environ.setdefault(_name, _value)
    filter_native_stderr()
