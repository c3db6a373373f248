"""Execution-based evaluation during training: the decode on the training mesh, the scoring,
and what it does when programs or the sandbox misbehave."""

import logging

import flax.linen as nn
import jax
import numpy as np
import pytest

from codegen2_jax import partitioning
from codegen2_jax.data import vocab
from codegen2_jax.evaluation import during_training, humaneval, infilling, sandbox
from codegen2_jax.evaluation.during_training import COMPLETION, INFILL
from codegen2_jax.model import Decoder, TransformerConfig
from codegen2_jax.sampling import decoding

CONFIG = TransformerConfig(
    vocab_size=8192, embed_dim=32, num_heads=4, num_layers=2, rotary_dim=4, mlp_dim=64
)
SMALL = dict(problems=5, infill_tasks=3, completion_tokens=8, infill_tokens=8, batch_size=4)


@pytest.fixture(scope="module")
def partitioner():
    # The 8 fake devices, the batch split 8 ways (mesh/data_parallel.gin).
    return partitioning.make_partitioner(rules=[("activation_batch", ("data", "fsdp"))])


@pytest.fixture(scope="module")
def vocabulary():
    return vocab.default_vocabulary()


def _evaluator(partitioner, vocabulary, **settings):
    settings = during_training.ExecutionEvalSettings(every=1, **{**SMALL, **settings})
    return during_training.ExecutionEvaluator(
        CONFIG, partitioner, vocabulary, settings, prefix_prompt=False
    )


def _fake_decoding(monkeypatch, completion_of):
    """Decoding replaced by completion_of(problem) and the canonical middle of each fill;
    every call has one batch shape: batch_size 4 rounded up to the 8 data shards."""
    problems = humaneval.load_problems()
    by_prompt = {p["prompt"]: p for p in problems.values()}
    middles = {
        (t["prompt"], t["suffix"]): t["canonical_solution"]
        for t in infilling.load_tasks("single-line")
    }

    def complete(generate, params, vocab, prompts, **kwargs):
        assert len(prompts) == 8
        return [completion_of(by_prompt[p]) for p in prompts]

    def infill(generate, params, vocab, pairs, **kwargs):
        assert len(pairs) == 8
        return [[middles[tuple(pair)]] for pair in pairs]

    monkeypatch.setattr(decoding, "complete", complete)
    monkeypatch.setattr(decoding, "infill", infill)


MISBEHAVING = (
    "    while True:\n        pass\n",
    "    import sys\n    sys.exit(0)\n",
    "    import os\n    os._exit(0)\n",
    "    hog = ' ' * (1 << 34)\n",
)


def test_programs_that_misbehave_fail_and_the_evaluation_returns(
    monkeypatch, partitioner, vocabulary
):
    evaluator = _evaluator(partitioner, vocabulary)
    ids = list(evaluator._problems)
    assert ids == humaneval.spread([f"HumanEval/{i}" for i in range(164)], 5)
    bad = dict(zip(ids, MISBEHAVING, strict=False))  # the fifth keeps its canonical solution
    _fake_decoding(monkeypatch, lambda p: bad.get(p["task_id"], p["canonical_solution"]))
    assert evaluator(params=None) == {COMPLETION: 1 / 5, INFILL: 1.0}


def test_pass_bodies_score_zero(monkeypatch, partitioner, vocabulary):
    _fake_decoding(monkeypatch, lambda p: "    pass\n")
    scores = _evaluator(partitioner, vocabulary, infill_tasks=0)(params=None)
    assert scores == {COMPLETION: 0.0}


def test_a_broken_sandbox_costs_the_evaluation_not_the_run(
    monkeypatch, partitioner, vocabulary, caplog
):
    evaluator = _evaluator(partitioner, vocabulary)
    _fake_decoding(monkeypatch, lambda p: p["canonical_solution"])

    def broken(*args, **kwargs):
        raise sandbox.SandboxError("a process of the run survived")

    monkeypatch.setattr(evaluator._box, "run", broken)
    with caplog.at_level(logging.WARNING):
        assert evaluator(params=None) == {}
    assert "the sandbox failed: a process of the run survived" in caplog.text


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(every=-1), "every must be >= 0"),
        (dict(every=5, problems=0, infill_tasks=0), "nothing to score"),
        (dict(infill_tokens=0), "infill_tokens must be >= 1"),
        (dict(truncation="line"), "truncation 'line' is not one of"),
    ],
)
def test_settings_refuse_what_cannot_run(settings, message):
    with pytest.raises(ValueError, match=message):
        during_training.ExecutionEvalSettings(**settings)


def test_a_tokenizer_without_infill_tokens_is_refused_before_training(partitioner):
    class CodeGen1Tokens:
        decoder_start_id = 0

        def mask_id(self, n):
            raise ValueError("no <mask_1> in this tokenizer")

    with pytest.raises(ValueError, match="no infill tokens .* set infill_tasks = 0"):
        _evaluator(partitioner, CodeGen1Tokens())


@pytest.mark.slow
def test_decoding_on_the_mesh_equals_one_device(partitioner, vocabulary):
    """The sharded, padded, fixed-shape decode gives each prompt what one device gives it."""
    variables = Decoder(CONFIG).init(jax.random.key(0), np.zeros((1, 8), np.int32))
    params = nn.unbox(variables)["params"]
    evaluator = _evaluator(partitioner, vocabulary, problems=3, infill_tasks=2)
    completions = evaluator._completion_samples(params)
    fills = evaluator._infill_samples(params)
    problems = list(evaluator._problems.values())
    one_device = dict(rng=jax.random.key(1), start_id=0)
    expected = decoding.complete(
        decoding.make_generate(CONFIG, max_new_tokens=8),
        params,
        vocabulary,
        [p["prompt"] for p in problems],
        max_new_tokens=8,
        **one_device,
    )
    assert [s.program for s in completions] == [
        p["prompt"] + humaneval.truncate(c) for p, c in zip(problems, expected, strict=True)
    ]
    middles = decoding.infill(
        decoding.make_generate(CONFIG, max_new_tokens=8),
        params,
        vocabulary,
        [[t["prompt"], t["suffix"]] for t in evaluator._tasks],
        max_new_tokens=8,
        **one_device,
    )
    assert [s.program for s in fills] == [
        infilling.program(t, m[0]) for t, m in zip(evaluator._tasks, middles, strict=True)
    ]
    scores = evaluator(params)
    assert set(scores) == {COMPLETION, INFILL}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
