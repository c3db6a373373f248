"""An orbax checkpoint item holding one opaque byte string per process, each digest-checked.

The data pipeline's position differs between hosts (each reads its own shard) and can be tens
of megabytes, so it is neither a replicated array nor JSON: every process writes its own
process_<i>-of-<n>.bin beside a SHA-256 sidecar, in orbax's background commit, and reads back
only its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import NamedTuple

import jax
import orbax.checkpoint as ocp
from etils import epath


class ProcessCountError(ValueError):
    """The item was saved by a different number of processes than are restoring it."""


@dataclasses.dataclass
class ProcessBlobSave(ocp.args.CheckpointArgs):
    """Save args: this process's byte string."""

    blob: bytes


@dataclasses.dataclass
class ProcessBlobRestore(ocp.args.CheckpointArgs):
    """Restore args: returns this process's byte string as a BlobRead."""


class BlobRead(NamedTuple):
    """A restored byte string, or None and the reason it is unusable."""

    blob: bytes | None
    problem: str | None


_NAME = re.compile(r"process_\d+-of-(\d+)\.bin")


def _paths(directory: epath.Path) -> tuple[epath.Path, epath.Path]:
    name = f"process_{jax.process_index()}-of-{jax.process_count()}"
    return directory / f"{name}.bin", directory / f"{name}.sha256"


class ProcessBlobHandler(ocp.handlers.AsyncCheckpointHandler):
    """Writes and reads ProcessBlobSave / ProcessBlobRestore items (register both with it)."""

    def _write(self, directory: epath.Path, blob: bytes) -> None:
        data_path, digest_path = _paths(directory)
        data_path.write_bytes(blob)
        digest_path.write_text(hashlib.sha256(blob).hexdigest())

    async def _write_async(self, directory: epath.Path, blob: bytes) -> None:
        self._write(directory, blob)

    async def async_save(self, directory: epath.Path, args: ProcessBlobSave):
        """Returns the commit future, which writes once orbax has created the directory."""
        write = self._write_async(directory, bytes(args.blob))
        return [ocp.future.CommitFutureAwaitingContractedSignals(write, name="process_blob")]

    def save(self, directory: epath.Path, args: ProcessBlobSave) -> None:
        """Writes synchronously."""
        self._write(directory, bytes(args.blob))

    def restore(self, directory: epath.Path, args: ProcessBlobRestore | None = None) -> BlobRead:
        """This process's byte string, or why it cannot be used.

        Damage is reported, not raised: orbax ends each restore with a collective barrier,
        and a process that raised alone would leave the others waiting at it.

        Raises:
          ProcessCountError: saved by a different number of processes (every process sees it).
        """
        counts = {int(m[1]) for p in directory.iterdir() if (m := _NAME.fullmatch(p.name))}
        if counts and counts != {jax.process_count()}:
            raise ProcessCountError(
                f"{directory} was saved by a {'/'.join(map(str, sorted(counts)))}-process run; "
                f"this run has {jax.process_count()}"
            )
        data_path, digest_path = _paths(directory)
        try:
            blob, digest = data_path.read_bytes(), digest_path.read_text().strip()
        except OSError as e:
            return BlobRead(None, f"{data_path.name}: {type(e).__name__}: {e}")
        if hashlib.sha256(blob).hexdigest() != digest:
            return BlobRead(None, f"{data_path.name} does not match its SHA-256 digest")
        return BlobRead(blob, None)
