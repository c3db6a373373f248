"""Tests for hf.py and hf_cli.py: logits parity with transformers' CodeGenForCausalLM both ways."""

import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from codegen2_jax.checkpointing import hf, hf_cli
from codegen2_jax.model import Decoder, TransformerConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
TINY = TransformerConfig(
    vocab_size=256, num_layers=2, embed_dim=128, num_heads=8, rotary_dim=8, max_len=64
)


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


def our_logits(params, config: TransformerConfig, tokens: np.ndarray) -> np.ndarray:
    return np.asarray(Decoder(config).apply({"params": params}, jnp.asarray(tokens)))


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


@pytest.fixture(scope="module")
def tokens() -> np.ndarray:
    return np.random.default_rng(0).integers(0, TINY.vocab_size, (2, 48))


@pytest.fixture(scope="module")
def hf_model():
    """A random tiny CodeGenForCausalLM whose LayerNorms and biases are not the trivial init."""
    torch.manual_seed(0)
    config = transformers.CodeGenConfig(**hf.hf_config_dict(TINY))
    model = transformers.CodeGenForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
            else:  # larger than the 0.02 init so attention patterns are far from uniform
                p.normal_(0.0, 0.2 if name.endswith("bias") else 0.1)
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf")
    hf_model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="module")
def mp8_dir(hf_dir, tmp_path_factory):
    """hf_dir with its qkv weights regrouped the way the CodeGen2 releases store them."""
    path = tmp_path_factory.mktemp("hf_mp8")
    tensors = hf.load_hf_tensors(hf_dir)
    for name in tensors:
        if name.endswith("qkv_proj.weight"):
            tensors[name] = hf.regroup_qkv(tensors[name], 4, 8)
    safetensors.numpy.save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    hf_config = json.loads((hf_dir / "config.json").read_text())
    (path / "config.json").write_text(json.dumps(hf_config))
    return path


def random_params(config: TransformerConfig, seed: int = 0) -> dict:
    """Initialised params with every leaf (LayerNorm scales and biases too) perturbed."""
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = Decoder(config).init(jax.random.key(seed), tokens)["params"]
    rng = np.random.default_rng(seed)
    noise = lambda x: np.asarray(x) + 0.1 * rng.standard_normal(x.shape, np.float32)
    return jax.tree.map(noise, nn.unbox(params))


@pytest.mark.parametrize("scan_layers", [True, False])
@pytest.mark.parametrize("mp_num, directory", [(4, "hf_dir"), (8, "mp8_dir")])
def test_import_matches_transformers(request, hf_model, tokens, mp_num, directory, scan_layers):
    checkpoint = request.getfixturevalue(directory)  # saved with mp_num's qkv layout
    params, config = hf.import_checkpoint(checkpoint, mp_num=mp_num, scan_layers=scan_layers)
    diff = max_diff(our_logits(params, config, tokens), hf_logits(hf_model, tokens))
    print(f"import mp_num={mp_num} scan_layers={scan_layers}: max abs logit diff {diff:.2e}")
    assert diff <= TOLERANCE


def test_wrong_mp_num_changes_logits(hf_model, mp8_dir, tokens):
    """The grouping matters: reading an 8-block checkpoint as 4 blocks is silently wrong."""
    params, config = hf.import_checkpoint(mp8_dir, mp_num=4)
    assert max_diff(our_logits(params, config, tokens), hf_logits(hf_model, tokens)) > 0.1


def test_regroup_qkv_round_trips():
    weight = np.random.default_rng(0).normal(size=(3 * 128, 128))
    regrouped = hf.regroup_qkv(weight, 4, 8)
    assert not np.array_equal(regrouped, weight)
    np.testing.assert_array_equal(hf.regroup_qkv(regrouped, 8, 4), weight)


def test_infer_mp_num():
    assert hf.infer_mp_num({}) == 4
    assert hf.infer_mp_num({"auto_map": {"AutoModelForCausalLM": "modeling_codegen.X"}}) == 8
    assert hf.infer_mp_num({"auto_map": {}, "mp_num": 4}) == 4


@pytest.mark.parametrize("scan_layers", [True, False])
def test_export_loads_in_transformers(tmp_path, tokens, scan_layers):
    config = dataclasses.replace(TINY, scan_layers=scan_layers)
    params = random_params(config)
    hf.export_checkpoint(params, config, tmp_path, mp_num=4)
    model, info = transformers.CodeGenForCausalLM.from_pretrained(
        tmp_path, output_loading_info=True
    )
    assert not any(info.values()), info
    diff = max_diff(our_logits(params, config, tokens), hf_logits(model.eval(), tokens))
    print(f"export mp_num=4 scan_layers={scan_layers}: max abs logit diff {diff:.2e}")
    assert diff <= TOLERANCE


@pytest.mark.parametrize("mp_num", [4, 8])
@pytest.mark.parametrize("scan_layers", [True, False])
def test_export_import_round_trip_is_exact(tmp_path, mp_num, scan_layers):
    config = dataclasses.replace(TINY, scan_layers=scan_layers)
    params = random_params(config)
    hf.export_checkpoint(params, config, tmp_path, mp_num=mp_num)
    restored, restored_config = hf.import_checkpoint(tmp_path, scan_layers=scan_layers)
    assert restored_config == config
    jax.tree.map(np.testing.assert_array_equal, restored, params)


def test_import_reads_sharded_index(hf_model, tmp_path, tokens):
    hf_model.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    params, config = hf.import_checkpoint(tmp_path, mp_num=4)
    assert max_diff(our_logits(params, config, tokens), hf_logits(hf_model, tokens)) <= TOLERANCE


def test_import_reads_pytorch_bin(hf_model, tmp_path, tokens):
    torch.save(hf_model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(hf.hf_config_dict(TINY)))
    params, config = hf.import_checkpoint(tmp_path, mp_num=4)
    assert max_diff(our_logits(params, config, tokens), hf_logits(hf_model, tokens)) <= TOLERANCE


def write_checkpoint(hf_dir, out, edit) -> None:
    tensors = hf.load_hf_tensors(hf_dir)
    edit(tensors)
    safetensors.numpy.save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    (out / "config.json").write_text((hf_dir / "config.json").read_text())


def test_missing_tensor_is_named(hf_dir, tmp_path):
    write_checkpoint(hf_dir, tmp_path, lambda t: t.pop("transformer.h.1.mlp.fc_in.bias"))
    with pytest.raises(ValueError, match=r"missing tensor transformer\.h\.1\.mlp\.fc_in\.bias"):
        hf.import_checkpoint(tmp_path, mp_num=4)


def test_unexpected_tensor_is_named(hf_dir, tmp_path):
    write_checkpoint(hf_dir, tmp_path, lambda t: t.update({"extra.weight": np.zeros(3)}))
    with pytest.raises(ValueError, match=r"unexpected tensor extra\.weight"):
        hf.import_checkpoint(tmp_path, mp_num=4)


def test_legacy_attention_buffers_are_ignored(hf_dir, tmp_path):
    """Checkpoints from older transformers versions store attn.causal_mask / masked_bias."""

    def add_buffers(tensors):
        tensors["transformer.h.0.attn.causal_mask"] = np.tril(np.ones((1, 1, 64, 64), bool))
        tensors["transformer.h.0.attn.masked_bias"] = np.array(-1e9, np.float32)

    write_checkpoint(hf_dir, tmp_path, add_buffers)
    params, _ = hf.import_checkpoint(tmp_path, mp_num=4)
    jax.tree.map(np.testing.assert_array_equal, params, hf.import_checkpoint(hf_dir, mp_num=4)[0])


def test_misshaped_tensor_names_both_shapes(hf_dir, tmp_path):
    def truncate(tensors):
        tensors["transformer.h.0.attn.out_proj.weight"] = np.zeros((128, 64), np.float32)

    write_checkpoint(hf_dir, tmp_path, truncate)
    expected = (
        r"transformer\.h\.0\.attn\.out_proj\.weight has shape \(128, 64\), expected \(128, 128\)"
    )
    with pytest.raises(ValueError, match=expected):
        hf.import_checkpoint(tmp_path, mp_num=4)


def test_cli_import_then_export(hf_model, hf_dir, tmp_path, tokens):
    params_file = tmp_path / "params.msgpack"
    hf_cli.main(["import", f"--hf_dir={hf_dir}", f"--out={params_file}", "--no-scan_layers"])
    hf_cli.main(["export", f"--params={params_file}", f"--out_dir={tmp_path / 'hf'}"])
    model = transformers.CodeGenForCausalLM.from_pretrained(tmp_path / "hf").eval()
    np.testing.assert_allclose(hf_logits(model, tokens), hf_logits(hf_model, tokens), atol=1e-6)
