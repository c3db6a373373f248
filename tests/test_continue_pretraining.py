"""Continued pretraining end to end: a Hugging Face CodeGen directory and its byte-level BPE
tokenizer in, INIT_FROM_HF training on the CodeGen2 mix, a Hugging Face directory out that
transformers loads with its tokenizer and that generates what the project's sampler does."""

import logging

import gin
import jax
import numpy as np
import pytest
import torch
import transformers

from codegen2_jax import gin_config, metrics, train
from codegen2_jax.checkpointing import hf, hf_cli
from codegen2_jax.data import vocab
from codegen2_jax.model import Decoder
from codegen2_jax.sampling import decoding, sample_cli
from tests.data import tiny_bpe

STEPS = 10
SEQ_LEN, BATCH_SIZE = 64, 8  # experiments/tiny_cpu.gin
PROMPT = "def add(a, b):\n    "
PREFIX, SUFFIX = "def add(a, b):\n    return ", "\n\n\nprint(add(1, 2))\n"


def _hf_config(**overrides) -> transformers.CodeGenConfig:
    """models/tiny.gin as a CodeGenConfig, over the tiny BPE tokenizer's ids."""
    fields = dict(
        vocab_size=tiny_bpe.VOCAB_SIZE,
        n_layer=2,
        n_embd=64,
        n_head=4,
        rotary_dim=8,
        n_positions=256,
        n_ctx=256,
        bos_token_id=None,
        eos_token_id=None,
    )
    return transformers.CodeGenConfig(**{**fields, **overrides})


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """A random tiny CodeGenForCausalLM saved with save_pretrained, its tokenizer beside it."""
    directory = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    transformers.CodeGenForCausalLM(_hf_config()).save_pretrained(directory)
    tiny_bpe.write(directory)
    return directory


def _bindings(model_dir, init_from_hf, corpus_dir, steps=STEPS, *more):
    return [
        f"MODEL_DIR = '{model_dir}'",
        f"INIT_FROM_HF = '{init_from_hf}'",
        f"VOCAB_SIZE = {tiny_bpe.VOCAB_SIZE}",
        f"TRAIN_STEPS = {steps}",
        f"tasks.stdlib_data_dir.path = '{corpus_dir}'",
        "train.train.log_every = 1",
        "optim.make_optimizer.total_steps = 12",
        *more,
    ]


def _train(bindings):
    import tasks  # noqa: F401

    gin_config.parse(["experiments/tiny_cpu.gin"], bindings)
    gin_config.configured(train.train)(config_text=gin.config_str())  # as main records it


def _first_batch(task: str) -> dict:
    """The run's first global batch: its pipeline is deterministic in the seed (0)."""
    data = train._host_batches(task, SEQ_LEN, BATCH_SIZE, 0, None, False)
    return next(data)


def _transformers_loss(model, batch: dict) -> float:
    """Weighted cross-entropy of a packed batch, each segment run alone from position 0."""
    assert not np.any(batch.get("decoder_causal_attention", 0)), "the CodeGen2 mix is causal"
    total, weight = 0.0, 0.0
    for row in range(batch["decoder_target_tokens"].shape[0]):
        segments = batch["decoder_segment_ids"][row]
        for segment in np.unique(segments[segments > 0]):
            at = segments == segment
            inputs = torch.tensor(batch["decoder_input_tokens"][row][at][None].astype(np.int64))
            with torch.no_grad():
                logits = model(input_ids=inputs).logits[0].double()
            targets = torch.tensor(batch["decoder_target_tokens"][row][at].astype(np.int64))
            ce = torch.nn.functional.cross_entropy(logits, targets, reduction="none").numpy()
            weights = batch["decoder_loss_weights"][row][at]
            total += float(np.sum(ce * weights))
            weight += float(np.sum(weights))
    return total / weight


def test_continue_pretraining_then_export_round_trip(tmp_path, hf_dir, corpus_dir, caplog):
    run = tmp_path / "run"
    caplog.set_level(logging.INFO)
    _train(_bindings(run, hf_dir, corpus_dir))
    assert f"weights from INIT_FROM_HF {hf_dir}" in caplog.text
    losses = {s: m["train/loss"] for s, m in metrics.read_metrics(run).items()}
    assert sorted(losses) == list(range(1, STEPS + 1))

    # Step 1's loss is computed before any update: the imported model's, on the first batch.
    released = transformers.CodeGenForCausalLM.from_pretrained(hf_dir).eval()
    expected = _transformers_loss(released, _first_batch("stdlib_py_v1_codegen2_mix"))
    assert losses[1] == pytest.approx(expected, rel=1e-5), (losses[1], expected)

    out = tmp_path / "exported"
    hf_cli.main(
        ["export", f"--checkpoint_dir={run / 'checkpoints'}", f"--out_dir={out}"]
        + ["--max_shard_size=300KB"]  # several weights files and their index
    )
    assert (out / "model.safetensors.index.json").is_file()
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1
    tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    exported = transformers.CodeGenForCausalLM.from_pretrained(out, local_files_only=True).eval()

    loaded = sample_cli.load_checkpoint(str(run / "checkpoints"))
    ours = loaded.vocabulary
    assert ours == vocab.load_vocabulary(str(hf_dir))  # the tokenizer came from INIT_FROM_HF
    eos = ours.eos_id
    assert exported.config.eos_token_id == exported.generation_config.eos_token_id == eos
    assert exported.config.bos_token_id == loaded.start_id == eos

    # The prompt the project's sampler builds is what the exported tokenizer gives.
    prompt_ids = [loaded.start_id, *ours.encode(PROMPT)]
    assert tokenizer(PROMPT).input_ids == prompt_ids
    infill_ids = [
        loaded.start_id,
        *decoding.infill_prompt([ours.encode(PREFIX), ours.encode(SUFFIX)], ours),
    ]
    hf_infill = PREFIX + "<mask_1>" + SUFFIX + "<|endoftext|>" + "<sep>" + "<mask_1>"
    assert tokenizer(hf_infill).input_ids == infill_ids

    # The exported weights compute the trained model's logits.
    with torch.no_grad():
        hf_logits = exported(input_ids=torch.tensor([prompt_ids])).logits[0].numpy()
    our_logits = Decoder(loaded.config).apply({"params": loaded.params}, np.array([prompt_ids]))
    np.testing.assert_allclose(hf_logits, np.asarray(our_logits)[0], rtol=1e-4, atol=1e-4)

    new_tokens = 24
    generate = decoding.make_generate(loaded.config, max_new_tokens=new_tokens)
    tokens, lengths = decoding.left_pad([prompt_ids])
    out_ids = jax.device_get(
        generate(
            loaded.params,
            tokens,
            lengths,
            decoding.stop_token_array([[eos]]),
            np.full(1, new_tokens, np.int32),
            jax.random.key(0),
        )
    )
    project = decoding.generated(out_ids, 0, strip_stop=False)
    hf_ids = exported.generate(
        torch.tensor([prompt_ids]),
        attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
        max_new_tokens=new_tokens,
        do_sample=False,
    )[0, len(prompt_ids) :].tolist()
    if eos in hf_ids:  # generate pads after eos; the project's stops there
        hf_ids = hf_ids[: hf_ids.index(eos) + 1]
    assert len(project) > 0 and hf_ids == project


def test_resuming_wins_over_init_from_hf(tmp_path, hf_dir, corpus_dir, caplog):
    run = tmp_path / "run"
    _train(_bindings(run, hf_dir, corpus_dir, 6))
    caplog.set_level(logging.INFO)
    _train(_bindings(run, hf_dir, corpus_dir, 8))
    assert f"resumed from step 6 (INIT_FROM_HF {hf_dir} is not used)" in caplog.text
    assert sorted(metrics.read_metrics(run)) == list(range(1, 9))


@pytest.mark.parametrize(
    "change, message",
    [
        ({"n_layer": 3}, "num_layers: checkpoint 3, model 2"),
        ({"n_embd": 96, "n_head": 6}, "embed_dim: checkpoint 96, model 64"),
        ({"vocab_size": 2048}, "vocab_size: checkpoint 2048, model 1024"),
    ],
)
def test_a_checkpoint_of_another_shape_stops_before_compiling(
    tmp_path, corpus_dir, change, message, caplog
):
    other = tmp_path / "other"
    transformers.CodeGenForCausalLM(_hf_config(**change)).save_pretrained(other)
    tiny_bpe.write(other)
    caplog.set_level(logging.DEBUG)
    jax.config.update("jax_log_compiles", True)
    try:
        with pytest.raises(ValueError, match=f"INIT_FROM_HF {other} does not fit") as error:
            _train(_bindings(tmp_path / "run", other, corpus_dir))
    finally:
        jax.config.update("jax_log_compiles", False)
    assert message in str(error.value)
    assert "Compiling" not in caplog.text


def test_init_from_hf_needs_a_tokenizer_the_model_covers(tmp_path, hf_dir, corpus_dir):
    shipped = str(vocab.DEFAULT_MODEL_FILE)
    with pytest.raises(ValueError, match="VOCAB_SIZE 1024 is smaller than the tokenizer's 8192"):
        _train(_bindings(tmp_path / "a", hf_dir, corpus_dir, 2, f"VOCABULARY = '{shipped}'"))
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((hf_dir / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json: set VOCABULARY"):
        _train(_bindings(tmp_path / "b", bare, corpus_dir, 2))
    assert hf.read_config(bare)["vocab_size"] == tiny_bpe.VOCAB_SIZE
