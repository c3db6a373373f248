"""Checkpointer: bit-identical round trips, retention, damaged-step recovery, refusals.

The damage cases edit orbax's on-disk layout directly (a step directory with state/,
data_position/ and manifest/ items; array data in files under state/**/d/), as a failing disk
or a killed process would. Commit failures and delays are injected by patching orbax's commit
(AtomicRenameTemporaryPath.finalize, which runs in its background thread).
"""

import asyncio
import json
import logging
import os
import pathlib
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from jax.experimental import multihost_utils

from codegen2_jax import partitioning, train_state
from codegen2_jax.checkpointing import checkpointer, checksums
from codegen2_jax.model import Decoder, TransformerConfig

CONFIG = TransformerConfig(
    vocab_size=64, num_layers=1, embed_dim=32, num_heads=4, rotary_dim=4, dtype="float32"
)
BATCH_SHAPE = (8, 16)
DATA_POSITION = np.random.default_rng(0).bytes(4 << 20)  # real positions reach ~20 MB
GIN_CONFIG = "# operative config\ntrain.num_steps = 10\nNAME = 'κ→∞'\n"
RUN = {"model": {"num_layers": 2}, "prefix_lm": True, "train_task": "t", "eval_tasks": []}


def make_states():
    """(abstract state, shardings, two different states with the same layout)."""
    model, optimizer = Decoder(CONFIG), optax.adamw(1e-3)
    partitioner = partitioning.make_partitioner(
        rules=[("activation_batch", ("data", "fsdp")), ("embed", "fsdp")], data=1, fsdp=-1
    )
    abstract, shardings = train_state.state_shardings(model, optimizer, BATCH_SHAPE, partitioner)
    first = train_state.init_train_state(model, optimizer, BATCH_SHAPE, partitioner, seed=0)
    second = jax.tree.map(lambda x: x + 1, first)  # elementwise: keeps every leaf's sharding
    return abstract, shardings, first, second


@pytest.fixture(scope="module")
def setup():
    return make_states()


def assert_bit_identical(actual, expected):
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        assert (a.shape, a.dtype) == (e.shape, e.dtype)
        assert np.asarray(a).tobytes() == np.asarray(e).tobytes()


def save_steps(directory, states_by_step, **kwargs):
    with checkpointer.Checkpointer(directory, **kwargs) as ckpt:
        for step, state in states_by_step.items():
            assert ckpt.save(step, state, DATA_POSITION + bytes([step]), GIN_CONFIG, RUN)


def restore(directory, setup):
    abstract, shardings, _, _ = setup
    with checkpointer.Checkpointer(directory) as ckpt:
        return ckpt.restore_latest(abstract, shardings)


def set_aside_names(directory):
    set_aside = pathlib.Path(directory, checkpointer.SET_ASIDE_DIR)
    return sorted(p.name for p in set_aside.iterdir()) if set_aside.exists() else []


def test_round_trip_is_bit_identical(tmp_path, setup):
    abstract, shardings, _, second = setup
    save_steps(tmp_path, {7: second})
    restored = restore(tmp_path, setup)
    assert restored.step == 7
    assert restored.data_position == DATA_POSITION + bytes([7])
    assert (restored.gin_config, restored.run) == (GIN_CONFIG, RUN)
    with checkpointer.Checkpointer(tmp_path) as ckpt:
        assert ckpt.latest_intact_step() == 7
        assert (ckpt.gin_config(7), ckpt.run_record(7)) == (GIN_CONFIG, RUN)
    assert_bit_identical(restored.state, second)
    for leaf, sharding in zip(
        jax.tree.leaves(restored.state), jax.tree.leaves(shardings), strict=True
    ):
        assert leaf.sharding == sharding


def test_no_checkpoint_restores_none(tmp_path, setup):
    assert restore(tmp_path, setup) is None


def test_saving_a_step_not_newer_than_the_latest_is_a_no_op(tmp_path, setup):
    _, _, first, second = setup
    save_steps(tmp_path, {3: first})
    with checkpointer.Checkpointer(tmp_path) as ckpt:
        assert not ckpt.save(3, second, b"other", "other")
        assert not ckpt.save(2, second, b"other", "other")
        assert ckpt.all_steps() == [3]
    assert_bit_identical(restore(tmp_path, setup).state, first)


def test_keeps_the_newest_n(tmp_path, setup):
    _, _, first, second = setup
    save_steps(tmp_path, {1: first, 2: second, 3: first, 4: second}, max_to_keep=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["3", "4"]
    assert restore(tmp_path, setup).step == 4


def test_older_steps_outlive_an_uncommitted_save(tmp_path, setup, monkeypatch):
    _, _, first, second = setup
    committing, release = threading.Event(), threading.Event()
    commit = ocp.path.atomicity.AtomicRenameTemporaryPath.finalize

    async def held_commit(self, *args, **kwargs):
        committing.set()
        await asyncio.to_thread(release.wait, 60)
        return await commit(self, *args, **kwargs)

    monkeypatch.setattr(ocp.path.atomicity.AtomicRenameTemporaryPath, "finalize", held_commit)
    with checkpointer.Checkpointer(tmp_path, max_to_keep=1) as ckpt:
        ckpt.save(1, first, b"1", GIN_CONFIG)
        release.set()
        ckpt.wait_until_finished()
        committing.clear()
        release.clear()
        ckpt.save(2, second, b"2", GIN_CONFIG)
        assert committing.wait(60)
        # Step 2 is written but not committed: retention must not have touched step 1 yet.
        assert (tmp_path / "1").is_dir() and not (tmp_path / "2").exists()
        release.set()
    assert sorted(os.listdir(tmp_path)) == ["2"]


def test_state_buffers_may_be_freed_once_save_returns(tmp_path, setup):
    """A trainer that donates the state to its next step must not corrupt the pending save."""
    _, _, first, _ = setup
    expected = jax.device_get(first)
    copy = jax.tree.map(lambda x: x + 0, first)
    with checkpointer.Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, copy, b"1", GIN_CONFIG)
        for leaf in jax.tree.leaves(copy):
            leaf.delete()
    assert_bit_identical(restore(tmp_path, setup).state, expected)


def test_save_returns_before_the_digests_and_commits_once_written(tmp_path, setup, monkeypatch):
    """The step loop only dispatches the digests; orbax's commit thread waits for them."""
    _, _, first, _ = setup
    release, waited_in = threading.Event(), []
    result = checksums.PendingFingerprints.result

    def held_result(self):
        waited_in.append(threading.current_thread())
        assert release.wait(30), "the digests were never released"
        return result(self)

    monkeypatch.setattr(checksums.PendingFingerprints, "result", held_result)
    with checkpointer.Checkpointer(tmp_path) as ckpt:
        try:
            ckpt.save(1, first, b"1", GIN_CONFIG)
            assert not (tmp_path / "1").exists()  # uncommitted while its digests are outstanding
        finally:
            release.set()
    assert waited_in and threading.main_thread() not in waited_in
    assert_bit_identical(restore(tmp_path, setup).state, first)


def failing_finalize(*args, **kwargs):
    raise OSError("simulated: disk full while committing")


async def async_failing_finalize(*args, **kwargs):
    failing_finalize()


@pytest.mark.parametrize("surfaces_in", ["next save", "close"])
def test_failed_async_save_raises_and_deletes_nothing(tmp_path, setup, monkeypatch, surfaces_in):
    _, _, first, second = setup
    ckpt = checkpointer.Checkpointer(tmp_path, max_to_keep=2)
    ckpt.save(1, first, b"1", GIN_CONFIG)
    ckpt.save(2, second, b"2", GIN_CONFIG)
    ckpt.wait_until_finished()
    monkeypatch.setattr(
        ocp.path.atomicity.AtomicRenameTemporaryPath, "finalize", async_failing_finalize
    )
    assert ckpt.save(3, first, b"3", GIN_CONFIG)  # returns before the commit fails
    surface = {"next save": lambda: ckpt.save(4, second, b"4", GIN_CONFIG), "close": ckpt.close}
    with pytest.raises(checkpointer.CheckpointSaveError, match="step 3"):
        surface[surfaces_in]()
    if surfaces_in == "next save":
        ckpt.close()
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == ["1", "2"]
    restored = restore(tmp_path, setup)
    assert (restored.step, restored.data_position) == (2, b"2")
    assert [name.split(".")[0] for name in set_aside_names(tmp_path)] == ["3"]


def orbax_restore_outcome(state_dir, target, saved):
    """What orbax alone makes of a state item: "error", "intact" or "silently changed"."""
    try:
        with ocp.StandardCheckpointer() as reader:
            restored = reader.restore(state_dir, target)
    except Exception:
        return "error"
    leaves = zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True)
    same = all(np.asarray(a).tobytes() == np.asarray(b).tobytes() for a, b in leaves)
    return "intact" if same else "silently changed"


def flip_64_bytes_at(fraction):
    def flip(data):
        start = int(len(data) * fraction)
        return data[:start] + bytes(b ^ 0xFF for b in data[start : start + 64]) + data[start + 64 :]

    return flip


def damage_array_data(step_dir, reference, edits, wanted):
    """Applies the first edit of an array data file after which orbax's restore shows `wanted`.

    Arrays are stored compressed in files that also hold index nodes and superseded data, so
    whether an edit at a given offset breaks decoding, silently changes values or touches
    nothing depends on the layout; trying candidates makes each case deterministic.
    """
    target, saved = reference
    data_files = [p for p in (step_dir / "state").rglob("d/*") if p.is_file()]
    for path in sorted(data_files, key=lambda p: -p.stat().st_size):
        original = path.read_bytes()
        for edit in edits:
            path.write_bytes(edit(original))
            if orbax_restore_outcome(step_dir / "state", target, saved) == wanted:
                return
        path.write_bytes(original)
    pytest.fail(f"no edit of an array data file made orbax's restore {wanted}")


def flip_64_bytes(step_dir, reference):
    """The corruption only a checksum catches: orbax restores it without error."""
    edits = [flip_64_bytes_at(k / 8) for k in range(1, 8)]
    damage_array_data(step_dir, reference, edits, "silently changed")


def rewrite_as_format_1(step_dir, state):
    """The manifest as format 1 wrote it: per-array SHA-256 records, resealed."""
    path = step_dir / checkpointer.MANIFEST / checkpointer.MANIFEST_FILE
    body = json.loads(path.read_text())
    del body["sha256"]
    body.update(format_version=1, arrays=checksums.sha256_fingerprint(state))
    path.write_text(json.dumps({**body, "sha256": checkpointer._digest(body)}))


def flip_64_bytes_of_a_format_1_step(step_dir, reference):
    rewrite_as_format_1(step_dir, reference[1])
    flip_64_bytes(step_dir, reference)


def truncate(step_dir, reference):
    damage_array_data(step_dir, reference, [lambda data: data[: len(data) // 2]], "error")


def edit_manifest(step_dir, _reference):
    path = step_dir / checkpointer.MANIFEST / "metadata"
    path.write_text(path.read_text().replace("train.num_steps = 10", "train.num_steps = 99"))


def edit_data_position(step_dir, _reference):
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.bin"
    path = step_dir / checkpointer.DATA_POSITION / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def remove_commit_marker(step_dir, _reference):
    (step_dir / ocp.path.atomicity_types.COMMIT_SUCCESS_FILE).unlink()


def leave_temporary_dir(step_dir, _reference):
    step_dir.rename(step_dir.with_name(step_dir.name + ocp.path.atomicity_types.TMP_DIR_SUFFIX))


# Orbax leaves sibling array reads unawaited when one fails to decode.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize(
    "damage, reason",
    [
        (flip_64_bytes, "checksum mismatch"),
        (flip_64_bytes_of_a_format_1_step, "checksum mismatch"),
        (truncate, "unreadable state"),
        (edit_manifest, "manifest digest mismatch"),
        (edit_data_position, "does not match its SHA-256 digest"),
        (remove_commit_marker, "no commit marker"),
        (leave_temporary_dir, "never committed"),
    ],
)
def test_damaged_newest_step_is_set_aside(tmp_path, setup, caplog, damage, reason):
    abstract, shardings, first, second = setup
    save_steps(tmp_path, {1: first, 2: second})
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    damage(tmp_path / "2", (target, second))
    with caplog.at_level(logging.ERROR):
        restored = restore(tmp_path, setup)
    assert restored.step == 1
    assert_bit_identical(restored.state, first)
    assert restored.data_position == DATA_POSITION + bytes([1])
    assert any(reason in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)
    assert [name.split(".")[0] for name in set_aside_names(tmp_path)] == ["2"]
    assert sorted(os.listdir(tmp_path)) == ["1", checkpointer.SET_ASIDE_DIR]


def test_a_step_saved_in_format_2_restores_without_a_run_record(tmp_path, setup):
    _, _, _, second = setup
    save_steps(tmp_path, {1: second})
    path = tmp_path / "1" / checkpointer.MANIFEST / checkpointer.MANIFEST_FILE
    body = json.loads(path.read_text())
    del body["sha256"], body["run"]
    body.update(format_version=2)
    path.write_text(json.dumps({**body, "sha256": checkpointer._digest(body)}))
    restored = restore(tmp_path, setup)
    assert (restored.step, restored.run) == (1, None)
    assert_bit_identical(restored.state, second)
    with checkpointer.Checkpointer(tmp_path) as ckpt:
        assert ckpt.run_record(1) is None


def test_a_step_saved_in_format_1_restores(tmp_path, setup):
    _, _, _, second = setup
    save_steps(tmp_path, {1: second})
    rewrite_as_format_1(tmp_path / "1", second)
    assert_bit_identical(restore(tmp_path, setup).state, second)


def test_read_only_reader_skips_damage_and_changes_nothing(tmp_path, setup, caplog):
    """A sampler beside a running job must not move the job's save in flight."""
    abstract, shardings, first, second = setup
    save_steps(tmp_path, {1: first, 2: second})
    edit_manifest(tmp_path / "2", None)
    in_flight = tmp_path / ("3" + ocp.path.atomicity_types.TMP_DIR_SUFFIX)
    in_flight.mkdir()
    before = sorted(os.listdir(tmp_path))
    with checkpointer.Checkpointer(tmp_path, read_only=True) as ckpt, caplog.at_level("ERROR"):
        assert ckpt.latest_intact_step() == 1
        restored = ckpt.restore_latest(abstract, shardings)
        with pytest.raises(checkpointer.CheckpointError, match="read-only"):
            ckpt.save(4, first, b"4", GIN_CONFIG)
    assert restored.step == 1
    assert_bit_identical(restored.state, first)
    assert sorted(os.listdir(tmp_path)) == before
    assert "manifest digest mismatch" in caplog.text


def test_read_only_reader_of_a_missing_directory_finds_nothing(tmp_path, setup):
    abstract, shardings, _, _ = setup
    with checkpointer.Checkpointer(tmp_path / "absent", read_only=True) as ckpt:
        assert ckpt.latest_intact_step() is None
        assert ckpt.restore_latest(abstract, shardings) is None
    assert not (tmp_path / "absent").exists()


def with_leaf(abstract, name, make):
    def replace(path, leaf):
        matches = jax.tree_util.keystr(path, simple=True, separator="/") == name
        return make(leaf) if matches else leaf

    return jax.tree_util.tree_map_with_path(replace, abstract)


def test_restoring_into_a_different_layout_names_the_parameter(tmp_path, setup):
    abstract, shardings, first, _ = setup
    save_steps(tmp_path, {1: first})
    name = "params/embed/embedding"
    wider = with_leaf(abstract, name, lambda x: jax.ShapeDtypeStruct((64, 48), x.dtype))
    bf16 = with_leaf(abstract, name, lambda x: jax.ShapeDtypeStruct(x.shape, jnp.bfloat16))
    expected = [
        (
            wider,
            r"params/embed/embedding: checkpoint has shape \(64, 32\) dtype float32, "
            r"target has shape \(64, 48\) dtype float32",
        ),
        (bf16, r"params/embed/embedding: .* target has shape \(64, 32\) dtype bfloat16"),
    ]
    with checkpointer.Checkpointer(tmp_path) as ckpt:
        for target, message in expected:
            with pytest.raises(checkpointer.CheckpointMismatchError, match=message):
                ckpt.restore_latest(target, shardings)
    assert set_aside_names(tmp_path) == []


def test_restoring_a_different_parameter_set_names_the_parameters(tmp_path, setup):
    abstract, shardings, first, _ = setup
    save_steps(tmp_path, {1: first})
    params = dict(abstract.params, extra={"kernel": jax.ShapeDtypeStruct((2,), jnp.float32)})
    del params["lm_head"]
    shard_params = dict(shardings.params, extra={"kernel": shardings.step})
    del shard_params["lm_head"]
    target = abstract.replace(params=params)
    with (
        checkpointer.Checkpointer(tmp_path) as ckpt,
        pytest.raises(checkpointer.CheckpointMismatchError) as error,
    ):
        ckpt.restore_latest(target, shardings.replace(params=shard_params))
    assert "params/extra/kernel: in the target but not in the checkpoint" in str(error.value)
    assert "params/lm_head/kernel: in the checkpoint but not in the target" in str(error.value)


def test_parameters_restore_alone_without_the_optimizer(tmp_path, setup):
    abstract, shardings, first, second = setup
    save_steps(tmp_path, {1: first, 2: second})
    with checkpointer.Checkpointer(tmp_path, read_only=True) as ckpt:
        restored = ckpt.restore_latest_params(abstract.params, shardings.params)
    assert (restored.step, restored.data_position, restored.gin_config) == (2, None, GIN_CONFIG)
    assert_bit_identical(restored.state, second.params)


def test_parameters_restore_skips_a_damaged_step_and_names_a_mismatch(tmp_path, setup, caplog):
    abstract, shardings, first, second = setup
    save_steps(tmp_path, {1: first, 2: second})
    edit_manifest(tmp_path / "2", None)
    with checkpointer.Checkpointer(tmp_path) as ckpt, caplog.at_level(logging.ERROR):
        restored = ckpt.restore_latest_params(abstract.params, shardings.params)
        assert restored.step == 1
        assert_bit_identical(restored.state, first.params)
        name = "embed/embedding"
        wider = with_leaf(abstract.params, name, lambda x: jax.ShapeDtypeStruct((64, 48), x.dtype))
        with pytest.raises(checkpointer.CheckpointMismatchError, match=f"params/{name}: "):
            ckpt.restore_latest_params(wider, shardings.params)
    assert [name.split(".")[0] for name in set_aside_names(tmp_path)] == ["2"]


def test_restoring_with_a_different_process_count_is_refused(tmp_path, setup):
    """Each host's data position belongs to its shard of the data: no silent reuse."""
    _, _, first, _ = setup
    save_steps(tmp_path, {1: first})
    for path in (tmp_path / "1" / checkpointer.DATA_POSITION).glob("process_0-of-1.*"):
        path.rename(path.with_name(path.name.replace("-of-1", "-of-2")))
    with pytest.raises(
        checkpointer.CheckpointMismatchError, match="saved by a 2-process run; this run has 1"
    ):
        restore(tmp_path, setup)
    assert set_aside_names(tmp_path) == []


def test_non_finite_state_is_refused(tmp_path, setup):
    """Found with the digests, in the background: the save fails naming the leaf, uncommitted."""
    _, _, first, _ = setup
    name = "params/layers/mlp/fc_in/bias"
    poisoned = with_leaf(first, name, lambda x: x.at[0, 3].set(jnp.nan))
    with checkpointer.Checkpointer(tmp_path) as ckpt:
        assert ckpt.save(1, poisoned, DATA_POSITION, GIN_CONFIG)
        with pytest.raises(checkpointer.CheckpointSaveError, match=f"non-finite.*{name}") as error:
            ckpt.wait_until_finished()
        assert isinstance(error.value.__cause__, checkpointer.NonFiniteStateError)
        assert ckpt.all_steps() == []


def two_process_worker(process_id: int, port: int, directory: str):
    """One of two processes sharing an 8-device mesh (4 fake CPU devices each)."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process_id)
    abstract, shardings, first, second = make_states()

    def summary(restored):
        saved = {1: first, 2: second}[restored.step]
        same = checksums.fingerprint(restored.state) == checksums.fingerprint(saved)
        return [restored.step, restored.data_position.decode(), same]

    with checkpointer.Checkpointer(directory) as ckpt:
        for step, state in ((1, first), (2, second)):
            ckpt.save(step, state, f"host {process_id} at {step}".encode(), GIN_CONFIG)
        results = {"intact": summary(ckpt.restore_latest(abstract, shardings))}
        if process_id == 1:
            edit_data_position(pathlib.Path(directory, "2"), None)
        multihost_utils.sync_global_devices("damaged")
        results["host 1 position damaged"] = summary(ckpt.restore_latest(abstract, shardings))
    print(json.dumps(results))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_together(commands, env, timeout):
    """Stdout of each command; the first failure kills the rest (they would wait at barriers)."""
    workers = [subprocess.Popen(c, env=env, stdout=subprocess.PIPE, text=True) for c in commands]
    deadline = time.monotonic() + timeout
    try:
        while any(w.poll() is None for w in workers):
            failed = any(w.returncode not in (None, 0) for w in workers)
            assert not failed and time.monotonic() < deadline, "a worker failed or timed out"
            time.sleep(0.2)
        assert [w.returncode for w in workers] == [0] * len(workers)
        return [w.stdout.read() for w in workers]
    finally:
        for w in workers:
            w.kill()
            w.stdout.close()


@pytest.mark.slow
def test_two_processes_each_restore_their_own_data_position(tmp_path):
    """Arrays span both processes (multi-host checksums); damage on one host sets aside for all."""
    from tests import training_runs  # here: the workers run this file without it

    env = dict(
        training_runs.subprocess_env(devices=4),
        PYTHONPATH=str(pathlib.Path(__file__).resolve().parents[2]),
    )
    command = [sys.executable, __file__, str(free_port()), str(tmp_path)]
    # A guard against a hang at a barrier; the first save compiles the digest programs.
    outputs = run_together([[*command, str(i)] for i in range(2)], env, timeout=240)
    for i, output in enumerate(outputs):
        assert json.loads(output.splitlines()[-1]) == {
            "intact": [2, f"host {i} at 2", True],
            "host 1 position damaged": [1, f"host {i} at 1", True],
        }
    assert [name.split(".")[0] for name in set_aside_names(tmp_path)] == ["2"]


if __name__ == "__main__":
    port, directory, process_id = sys.argv[1:]
    two_process_worker(int(process_id), int(port), directory)


def test_relative_directory_is_accepted(tmp_path, monkeypatch, setup):
    monkeypatch.chdir(tmp_path)
    save_steps("runs/relative", {1: setup[2]})
    assert restore("runs/relative", setup).step == 1
