"""Tests of the task registry: names, objectives, gin parameters, corpora and mixtures.

The shipped corpus runs through every objective; gin bindings reach the preprocessors and
mixture rates; The Stack and The Pile declarations read local copies.
"""

import json

import gin
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import seqio
import tensorflow as tf
import zstandard

import tasks
from codegen2_jax.data import corpus, features, pipeline, vocab
from tasks import corpora, mixtures, objectives

LENGTH = 128
VOCAB = vocab.default_vocabulary()


@pytest.fixture
def bindings():
    """Parses gin bindings for one test and clears them afterwards."""
    yield lambda *lines: gin.parse_config(list(lines))
    gin.clear_config()


def _in_stack_holdout(path: str) -> bool:
    """Whether The Stack's 1% validation holdout takes this path."""
    return int(tf.strings.to_hash_bucket_fast(path, 100)) < 1


def _examples(name, split="validation", count=8, seed=0):
    dataset = seqio.get_mixture_or_task(name).get_dataset(
        features.task_feature_lengths(LENGTH), split=split, shuffle=False, seed=seed
    )
    return list(dataset.take(count).as_numpy_iterator())


def test_names_follow_corpus_version_objective():
    names = set(seqio.TaskRegistry.names())
    for corpus_name in ["stdlib_py", "stdlib_nl", "pile", "the_stack_python", "the_stack_cpp"]:
        for objective in objectives.OBJECTIVES:
            assert f"{corpus_name}_v1_{objective}" in names
    assert {
        "stdlib_v1_codegen2_mix",
        "stdlib_v1_nl_pl_mix",
        "the_stack_v1_codegen2_mix",
        "pile_the_stack_v1_nl_pl_mix",
    } <= set(seqio.MixtureRegistry.names())
    assert tasks.corpora is corpora


@pytest.mark.parametrize("objective", list(objectives.OBJECTIVES))
def test_stdlib_python_through_every_objective(bindings, corpus_dir, objective):
    bindings(f"tasks.stdlib_data_dir.path = '{corpus_dir}'")
    examples = _examples(f"stdlib_py_v1_{objective}")
    assert len(examples) == 8
    for ex in examples:
        assert set(ex) == set(features.OBJECTIVE_FEATURES)
        assert 0 < len(ex["targets"]) <= LENGTH
        assert ex["targets"].max() < VOCAB.vocab_size
    has_sep = [VOCAB.sep_id in ex["targets"] for ex in examples]
    if objective == "span_infill":
        assert all(has_sep)
    elif objective in ("causal", "prefix_lm"):
        assert not any(has_sep)
    else:  # fim and codegen2_mix draw infill or causal LM per example
        assert any(has_sep) and not all(has_sep)


def test_stdlib_natural_language_reads(bindings, corpus_dir):
    bindings(f"tasks.stdlib_data_dir.path = '{corpus_dir}'")
    text = VOCAB.decode(_examples("stdlib_nl_v1_causal", count=1)[0]["targets"].tolist())
    assert text.strip()


def _paths(task: str, split: str) -> list[bytes]:
    source = seqio.get_mixture_or_task(task).source
    return [ex["path"] for ex in source.get_dataset(split, shuffle=False).as_numpy_iterator()]


def test_capped_corpus_is_a_tenth_of_the_training_documents(bindings, corpus_dir):
    bindings(f"tasks.stdlib_data_dir.path = '{corpus_dir}'")
    full, tenth = "stdlib_py_v1_causal", "stdlib_py_tenth_v1_causal"
    full_train, capped_train = _paths(full, "train"), _paths(tenth, "train")
    assert capped_train == full_train[: len(capped_train)]
    assert len(capped_train) == round(len(full_train) / 10)
    assert _paths(tenth, "validation") == _paths(full, "validation")


def test_capped_source_must_slice_the_train_split():
    with pytest.raises(ValueError, match="must select from 'train'"):
        corpus.StdlibSource("python", train_split="validation[:10%]")


def test_gin_sets_the_mixture_rate(bindings, corpus_dir):
    bindings(
        f"tasks.stdlib_data_dir.path = '{corpus_dir}'", "tasks.mixture_params.causal_rate = 1.0"
    )
    assert not any(VOCAB.sep_id in ex["targets"] for ex in _examples("stdlib_py_v1_codegen2_mix"))
    gin.clear_config()
    bindings(
        f"tasks.stdlib_data_dir.path = '{corpus_dir}'", "tasks.mixture_params.causal_rate = 0.0"
    )
    assert all(VOCAB.sep_id in ex["targets"] for ex in _examples("stdlib_py_v1_codegen2_mix"))


def test_gin_sets_span_parameters(bindings, corpus_dir):
    bindings(
        f"tasks.stdlib_data_dir.path = '{corpus_dir}'",
        "tasks.span_params.max_spans = 1",
        "tasks.span_params.min_mask_ratio = 0.3",
        "tasks.span_params.max_mask_ratio = 0.31",
        "tasks.span_params.loss_policy = 'infill_only'",
    )
    for ex in _examples("stdlib_py_v1_span_infill"):
        targets = ex["targets"].tolist()
        assert targets.count(VOCAB.mask_id(1)) == 2 and VOCAB.mask_id(2) not in targets
        assert ex["loss_weights"][: targets.index(VOCAB.sep_id) + 1].sum() == 0


def test_nl_pl_mixture_makes_packed_batches(bindings, corpus_dir):
    bindings(f"tasks.stdlib_data_dir.path = '{corpus_dir}'")
    dataset = pipeline.make_dataset(
        "stdlib_v1_nl_pl_mix", feature_lengths={"targets": 64}, batch_size=2, seed=3
    )
    batch = next(dataset.as_numpy_iterator())
    assert batch["decoder_target_tokens"].shape == (2, 64)
    assert batch["decoder_segment_ids"].max() >= 1


@pytest.mark.parametrize(
    "corpus_name, directory, licenses",
    [("the_stack", "c++", True), ("starcoderdata", "c-sharp", False)],
)
def test_per_language_parquet_copies_read_from_the_gin_root(
    bindings, tmp_path, corpus_name, directory, licenses
):
    (tmp_path / directory).mkdir()
    columns = {
        "content": [f"int f{i}() {{ return {i}; }}\n" for i in range(20)],
        "max_stars_repo_name": ["org/repo"] * 20,
        "max_stars_repo_path": [f"m{i}.c" for i in range(20)],
    }
    if licenses:
        columns["max_stars_repo_licenses"] = [["MIT"]] * 20
    pq.write_table(pa.table(columns), tmp_path / directory / "train-00000-of-00001.parquet")
    bindings(f"tasks.{corpus_name}_root.path = '{tmp_path}'")
    language = {"c++": "cpp", "c-sharp": "csharp"}[directory]
    examples = _examples(f"{corpus_name}_{language}_v1_causal", split="train", count=30)
    assert len(examples) == 20 - sum(_in_stack_holdout(f"org/repo/m{i}.c") for i in range(20))
    assert VOCAB.decode(examples[0]["targets"].tolist()).startswith("int f")


def test_unbound_root_names_the_binding():
    with pytest.raises(ValueError, match="tasks.the_pile_root.path"):
        _examples("pile_v1_causal", split="train")


def test_pile_reads_its_jsonl_zst_splits(bindings, tmp_path):
    (tmp_path / "train").mkdir()
    for path, n in [(tmp_path / "train" / "00.jsonl.zst", 5), (tmp_path / "val.jsonl.zst", 2)]:
        lines = [json.dumps({"text": f"Doc {i}.", "meta": {}}) for i in range(n)]
        path.write_bytes(zstandard.ZstdCompressor().compress("\n".join(lines).encode()))
    bindings(f"tasks.the_pile_root.path = '{tmp_path}'")
    assert len(_examples("pile_v1_causal", split="train")) == 5
    assert len(_examples("pile_v1_fim", split="validation")) == 2


def test_mixture_rates_come_from_gin(bindings):
    stack = seqio.get_mixture_or_task("the_stack_v1_codegen2_mix")
    python = seqio.get_mixture_or_task("the_stack_python_v1_codegen2_mix")
    assert stack.get_rate(python) == 1.0
    nl_pl = seqio.get_mixture_or_task("stdlib_v1_nl_pl_mix")
    rates = [nl_pl.get_rate(task) for task in nl_pl.tasks]
    assert rates == [1.0, 1.0]
    bindings(
        "tasks.nl_pl_rates.natural = 3.0",
        "tasks.the_stack_rates.rates = {'python': 19.0}",
    )
    assert stack.get_rate(python) == 19.0
    both = seqio.get_mixture_or_task("pile_the_stack_v1_nl_pl_mix")
    pile = seqio.get_mixture_or_task("pile_v1_codegen2_mix")
    assert both.get_rate(pile) == 3.0
    assert np.isclose(both.get_rate(python), 19.0 / (19.0 + 18.0))
    assert mixtures.the_stack_rates()["go"] == 1.0


def test_unknown_language_rate_is_rejected(bindings):
    bindings("tasks.the_stack_rates.rates = {'cobol': 1.0}")
    with pytest.raises(ValueError, match="cobol"):
        mixtures.the_stack_rates()


def test_shipped_mixture_resumes_exactly(bindings, corpus_dir):
    bindings(f"tasks.stdlib_data_dir.path = '{corpus_dir}'")
    kwargs = dict(feature_lengths={"targets": 64}, batch_size=2, seed=11)
    iterator = pipeline.make_iterator("stdlib_v1_nl_pl_mix", **kwargs)
    next(iterator)
    position = iterator.save_position()
    expected = [next(iterator) for _ in range(2)]
    resumed = pipeline.make_iterator("stdlib_v1_nl_pl_mix", **kwargs)
    resumed.restore_position(position)
    for batch in expected:
        got = next(resumed)
        assert all(np.array_equal(batch[name], got[name]) for name in batch)
