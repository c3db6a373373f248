"""The compiled decode loop, token selection, infill, sharded sampling and the sampling CLI.

Model outputs are compared in fp32 on a tiny model; the sharded run must pick exactly the
tokens the single-device run picks (same keys; jax's random bits do not depend on sharding).
"""

import dataclasses
import json
import subprocess
import sys

import flax.linen as nn
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from codegen2_jax import gin_config, optim, partitioning, train_state
from codegen2_jax.benchmarks import decode_benchmark
from codegen2_jax.checkpointing import checkpointer, hf
from codegen2_jax.data import bpe
from codegen2_jax.model import Decoder, TransformerConfig
from codegen2_jax.sampling import decoding, sample_cli, trained_model

CONFIG = TransformerConfig(
    vocab_size=128, num_layers=2, embed_dim=32, num_heads=4, rotary_dim=4, dtype="float32"
)
PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
NEW = 6


@pytest.fixture(scope="module")
def params():
    model = Decoder(CONFIG)
    return nn.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32)))["params"]


@pytest.fixture(scope="module")
def greedy(params):
    """The greedy generate function and its output on PROMPTS (one compilation, shared)."""
    generate = decoding.make_generate(CONFIG, max_new_tokens=NEW)
    out = generate(
        params, *decoding.left_pad(PROMPTS), *_unlimited(len(PROMPTS)), jax.random.key(0)
    )
    return generate, jax.device_get(out)


def _unlimited(batch, new=NEW):
    """(stop_tokens, max_lengths): no stop ids, `new` tokens per row."""
    return decoding.stop_token_array([[]] * batch), np.full(batch, new, np.int32)


def test_left_pad_right_aligns_prompts_and_rounds_the_width():
    tokens, lengths = decoding.left_pad([[1, 2, 3], [4]], pad_id=0, multiple=4)
    np.testing.assert_array_equal(tokens, [[0, 1, 2, 3], [0, 0, 0, 4]])
    np.testing.assert_array_equal(lengths, [3, 1])
    np.testing.assert_array_equal(
        decoding.stop_token_array([[7], [8, 9]]), [[7, decoding.NO_STOP], [8, 9]]
    )


def test_filter_logits_keeps_the_top_k_and_the_nucleus():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))

    def kept(**kwargs):
        return np.isfinite(np.asarray(decoding.filter_logits(logits, **kwargs)))[0].tolist()

    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.7) == [True, True, False, False]  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert kept(top_p=0.5) == [True, False, False, False]
    assert kept(top_p=0.01) == [True, False, False, False]  # the most likely always stays
    assert kept(top_k=3, top_p=0.9) == [True, True, True, False]


def _full_forward_greedy(params, prefix_prompt: bool) -> np.ndarray:
    """PROMPTS continued NEW tokens by argmax of full forward passes, right padded."""
    forward = jax.jit(Decoder(CONFIG).apply)
    # Right padding to one width: causal attention keeps padding out of earlier logits.
    sequences = np.zeros((len(PROMPTS), max(map(len, PROMPTS)) + NEW), np.int32)
    lengths = np.array([len(p) for p in PROMPTS])
    prefix = (np.arange(sequences.shape[1])[None] < lengths[:, None]).astype(np.int32)
    for row, prompt in enumerate(PROMPTS):
        sequences[row, : len(prompt)] = prompt
    for _ in range(NEW):
        logits = forward(
            {"params": params},
            sequences,
            decoder_causal_attention=prefix if prefix_prompt else None,
        )
        rows = np.arange(len(PROMPTS))
        sequences[rows, lengths] = np.argmax(logits[rows, lengths - 1], axis=-1)
        lengths += 1
    return sequences


def test_greedy_equals_argmax_of_repeated_full_forwards(params, greedy):
    _, out = greedy
    sequences = _full_forward_greedy(params, prefix_prompt=False)
    for row, prompt in enumerate(PROMPTS):
        assert (
            decoding.generated(out, row) == sequences[row, len(prompt) : len(prompt) + NEW].tolist()
        )
    np.testing.assert_array_equal(out.lengths, NEW)


@pytest.mark.parametrize("setting", [dict(top_k=1), dict(top_p=1e-6)])
def test_top_k_one_and_tiny_top_p_sample_the_greedy_tokens(params, greedy, setting):
    generate = decoding.make_generate(CONFIG, max_new_tokens=NEW, temperature=1.0, **setting)
    out = generate(params, *decoding.left_pad(PROMPTS), *_unlimited(3), jax.random.key(3))
    np.testing.assert_array_equal(out.tokens, greedy[1].tokens)


def test_sampling_depends_only_on_the_key(params):
    generate = decoding.make_generate(CONFIG, max_new_tokens=NEW, temperature=1.0)
    inputs = (*decoding.left_pad(PROMPTS), *_unlimited(3))
    first, again, other = (
        generate(params, *inputs, jax.random.key(seed)).tokens for seed in (1, 1, 2)
    )
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_stop_tokens_and_limits_apply_per_row(params, greedy):
    generate, free = greedy
    row0 = decoding.generated(free, 0)
    stop_at = next(i for i in range(1, NEW) if row0[i] not in row0[:i])
    never = next(t for t in range(CONFIG.vocab_size) if t not in decoding.generated(free, 2))
    stops = decoding.stop_token_array([[row0[stop_at]], [], [never]])
    limits = np.array([NEW, 3, NEW], np.int32)
    out = generate(params, *decoding.left_pad(PROMPTS), stops, limits, jax.random.key(0))
    np.testing.assert_array_equal(out.lengths, [stop_at + 1, 3, NEW])
    np.testing.assert_array_equal(out.stopped, [True, False, False])
    assert decoding.generated(out, 0, strip_stop=False) == row0[: stop_at + 1]
    assert decoding.generated(out, 0) == row0[:stop_at]
    np.testing.assert_array_equal(out.tokens[0, stop_at + 1 :], 0)  # pad_id after the end
    np.testing.assert_array_equal(out.tokens[1, 3:], 0)


class FakeVocabulary:
    """Characters are their code points; specials sit above them."""

    eos_id, sep_id, eom_id, num_masks = 1000, 1001, 1002, 2

    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)

    def mask_id(self, n):
        return 2000 - n


class SmallVocabulary(FakeVocabulary):
    """FakeVocabulary's layout inside CONFIG's 128 ids: specials 100..102, masks 127, 126."""

    eos_id, sep_id, eom_id, num_masks = 100, 101, 102, 2

    def mask_id(self, n):
        return 128 - n


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_completion_never_generates_the_infill_tokens(params, temperature):
    """The CodeGen2 mix trains <mask_N>, <sep> and <eom> as targets; completion masks them."""
    v = SmallVocabulary()
    favoured = [v.mask_id(1), v.mask_id(2), v.sep_id, v.eom_id]
    bias = params["lm_head"]["bias"].at[jnp.array(favoured)].add(50.0)
    biased = {**params, "lm_head": {**params["lm_head"], "bias": bias}}
    generate = decoding.make_generate(CONFIG, max_new_tokens=NEW, temperature=temperature)
    inputs = decoding.left_pad([[5, 6, 7]])
    free = jax.device_get(generate(biased, *inputs, *_unlimited(1), jax.random.key(0)))
    assert set(decoding.generated(free, 0)) <= set(favoured)  # the bias wins unmasked
    texts = decoding.complete(
        generate, biased, v, ["ab", "c"], rng=jax.random.key(0), max_new_tokens=NEW
    )
    assert all(len(t) == NEW for t in texts)
    assert not {ord(c) for t in texts for c in t} & set(favoured)


def test_infill_prompt_layout():
    v = FakeVocabulary()
    assert decoding.infill_prompt([[10, 11], [12]], v) == [10, 11, 1999, 12, 1000, 1001, 1999]
    three = decoding.infill_prompt([[10], [11], [12]], v)
    assert three == [10, 1999, 11, 1998, 12, 1000, 1001, 1999]
    with pytest.raises(ValueError):
        decoding.infill_prompt([[10]], v)


def test_infill_fills_masks_one_at_a_time_and_returns_the_middles():
    v, calls = FakeVocabulary(), []
    scripted = iter([[[ord("x"), v.eom_id], [ord("y"), ord("z")]], [[ord("w"), v.eom_id], []]])

    def generate(params, tokens, lengths, stops, limits, rng):
        calls.append(
            ([t[-n:].tolist() for t, n in zip(tokens, lengths, strict=True)], limits.tolist())
        )
        rows = next(scripted)
        out = np.zeros((2, 4), np.int32)
        for r, ids in enumerate(rows):
            out[r, : len(ids)] = ids
        stopped = np.array([bool(ids) and ids[-1] == v.eom_id for ids in rows])
        return decoding.SampleOutput(out, np.array([len(ids) for ids in rows]), stopped)

    fills = decoding.infill(
        generate, None, v, [["a", "b", "c"], ["d", "e"]], rng=jax.random.key(0), max_new_tokens=4
    )
    assert fills == [["x", "w"], ["yz"]]  # "yz" hit the limit without <eom>: kept as it is
    first, second = calls
    assert first[0][0] == [97, 1999, 98, 1998, 99, 1000, 1001, 1999]
    assert second[0][0] == first[0][0] + [ord("x"), v.eom_id, 1998]
    assert first[1] == [4, 4] and second[1] == [4, 0]  # problem 2 has no second mask


def test_prompts_start_with_the_decoder_start_token_when_asked():
    v, prompts = FakeVocabulary(), []

    def generate(params, tokens, lengths, stops, limits, rng, suppressed_ids=None):
        prompts.extend(t[-n:].tolist() for t, n in zip(tokens, lengths, strict=True))
        return decoding.SampleOutput(
            np.full((len(tokens), 1), v.eom_id),
            np.ones(len(tokens), int),
            np.ones(len(tokens), bool),
        )

    common = dict(rng=jax.random.key(0), max_new_tokens=1)
    decoding.complete(generate, None, v, ["ab"], **common)
    decoding.complete(generate, None, v, ["ab"], start_id=0, **common)
    decoding.infill(generate, None, v, [["a", "b", "c"]], start_id=7, **common)
    assert prompts == [
        [97, 98],
        [0, 97, 98],
        [7, 97, 1999, 98, 1998, 99, 1000, 1001, 1999],
        # The second round: an empty first middle, <eom>, <mask_2>; the start token stays first.
        [7, 97, 1999, 98, 1998, 99, 1000, 1001, 1999, 1002, 1998],
    ]


def test_sharded_generate_equals_single_device(params):
    prompts = [[3 + r] * (2 + r % 4) for r in range(8)]  # eight rows: one per data shard
    inputs = (*decoding.left_pad(prompts), *_unlimited(8, new=4), jax.random.key(5))
    setting = dict(max_new_tokens=4, temperature=1.0, top_k=20, top_p=0.9)
    single = decoding.make_generate(CONFIG, **setting)(params, *inputs)
    gin_config.parse(["mesh/fsdp_tp.gin"])
    partitioner = gin_config.configured(partitioning.make_partitioner)()
    sharded = decoding.make_generate(CONFIG, partitioner=partitioner, **setting)
    _, shardings = train_state.param_shardings(Decoder(CONFIG), (1, 1), partitioner)
    out = sharded(jax.device_put(params, shardings), *inputs)
    assert len(out.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(out.tokens, single.tokens)
    np.testing.assert_array_equal(out.lengths, single.lengths)


SAVED_GIN = """from __gin__ import dynamic_registration
from codegen2_jax.model import config
from tasks import registry

# Macros:
# ==============================================================================
EVAL_TASKS = ['stdlib_py_v1_causal',
 'stdlib_py_v1_span_infill']
TASK = @registry.task_name()
VOCAB = %VOCAB_SIZE
VOCAB_SIZE = 128

# Parameters for config.TransformerConfig:
# ==============================================================================
config.TransformerConfig.embed_dim = 32
config.TransformerConfig.num_heads = 4
config.TransformerConfig.num_layers = 2
config.TransformerConfig.rotary_dim = 4
config.TransformerConfig.vocab_size = %VOCAB
registry.task_name.corpus = 'stdlib_py'
"""


def test_prefix_lm_greedy_reads_the_prompt_as_a_bidirectional_prefix(params, greedy):
    generate = decoding.make_generate(CONFIG, max_new_tokens=NEW, prefix_prompt=True)
    inputs = (*decoding.left_pad(PROMPTS), *_unlimited(len(PROMPTS)), jax.random.key(0))
    out = jax.device_get(generate(params, *inputs))
    sequences = _full_forward_greedy(params, prefix_prompt=True)
    for row, prompt in enumerate(PROMPTS):
        assert (
            decoding.generated(out, row) == sequences[row, len(prompt) : len(prompt) + NEW].tolist()
        )
    # Reading the prompt bidirectionally changes what is generated, so the test can fail.
    assert not np.array_equal(out.tokens, greedy[1].tokens)


def _save_trained(directory, gin_text, run):
    """A step 7 of CONFIG's model saved with gin_text and run, the shipped tokenizer kept."""
    from codegen2_jax.data import vocab

    partitioner = partitioning.make_partitioner(rules=(), data=1, devices=jax.devices()[:1])
    optimizer = optim.make_optimizer(warmup_steps=1, total_steps=10)
    state = train_state.init_train_state(Decoder(CONFIG), optimizer, (1, 8), partitioner, 0)
    with checkpointer.Checkpointer(directory, async_save=False) as ckpt:
        ckpt.save(7, state, b"", gin_text, run)
    vocab.save_vocabulary(vocab.default_vocabulary(), str(directory / vocab.SAVED_VOCABULARY_DIR))


def _shipped_tokenizer_run(prefix_lm: bool) -> trained_model.RunRecord:
    from codegen2_jax.data import vocab

    shipped = trained_model.vocabulary_record(vocab.default_vocabulary())
    return trained_model.RunRecord(CONFIG, prefix_lm, "stdlib_py_v1_prefix_lm", (), shipped)


def test_a_step_is_rebuilt_from_its_run_record_whatever_its_gin_text_says(tmp_path):
    # The gin text names no model and a causal OBJECTIVE: the record alone decides.
    run = _shipped_tokenizer_run(prefix_lm=True)
    _save_trained(tmp_path, "OBJECTIVE = 'causal'\n", run.to_json())
    trained = trained_model.load(str(tmp_path))
    assert (trained.config, trained.prefix_prompt, trained.step) == (CONFIG, True, 7)
    assert trained_model.saved_run(str(tmp_path)) == run
    assert trained_model.vocabulary_record(trained.vocabulary) == run.vocabulary


def test_a_step_whose_kept_tokenizer_is_not_the_recorded_one_is_refused(tmp_path):
    run = _shipped_tokenizer_run(prefix_lm=False)
    other = dataclasses.replace(run, vocabulary={**run.vocabulary, "sha256": "0" * 64})
    _save_trained(tmp_path, "", other.to_json())
    with pytest.raises(ValueError, match="does not hold the tokenizer the run trained with"):
        trained_model.load(str(tmp_path))


def test_a_step_saved_before_the_run_record_is_read_from_its_gin_text(tmp_path):
    _save_trained(tmp_path, SAVED_GIN + "OBJECTIVE = 'prefix_lm'\n", None)
    rewrite_as_format_2(tmp_path / "7")
    trained = trained_model.load(str(tmp_path))
    assert (trained.config, trained.prefix_prompt, trained.step) == (CONFIG, True, 7)
    assert trained_model.saved_run(str(tmp_path)).train_task is None


def rewrite_as_format_2(step_dir):
    """The manifest as format 2 wrote it: no run record, resealed."""
    path = step_dir / checkpointer.MANIFEST / checkpointer.MANIFEST_FILE
    body = json.loads(path.read_text())
    del body["sha256"], body["run"]
    body.update(format_version=2)
    path.write_text(json.dumps({**body, "sha256": checkpointer._digest(body)}))


def test_older_checkpoint_reader_takes_prefix_lm_from_the_objective_macro():
    read = trained_model.run_record_of_older_checkpoint
    assert not read(SAVED_GIN).prefix_lm
    assert not read(SAVED_GIN + "OBJECTIVE = 'codegen2_mix'\n").prefix_lm
    assert read(SAVED_GIN + "OBJECTIVE = 'prefix_lm'\n").prefix_lm


def test_saved_macro_reads_literal_values_of_a_config_text():
    text = "PL_EVAL_TASK = 'the_stack_python_v1_causal'\nEVAL_TASKS = [%PL_EVAL_TASK]\n"
    assert gin_config.saved_macro(text, "PL_EVAL_TASK") == "the_stack_python_v1_causal"
    assert gin_config.saved_macro(text, "EVAL_TASKS") is None  # a reference, not a literal
    assert gin_config.saved_macro(text, "MISSING") is None


def test_older_checkpoint_reader_reads_only_the_model_bindings():
    # `tasks` is never imported: its statements are dropped before gin sees them.
    assert trained_model.run_record_of_older_checkpoint(SAVED_GIN).model == CONFIG


def test_run_record_round_trips_through_json():
    run = trained_model.RunRecord(CONFIG, True, "t", ("a", "b"), {"file": "code.model"})
    assert trained_model.RunRecord.from_json(json.loads(json.dumps(run.to_json()))) == run


def test_model_config_with_a_field_it_does_not_have_is_refused():
    fields = {**CONFIG.to_dict(), "num_experts": 8}
    with pytest.raises(ValueError, match="TransformerConfig has no field num_experts"):
        TransformerConfig.from_dict(fields)
    assert TransformerConfig.from_dict(CONFIG.to_dict()) == CONFIG


@pytest.mark.slow
def test_cli_completes_and_infills_from_a_training_checkpoint(tmp_path, capsys):
    gin_config.parse(["models/tiny.gin"], ["VOCAB_SIZE = 8192"])  # the shipped vocabulary
    config = gin_config.configured(TransformerConfig)()
    partitioner = partitioning.make_partitioner(rules=(), data=1, devices=jax.devices()[:1])
    optimizer = optim.make_optimizer(warmup_steps=1, total_steps=10)
    state = train_state.init_train_state(Decoder(config), optimizer, (1, 8), partitioner, 0)
    with checkpointer.Checkpointer(tmp_path, async_save=False) as ckpt:
        ckpt.save(7, state, b"", gin.config_str())
    common = ["--checkpoint_dir", str(tmp_path), "--max_new_tokens", "5"]
    sample_cli.main([*common, "--prompt", "def add(a, b):"])
    completion = capsys.readouterr().out  # the code, for people
    assert completion.startswith("def add(a, b):") and completion.endswith("\n")
    sample_cli.main(
        [*common, "--json", "--prefix", "def f(x):\n", "--suffix", "    return y\n"]
        + ["--temperature", "0.8"]
    )
    (infill,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert infill["suffix"] == "    return y\n" and isinstance(infill["middle"], str)


def test_cli_prints_each_samples_code_or_with_json_its_parts(monkeypatch, capsys):
    fills = [{"prefix": "def f(", "suffix": "):\n", "middle": m} for m in ("x", "a, b")]
    monkeypatch.setattr(sample_cli, "run", lambda args: fills)
    args = ["--checkpoint_dir", "unused", "--prefix", "def f(", "--suffix", "):\n"]
    sample_cli.main(args)
    assert capsys.readouterr().out == "--- sample 1/2\ndef f(x):\n--- sample 2/2\ndef f(a, b):\n"
    sample_cli.main([*args, "--json"])
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == fills
    monkeypatch.setattr(sample_cli, "run", lambda args: [{"prompt": "x =", "completion": " 1"}])
    sample_cli.main(["--checkpoint_dir", "unused", "--prompt", "x ="])
    assert capsys.readouterr().out == "x = 1\n"


def _save_character_tokenizer(directory):
    """A transformers tokenizer with CodeGen2's special tokens: one token per character."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    specials = ["<|endoftext|>", "<sep>", "<eom>", "<mask_1>"]
    pieces = specials + [chr(c) for c in range(32, 127)] + ["\n"]
    model = tokenizers.models.WordLevel(
        {p: i for i, p in enumerate(pieces)}, unk_token="<|endoftext|>"
    )
    tokenizer = tokenizers.Tokenizer(model)
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Split("", "isolated")
    tokenizer.decoder = tokenizers.decoders.Fuse()
    transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=specials[0], additional_special_tokens=specials[1:]
    ).save_pretrained(directory)


@pytest.mark.slow
def test_cli_infills_with_an_hf_checkpoint_and_its_tokenizer(params, tmp_path, capsys):
    _save_character_tokenizer(tmp_path)
    hf.export_checkpoint(params, CONFIG, tmp_path)
    vocab = bpe.read_local(str(tmp_path))
    assert (vocab.eos_id, vocab.sep_id, vocab.eom_id, vocab.mask_id(1)) == (0, 1, 2, 3)
    assert vocab.decode(vocab.encode("x = 1")) == "x = 1"
    args = ["--hf_dir", str(tmp_path), "--hf_tokenizer", "--max_new_tokens", "4"]
    sample_cli.main([*args, "--json", "--prefix", "def f(", "--suffix", "):", "--num_samples", "2"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prefix"] for r in records] == ["def f(", "def f("]
    assert records[0]["middle"] == records[1]["middle"]  # greedy: both samples agree


def test_decode_benchmark_prints_tokens_per_second(capsys):
    decode_benchmark.main(
        [
            "--gin_file=models/tiny.gin",
            "--gin.VOCAB_SIZE=128",
            "--batch=2",
            "--prompt_len=8",
            "--new_tokens=3",
            "--repeats=1",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert (result["batch"], result["new_tokens"]) == (2, 3) and result["tokens_per_s"] > 0


def test_sampling_modules_import_neither_tensorflow_nor_seqio():
    code = (
        "import sys; import codegen2_jax.sampling.decoding, codegen2_jax.sampling.sample_cli, "
        "codegen2_jax.benchmarks.decode_benchmark; "
        "print(sorted({'tensorflow', 'seqio'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
