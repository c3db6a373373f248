"""An orbax checkpoint item holding one opaque byte string per process, each digest-checked.

The data pipeline's position differs between hosts (each reads its own shard) and can be tens
of megabytes, so it is neither a replicated array nor JSON: every process writes its own
process_<i>-of-<n>.bin beside a SHA-256 sidecar, in orbax's background commit, and reads back
only its own.
"""

from __future__ import annotations

import dataclasses
import hashlib

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
    """Restore args: returns this process's byte string."""


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

    def restore(self, directory: epath.Path, args: ProcessBlobRestore | None = None) -> bytes:
        """This process's byte string.

        Raises:
          ProcessCountError: it was saved by a different number of processes.
          ValueError: its bytes do not match their digest.
        """
        data_path, digest_path = _paths(directory)
        if not data_path.exists():
            saved = sorted(path.name for path in directory.glob("process_*.bin"))
            if saved:
                raise ProcessCountError(
                    f"{directory} was saved by other processes ({', '.join(saved)}); "
                    f"this is {data_path.stem}"
                )
        blob = data_path.read_bytes()
        if hashlib.sha256(blob).hexdigest() != digest_path.read_text().strip():
            raise ValueError(f"{data_path} does not match its SHA-256 digest")
        return blob
