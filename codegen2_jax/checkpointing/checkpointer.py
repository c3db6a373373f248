"""Training checkpoints: orbax CheckpointManager steps holding state, data position and gin config.

Each step directory holds three orbax items, committed together:

  state          the TrainState (StandardSave; saved asynchronously: arrays are copied off
                 the devices before save() returns and written by a background thread).
  data_position  each process's data pipeline position, an opaque blob (process_blobs.py).
  manifest       JSON: the operative gin config, the run record (what the run trained: its
                 model config, objective, tasks and tokenizer, as data; trained_model.py
                 reads it) and a fingerprint of every array (checksums.py), sealed by a
                 digest of the manifest itself.

The fingerprints are computed on the arrays' devices: save() only dispatches them, and the
manifest is written in the background commit once they arrive (so is a refusal of a
non-finite state). Orbax commits a step, its marker and rename, only after every item is
written, so a committed step always holds the fingerprints of its arrays.

restore_latest walks the steps newest first and returns the first one that is committed,
readable and matches its fingerprints; restore_latest_params does the same for the parameters
alone (samplers and evaluators never read the optimizer state, two thirds of an AdamW state).
A step that is not is moved to <directory>/set_aside/ with a logged error, never deleted
(empty that directory by hand once inspected), and the previous one is tried. A restore target
whose parameter set, shapes or dtypes differ from the checkpoint is the caller's error and
raises.

Retention is orbax's LatestN. Orbax removes old steps in the save's finalisation, after the
new step's commit succeeded; a failed commit raises there first, so a failed save never costs
an older checkpoint.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import hashlib
import json
import logging
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from codegen2_jax.checkpointing import checksums, process_blobs

logger = logging.getLogger(__name__)

STATE, DATA_POSITION, MANIFEST = "state", "data_position", "manifest"
PARAMS = "params"  # TrainState's field: restore_latest_params reads only this subtree
SET_ASIDE_DIR = "set_aside"
FORMAT_VERSION = 3
# What each manifest format's array records hold: 3 and 2, digests computed on device; 1,
# SHA-256 computed on the host (steps saved before format 2, still restored and verified).
# Format 3 added the run record; older steps have none (run_record returns None).
_FINGERPRINTS = {
    3: checksums.fingerprint,
    2: checksums.fingerprint,
    1: checksums.sha256_fingerprint,
}
MANIFEST_FILE = "metadata"


class CheckpointError(Exception):
    """Base class of the errors this module raises."""


class CheckpointMismatchError(CheckpointError):
    """The restore target's parameter set, shapes or dtypes differ from the checkpoint's."""


class CheckpointSaveError(CheckpointError):
    """An asynchronous save failed; the step was not committed."""


class NonFiniteStateError(CheckpointError, ValueError):
    """The state to save holds NaN or infinite values."""


class _UnusableStep(Exception):
    """A step directory that is half-written, unreadable or fails verification."""


class RestoredCheckpoint(NamedTuple):
    """What restore_latest returns (restore_latest_params: the params as state, no position).

    run is the step's run record (None: saved before format 3, or saved without one).
    """

    state: Any
    data_position: bytes | None
    gin_config: str
    step: int
    run: dict[str, Any] | None


def _digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def _unseal(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest without its seal; raises _UnusableStep when the seal does not match."""
    body = {key: value for key, value in manifest.items() if key != "sha256"}
    if manifest.get("sha256") != _digest(body):
        raise _UnusableStep("manifest digest mismatch")
    if body.get("format_version") not in _FINGERPRINTS:
        raise _UnusableStep(
            f"manifest format {body.get('format_version')}, want one of {sorted(_FINGERPRINTS)}"
        )
    return body


@dataclasses.dataclass
class _ManifestSave(ocp.args.CheckpointArgs):
    """Save args: a call returning the manifest, made in the background commit."""

    build: Callable[[], dict[str, Any]]


class _ManifestHandler(ocp.handlers.JsonCheckpointHandler):
    """Writes the manifest that args.build() returns, in the commit; reads it back as JSON.

    Every process calls build(), so a refusal fails every process's commit alike; the primary
    process alone writes, as JsonCheckpointHandler does.
    """

    def __init__(self):
        super().__init__(filename=MANIFEST_FILE)

    def _write(self, directory: epath.Path, build: Callable[[], dict[str, Any]]) -> None:
        manifest = build()
        if ocp.multihost.is_primary_host(0):
            (directory / MANIFEST_FILE).write_text(json.dumps(manifest))

    async def _write_async(self, directory: epath.Path, build) -> None:
        self._write(directory, build)

    async def async_save(self, directory: epath.Path, args: _ManifestSave):
        """Returns the commit future, which writes once orbax has created the directory."""
        write = self._write_async(directory, args.build)
        return [ocp.future.CommitFutureAwaitingContractedSignals(write, name="manifest")]

    def save(self, directory: epath.Path, args: _ManifestSave) -> None:
        """Writes synchronously."""
        self._write(directory, args.build)


def _handler_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Which orbax handler saves and restores each item (explicit: nothing registered globally)."""
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    items = {
        STATE: (
            ocp.handlers.StandardCheckpointHandler(),
            ocp.args.StandardSave,
            ocp.args.StandardRestore,
        ),
        DATA_POSITION: (
            process_blobs.ProcessBlobHandler(),
            process_blobs.ProcessBlobSave,
            process_blobs.ProcessBlobRestore,
        ),
        MANIFEST: (_ManifestHandler(), _ManifestSave, ocp.args.JsonRestore),
    }
    for name, (handler, save_args, restore_args) in items.items():
        registry.add(name, save_args, handler)
        registry.add(name, restore_args, handler)
    # Reading part of the state (partial_restore) needs the PyTree handler's arguments; it
    # reads what the StandardCheckpointHandler wrote.
    registry.add(STATE, ocp.args.PyTreeRestore, ocp.handlers.PyTreeCheckpointHandler())
    return registry


def _utc_stamp() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")


class Checkpointer:
    """Saves and restores training checkpoints in one directory (every process calls alike).

    Args:
      directory: local path or gs:// URL; created if missing.
      max_to_keep: committed steps to keep; older ones are removed after a newer one commits.
      async_save: write arrays in a background thread (orbax's async checkpointing).
      read_only: for readers beside a running job (samplers, evaluators): never save, move or
        delete anything; unusable steps are skipped with a logged error and temporary
        directories (perhaps a save in flight) are left alone.
    """

    def __init__(
        self,
        directory: epath.PathLike,
        *,
        max_to_keep: int = 3,
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.directory = epath.Path(directory)
        if "://" not in str(directory):
            self.directory = self.directory.absolute()  # orbax refuses relative paths
        self.read_only = read_only
        self._async_save = async_save
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(n=max_to_keep),
            enable_async_checkpointing=async_save,
            read_only=read_only,
            # Half-written steps are set aside loudly by restore_latest, not deleted silently.
            cleanup_tmp_directories=False,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, handler_registry=_handler_registry()
        )
        self._pending_step: int | None = None

    def all_steps(self) -> list[int]:
        """Committed steps, oldest first."""
        return sorted(self._manager.all_steps())

    def save(
        self,
        step: int,
        state,
        data_position: bytes,
        gin_config: str,
        run: dict[str, Any] | None = None,
    ) -> bool:
        """Starts saving `state` as `step`; fingerprints and writes finish in the background.

        Args:
          step: the step number (the directory name).
          state: TrainState (or any pytree of jax.Arrays) to save.
          data_position: this process's data pipeline position, returned unchanged to the
            same process by restore_latest.
          gin_config: the operative gin config text.
          run: the run record, any JSON-ready dict (trained_model.RunRecord.to_json()).

        Returns:
          False (nothing written) when `step` is not newer than the latest committed step,
          e.g. a preemption save right after a periodic one; else True.

        Raises:
          CheckpointSaveError: the previous asynchronous save failed, e.g. from a
            NonFiniteStateError naming the leaves that hold a NaN or an infinity (which a
            synchronous save raises itself).
        """
        if self.read_only:
            raise CheckpointError(f"{self.directory} was opened read-only")
        self.wait_until_finished()
        if self._is_stale(step):
            return False
        fingerprints = concurrent.futures.Future()
        dispatch = functools.partial(_fulfil, fingerprints, checksums.PendingFingerprints, state)
        items = {
            STATE: ocp.args.StandardSave(state),
            DATA_POSITION: process_blobs.ProcessBlobSave(data_position),
            MANIFEST: _ManifestSave(
                functools.partial(_manifest, step, fingerprints, gin_config, run)
            ),
        }
        # An asynchronous save dispatches the digests after orbax's save, whose copy of the
        # arrays to the host they would slow where the devices are the host's own cores; a
        # synchronous one writes the manifest within orbax's save, so needs them before.
        if not self._async_save:
            dispatch()
        self._pending_step = step
        try:
            return self._manager.save(step, args=ocp.args.Composite(**items))
        finally:
            if self._async_save:
                dispatch()

    def _is_stale(self, step: int) -> bool:
        """True, with a warning, when `step` is not newer than the latest committed step."""
        latest = self._manager.latest_step()
        if latest is None or step > latest:
            return False
        logger.warning("not saving step %d: %s already holds step %d", step, self.directory, latest)
        return True

    def wait_until_finished(self) -> None:
        """Blocks until the pending save has committed.

        Raises:
          CheckpointSaveError: it failed (raised once; older checkpoints are untouched).
        """
        step, self._pending_step = self._pending_step, None
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise CheckpointSaveError(
                f"saving checkpoint step {step} in {self.directory} failed ({e}); "
                "it was not committed"
            ) from e

    def close(self) -> None:
        """Waits for the pending save (raising if it failed) and releases orbax's resources."""
        try:
            self.wait_until_finished()
        finally:
            self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def restore_latest(self, abstract_state, shardings) -> RestoredCheckpoint | None:
        """Restores the newest valid step, setting aside newer ones that are not.

        Args:
          abstract_state: pytree of ShapeDtypeStructs (train_state.state_shardings()[0]).
          shardings: matching pytree of shardings to place the restored arrays with.

        Returns:
          (state, data_position, gin_config, step), or None when no valid step exists.

        Raises:
          CheckpointMismatchError: the newest valid-looking step's parameter set, shapes or
            dtypes differ from abstract_state; every difference is named.
        """
        target = _placed(abstract_state, shardings)
        return self._restore_newest(functools.partial(self._restore_step, target=target))

    def restore_latest_params(self, abstract_params, shardings) -> RestoredCheckpoint | None:
        """The parameters alone of the newest valid step; the rest of the state is never read.

        Args:
          abstract_params: pytree of ShapeDtypeStructs of TrainState.params.
          shardings: matching pytree of shardings to place the restored arrays with.

        Returns:
          (params, None, gin_config, step), or None when no valid step exists. Steps are
          verified and set aside as restore_latest does, judged on the parameters only.

        Raises:
          CheckpointMismatchError: as restore_latest, for the parameters.
        """
        target = _placed(abstract_params, shardings)
        return self._restore_newest(functools.partial(self._restore_params, target=target))

    def restore_params(self, step: int, abstract_params, shardings) -> RestoredCheckpoint:
        """The parameters alone of one given step (exporters pick a step), verified.

        Raises:
          CheckpointError: the step is not committed here, or is unusable (why is named).
          CheckpointMismatchError: as restore_latest, for the parameters.
        """
        self._require_committed(step)
        target = _placed(abstract_params, shardings)
        try:
            return self._restore_params(step, target)
        except _UnusableStep as e:
            raise CheckpointError(f"checkpoint step {step} in {self.directory}: {e}") from e

    def gin_config(self, step: int) -> str:
        """The gin config that one given step was trained with (no arrays are read)."""
        return self._manifest_of(step)["gin_config"]

    def run_record(self, step: int) -> dict[str, Any] | None:
        """The run record of one given step (None: it has none); no arrays are read."""
        return self._manifest_of(step).get("run")

    def _manifest_of(self, step: int) -> dict[str, Any]:
        self._require_committed(step)
        try:
            return _agreed(functools.partial(self._read_manifest, step))
        except _UnusableStep as e:
            raise CheckpointError(f"checkpoint step {step} in {self.directory}: {e}") from e

    def _require_committed(self, step: int) -> None:
        if step not in self.all_steps():
            raise CheckpointError(
                f"no committed step {step} in {self.directory}; committed steps: "
                f"{self.all_steps() or 'none'}"
            )

    def _restore_newest(
        self, restore: Callable[[int], RestoredCheckpoint]
    ) -> RestoredCheckpoint | None:
        """restore(step) of the newest step it succeeds on, setting aside the ones it fails on."""
        self.wait_until_finished()
        if not self.read_only:
            self._set_aside_uncommitted()
        for step in reversed(self.all_steps()):
            try:
                return restore(step)
            except _UnusableStep as e:
                self._discard(self.directory / str(step), str(e))
        return None

    def latest_intact_step(self) -> int | None:
        """The newest step whose manifest is intact (no arrays are read), or None."""
        for step in reversed(self.all_steps()):
            try:
                _agreed(functools.partial(self._read_manifest, step))
                return step
            except _UnusableStep as e:
                logger.error("checkpoint step %d in %s: %s", step, self.directory, e)
        return None

    def _restore_step(self, step: int, target) -> RestoredCheckpoint:
        manifest = _agreed(lambda: self._read_manifest(step))
        args = ocp.args.StandardRestore(target)
        state = self._read_verified(
            step, manifest["format_version"], manifest["arrays"], target, args
        )
        data_position = _agreed(lambda: self._read_data_position(step))
        logger.info("restored checkpoint step %d from %s", step, self.directory)
        return RestoredCheckpoint(
            state, data_position, manifest["gin_config"], step, manifest.get("run")
        )

    def _restore_params(self, step: int, target) -> RestoredCheckpoint:
        manifest = _agreed(lambda: self._read_manifest(step))
        wanted = {PARAMS: target}
        saved = {k: v for k, v in manifest["arrays"].items() if k.startswith(f"{PARAMS}/")}
        args = ocp.args.PyTreeRestore(
            item=wanted,
            restore_args=ocp.checkpoint_utils.construct_restore_args(wanted),
            partial_restore=True,
        )
        part = self._read_verified(step, manifest["format_version"], saved, wanted, args)
        logger.info("restored the parameters of step %d from %s", step, self.directory)
        return RestoredCheckpoint(
            part[PARAMS], None, manifest["gin_config"], step, manifest.get("run")
        )

    def _read_verified(self, step: int, format_version: int, saved, target, args):
        """The state item (or the part `target` names), checked against its saved fingerprints."""
        if problems := checksums.layout_mismatches(saved, target):
            raise CheckpointMismatchError(
                f"checkpoint step {step} in {self.directory} does not fit the restore target:\n  "
                + "\n  ".join(problems)
            )
        state = _agreed(lambda: self._read(step, STATE, args))
        _verify(_FINGERPRINTS[format_version], saved, state)
        return state

    def _read_manifest(self, step: int) -> dict[str, Any]:
        if not (self.directory / str(step) / ocp.path.atomicity_types.COMMIT_SUCCESS_FILE).exists():
            raise _UnusableStep("half-written: no commit marker")
        manifest = _unseal(self._read(step, MANIFEST, ocp.args.JsonRestore()))
        if manifest["step"] != step:
            raise _UnusableStep(f"the manifest belongs to step {manifest['step']}")
        return manifest

    def _read_data_position(self, step: int) -> bytes:
        blob, problem = self._read(step, DATA_POSITION, process_blobs.ProcessBlobRestore())
        if problem is not None:
            raise _UnusableStep(f"unusable data position: {problem}")
        return blob

    def _read(self, step: int, name: str, args: ocp.args.CheckpointArgs):
        """One item of a step; any failure to read it makes the step unusable."""
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
        except process_blobs.ProcessCountError as e:
            raise CheckpointMismatchError(f"checkpoint step {step}: {e}") from e
        except Exception as e:  # orbax and TensorStore raise many types for damaged files
            raise _UnusableStep(f"unreadable {name}: {type(e).__name__}: {e}") from e

    def _set_aside_uncommitted(self) -> None:
        """Moves aside temporary directories that a crashed or failed save left behind."""
        leftovers = [
            path
            for path in self.directory.iterdir()
            if path.name != SET_ASIDE_DIR
            and path.is_dir()
            and ocp.path.step.is_path_temporary(path)
        ]
        # Every process must have listed before the first one renames anything.
        ocp.multihost.sync_global_processes("codegen2_jax.checkpointing.checkpointer:listed")
        for path in leftovers:
            self._discard(path, "half-written: the save never committed")

    def _discard(self, path: epath.Path, reason: str) -> None:
        """Logs why a step is unusable and moves it aside (read-only: only logs)."""
        set_aside = self.directory / SET_ASIDE_DIR
        if self.read_only:
            logger.error("checkpoint %s is unusable (%s); skipping it", path, reason)
            return
        logger.error("checkpoint %s is unusable (%s); moving it into %s", path, reason, set_aside)
        if jax.process_index() == 0:  # one process moves it; the barrier holds the others
            set_aside.mkdir(parents=True, exist_ok=True)
            destination = set_aside / f"{path.name}.{_utc_stamp()}"
            path.rename(destination)
            logger.info("moved %s to %s", path, destination)
        ocp.multihost.sync_global_processes(
            f"codegen2_jax.checkpointing.checkpointer:set_aside:{path.name}"
        )
        self._manager.reload()


def _agreed(read: Callable[[], Any]) -> Any:
    """read(), failing on every process when it fails on any.

    Keeps the processes on the same step, and their later collectives aligned, when damage
    shows on one process only, as in its own data position file. (An exception inside orbax's
    array restore on one process alone cannot be agreed on here: the others then block at
    orbax's own end-of-restore barrier.)
    """
    try:
        value, problem = read(), None
    except _UnusableStep as e:
        value, problem = None, e
    if jax.process_count() > 1:
        failed = multihost_utils.process_allgather(np.array(problem is not None))
        if problem is None and failed.any():
            problem = _UnusableStep("unreadable on another process")
    if problem is not None:
        raise problem
    return value


def _placed(abstract, shardings):
    """ShapeDtypeStructs carrying the shardings to restore onto."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


def _fulfil(future: concurrent.futures.Future, make: Callable, *args) -> None:
    """Sets future to make(*args), or to its exception, which is raised here as well."""
    try:
        future.set_result(make(*args))
    except BaseException as e:  # the background commit waits on future: never leave it unset
        future.set_exception(e)
        raise


def _manifest(
    step: int,
    fingerprints: concurrent.futures.Future,
    gin_config: str,
    run: dict[str, Any] | None,
) -> dict:
    """The sealed manifest; waits for the fingerprints (in the background commit)."""
    records, non_finite = fingerprints.result().result()  # the dispatched work, then its result
    if non_finite:
        raise NonFiniteStateError(f"refusing to checkpoint step {step}: non-finite {non_finite}")
    body = {
        "format_version": FORMAT_VERSION,
        "step": step,
        "gin_config": gin_config,
        "run": run,
        "arrays": records,
    }
    return {**body, "sha256": _digest(body)}


def _verify(fingerprint: Callable, saved: dict[str, checksums.Fingerprint], state) -> None:
    """Raises _UnusableStep naming every array whose shape, dtype or bytes differ from saved."""
    restored = fingerprint(state)
    bad = sorted(name for name in saved if restored.get(name) != saved[name])
    if bad:
        raise _UnusableStep(f"checksum mismatch in {len(bad)} arrays: {', '.join(bad)}")
