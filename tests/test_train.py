"""End to end: a tiny run learns, a declared corpus resumes exactly, SIGTERM saves and exits 0,
SIGKILL chaos resumes exactly."""

import gzip
import json
import os
import pathlib
import random
import signal
import subprocess

import gin
import numpy as np
import pytest
import seqio
import tensorflow as tf
import tensorflow_datasets as tfds
import torch
import transformers

from codegen2_jax import gin_config, metrics, train
from codegen2_jax.checkpointing import checkpointer, hf_cli
from codegen2_jax.data import bpe, sources, vocab
from codegen2_jax.evaluation import during_training
from codegen2_jax.experiments import plot_curves
from codegen2_jax.model import Decoder, TransformerConfig
from codegen2_jax.sampling import sample_cli, trained_model
from tests import training_runs
from tests.data import tiny_bpe


def test_tiny_run_learns_and_writes_its_records(tmp_path, corpus_dir):
    import tasks  # noqa: F401

    model_dir = str(tmp_path / "run")
    gin_config.parse(
        ["experiments/tiny_cpu.gin"],
        [
            f"MODEL_DIR = '{model_dir}'",
            f"tasks.stdlib_data_dir.path = '{corpus_dir}'",
            "TRAIN_STEPS = 40",
            "EVAL_TASKS = ['stdlib_py_v1_causal', 'stdlib_py_v1_span_infill']",
            "EVAL_EVERY = 20",
            "EVAL_BATCHES = 2",
            "HUMANEVAL_EVERY = 20",
            *(f"during_training.ExecutionEvalSettings.{name} = 4" for name in EXECUTION_SUBSETS),
            "train.train.log_every = 5",
            "train.train.checkpoint_every = 20",
        ],
    )
    model_config = gin_config.configured(TransformerConfig)()
    # 8 fake devices: a sharded batch; the config recorded as main records it.
    summary = gin_config.configured(train.train)(config_text=gin.config_str())
    recorded = metrics.read_metrics(model_dir)
    losses = [m["train/loss"] for _, m in sorted(recorded.items()) if "train/loss" in m]
    assert losses[-1] < losses[0] - 1.0, losses
    executed = (during_training.COMPLETION, during_training.INFILL)
    assert set(summary) >= {"loss", "eval/stdlib_py_v1_causal/loss", *executed}
    assert [s for s, m in sorted(recorded.items()) if set(executed) <= set(m)] == [20, 40]
    assert set(executed) <= _tensorboard_tags(model_dir)
    assert sorted(os.listdir(os.path.join(model_dir, "checkpoints")))[:2] == ["20", "40"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(model_dir))
    png = plot_curves.plot(model_dir, str(tmp_path / "curves.png"))
    assert os.path.getsize(png) > 10_000

    # A step exports with its sentencepiece tokenizer, converted for transformers.
    checkpoints, out = os.path.join(model_dir, "checkpoints"), tmp_path / "exported"
    with pytest.raises(checkpointer.CheckpointError, match=r"no committed step 7 .* \[20, 40\]"):
        hf_cli.main(["export", f"--checkpoint_dir={checkpoints}", "--step=7", f"--out_dir={out}"])
    hf_cli.main(["export", f"--checkpoint_dir={checkpoints}", "--step=20", f"--out_dir={out}"])
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    exported = transformers.CodeGenForCausalLM.from_pretrained(out, local_files_only=True)
    trained = trained_model.load(checkpoints, step=20)
    # Each step records what was trained, as data; the model is rebuilt from it exactly.
    assert trained_model.saved_run(checkpoints, 20) == trained_model.RunRecord(
        model=model_config,
        prefix_lm=False,
        train_task="stdlib_py_v1_codegen2_mix",
        eval_tasks=("stdlib_py_v1_causal", "stdlib_py_v1_span_infill"),
        vocabulary=trained_model.vocabulary_record(vocab.default_vocabulary()),
    )
    assert trained.config == model_config
    ids = tokenizer("def f(x):\n    return x").input_ids
    assert ids == [0, *trained.vocabulary.encode("def f(x):\n    return x")]
    with torch.no_grad():
        hf_logits = exported(input_ids=torch.tensor([ids])).logits[0].numpy()
    ours = Decoder(trained.config).apply({"params": trained.params}, np.array([ids]))[0]
    np.testing.assert_allclose(hf_logits, np.asarray(ours), rtol=1e-4, atol=1e-4)


# Execution evaluation on 4 problems and 4 infill tasks of 4 tokens each: its cost stays small.
EXECUTION_SUBSETS = ("problems", "infill_tasks", "completion_tokens", "infill_tokens")


def _tensorboard_tags(model_dir) -> set[str]:
    events = pathlib.Path(model_dir).glob("events.out.tfevents*")
    return {
        value.tag
        for path in events
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
    }


def _declare_corpus(directory, name: str, validation_percent: int) -> list[str]:
    """The README's "Add a corpus" declaration over jsonl.gz shards of real Python files."""
    import tasks  # noqa: F401
    from tasks.registry import register_corpus

    files = sorted(pathlib.Path(json.__file__).parent.parent.glob("email/*.py"))
    for shard in range(2):
        lines = [
            json.dumps({"content": f.read_text(encoding="utf-8"), "license": "PSF"}) + "\n"
            for f in files[shard::2]
        ]
        (directory / f"{shard:02d}.jsonl.gz").write_bytes(gzip.compress("".join(lines).encode()))
    return register_corpus(
        name,
        "v1",
        sources.DocumentSource(
            split_to_filepattern={"train": str(directory / "*.jsonl.gz")},
            text_field="content",
            license_field="license",
            validation_percent=validation_percent,
        ),
    )


@pytest.fixture
def declared_corpus(tmp_path):
    names = _declare_corpus(tmp_path, "my_code", validation_percent=1)
    yield "my_code"
    for name in names:
        seqio.TaskRegistry.remove(name)


def test_a_wrong_corpus_or_an_empty_evaluation_stops_before_training(tmp_path, declared_corpus):
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="'my_cod_v1_codegen2_mix': did you mean my_code_v1_"):
        _train(run, "my_cod", 3)
    names = _declare_corpus(tmp_path, "no_validation", validation_percent=0)
    try:
        with pytest.raises(ValueError, match="'no_validation_v1_causal' has no scored tokens"):
            _train(run, declared_corpus, 3, "EVAL_TASKS = ['no_validation_v1_causal']")
    finally:
        for name in names:
            seqio.TaskRegistry.remove(name)
    assert not list((run / "checkpoints").glob("[0-9]*"))


def _train(model_dir, corpus: str, steps: int, *more: str) -> dict[str, float] | None:
    bindings = [f"MODEL_DIR = '{model_dir}'", f"CORPUS = '{corpus}'", f"TRAIN_STEPS = {steps}"]
    bindings += ["train.train.log_every = 1", "train.train.checkpoint_every = 5"]
    bindings += ["optim.make_optimizer.total_steps = 12"]  # one schedule, however far it runs
    gin_config.parse(["experiments/tiny_cpu.gin"], [*bindings, *more])
    return gin_config.configured(train.train)(config_text=gin.config_str())  # as main records it


def test_a_declared_corpus_saves_and_resumes_exactly(tmp_path, declared_corpus, caplog):
    """Files parsed in Python save their data position: a resumed run equals an unbroken one.
    A rerun of the finished run changes nothing and says so."""
    unbroken, resumed = tmp_path / "unbroken", tmp_path / "resumed"
    _train(unbroken, declared_corpus, 12)
    _train(resumed, declared_corpus, 7)  # saves at 5 and at its end, 7
    _train(resumed, declared_corpus, 12)  # resumes at 7, mid-file
    expected = {s: m["train/loss"] for s, m in metrics.read_metrics(unbroken).items()}
    assert {s: m["train/loss"] for s, m in metrics.read_metrics(resumed).items()} == expected
    assert sorted(expected) == list(range(1, 13))

    logged = (resumed / metrics.METRICS_FILE).read_text()
    assert _train(resumed, declared_corpus, 12) is None
    assert "the run is already finished: its checkpoint holds step 12 of 12" in caplog.text
    assert (resumed / metrics.METRICS_FILE).read_text() == logged


def test_one_binding_chooses_the_tokenizer_and_checkpoints_keep_it(tmp_path, corpus_dir):
    """VOCABULARY tokenizes the registered corpora; sampling reads the tokenizer back."""
    import tasks  # noqa: F401

    bpe_dir = tiny_bpe.write(tmp_path / "bpe")
    run = tmp_path / "run"
    data = f"tasks.stdlib_data_dir.path = '{corpus_dir}'"
    chosen = [f"VOCABULARY = '{bpe_dir}'", f"VOCAB_SIZE = {tiny_bpe.VOCAB_SIZE}", data]
    with pytest.raises(ValueError, match="VOCAB_SIZE 512 is smaller than the tokenizer's 1024"):
        _train(run, "stdlib_py", 6, *chosen, "VOCAB_SIZE = 512")
    _train(run, "stdlib_py", 6, *chosen)
    assert sorted(metrics.read_metrics(run)) == list(range(1, 7))
    kept = run / "checkpoints" / vocab.SAVED_VOCABULARY_DIR / bpe.TOKENIZER_FILE
    assert kept.read_text() == (bpe_dir / bpe.TOKENIZER_FILE).read_text()

    loaded = sample_cli.load_checkpoint(str(run / "checkpoints"))
    assert loaded.vocabulary == vocab.load_vocabulary(str(bpe_dir))
    assert loaded.start_id == loaded.vocabulary.eos_id  # what each document followed
    with pytest.raises(ValueError, match="VOCABULARY"):  # a rerun with another tokenizer
        _train(run, "stdlib_py", 12, data)


class TinyCode(tfds.core.GeneratorBasedBuilder):
    """A prepared TFDS dataset of Python files, loaded by name like any published one."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"text": tfds.features.Text()})
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for path in sorted(pathlib.Path(json.__file__).parent.glob("*.py")):
            yield path.name, {"text": path.read_text(encoding="utf-8")}


def test_a_tfds_dataset_by_name_trains(tmp_path):
    from tasks.registry import register_corpus

    TinyCode(data_dir=str(tmp_path / "tfds")).download_and_prepare()
    source = seqio.TfdsDataSource(tfds_name="tiny_code:1.0.0", tfds_data_dir=str(tmp_path / "tfds"))
    names = register_corpus("tiny_tfds", "v1", source, objectives_to_register=["codegen2_mix"])
    try:
        _train(tmp_path / "run", "tiny_tfds", 6)
    finally:
        for name in names:
            seqio.TaskRegistry.remove(name)
    assert sorted(metrics.read_metrics(tmp_path / "run")) == list(range(1, 7))


def test_sigterm_saves_the_current_step_and_exits_zero(tmp_path, corpus_dir):
    model_dir = tmp_path / "run"
    bindings = ("--gin.TRAIN_STEPS=100000", "--gin.train.train.checkpoint_every=100000")
    process = training_runs.start(model_dir, corpus_dir, *bindings, "--gin.train.train.log_every=1")
    training_runs.wait_for_progress(process, model_dir, after=3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 0
    step, _ = training_runs.restore_final_state(model_dir)
    assert step >= 4 and step == max(metrics.read_metrics(model_dir))


CHAOS_STEPS = 150
CHAOS_BINDINGS = (
    f"--gin.TRAIN_STEPS={CHAOS_STEPS}",
    "--gin.train.train.checkpoint_every=3",
    "--gin.train.train.log_every=1",
)


@pytest.fixture(scope="module")
def chaos_reference(tmp_path_factory, corpus_dir):
    """The uninterrupted run every chaos seed must reproduce, run once for all of them.

    It fills the session's compilation cache with the programs every restart needs, so that
    no restarted process compiles.
    """
    reference = tmp_path_factory.mktemp("chaos") / "reference"
    training_runs.run_to_completion(reference, corpus_dir, *CHAOS_BINDINGS)
    return reference


@pytest.mark.slow
@pytest.mark.xdist_group("sigkill_chaos")  # one worker: the seeds share chaos_reference
@pytest.mark.parametrize("seed", [0, 1])
def test_sigkill_chaos_resume_is_bitwise_identical(tmp_path, corpus_dir, chaos_reference, seed):
    """Kills a real training process at random moments (many during async saves, which run
    every step); restarted each time, it must reproduce the uninterrupted run bit for bit."""
    steps, kills_wanted, bindings = CHAOS_STEPS, 8, CHAOS_BINDINGS
    reference, chaos = chaos_reference, tmp_path / "chaos"

    rng, kills = random.Random(seed), 0
    while kills < kills_wanted:
        process = training_runs.start(chaos, corpus_dir, *bindings)
        seen = training_runs.logged_steps(chaos)
        if not training_runs.wait_for_progress(process, chaos, after=seen):
            break  # finished on its own
        time_to_kill = rng.uniform(0.0, 2.0)
        try:
            process.wait(timeout=time_to_kill)
            break
        except subprocess.TimeoutExpired:  # still running: kill it mid-flight
            process.send_signal(signal.SIGKILL)
            process.wait()
            kills += 1
    training_runs.run_to_completion(chaos, corpus_dir, *bindings)

    assert kills == kills_wanted, "the run finished before enough kills; raise TRAIN_STEPS"
    expected = {s: m["train/loss"] for s, m in metrics.read_metrics(reference).items()}
    got = {s: m["train/loss"] for s, m in metrics.read_metrics(chaos).items()}
    assert got == expected  # exact float equality, every step
    ref_step, ref_state = training_runs.restore_final_state(reference)
    chaos_step, chaos_state = training_runs.restore_final_state(chaos)
    assert ref_step == chaos_step == steps
    differing = sum(
        int(np.sum(a.reshape(-1).view(np.uint8) != b.reshape(-1).view(np.uint8)))
        for a, b in zip(ref_state, chaos_state, strict=True)
    )
    assert differing == 0, f"{differing} bytes differ"
