"""Hugging Face interop: CodeGen / CodeGen2 checkpoints to and from our Decoder's parameter tree.

A checkpoint directory holds config.json plus model.safetensors (or shards listed in
model.safetensors.index.json; pytorch_model.bin is read only where torch is importable).
Tensor names and layouts are those of transformers' CodeGenForCausalLM: Linear weights are
[out, in], so every kernel is transposed on the way through.

The fused qkv_proj weight [3 * d, d] is stored in mp_num blocks, the model-parallel shards the
original TPU training used; each block holds d / mp_num output channels of q, then v, then k:

    rows [b * 3 * local, ...) = q_b | v_b | k_b,   local = d / mp_num, b = 0 .. mp_num - 1

and q (likewise k, v) is the concatenation q_0 | q_1 | ..., split into heads of head_dim
channels. transformers' built-in forward pass hard-codes mp_num = 4 (the CodeGen 1 releases);
the CodeGen2 releases were saved with mp_num = 8 and ship remote code that reads them that way.
Importing the wrong grouping loads without error but computes garbage, so import_checkpoint
takes mp_num explicitly, or infers it (see infer_mp_num). export_checkpoint defaults to 4, the
only grouping that CodeGenForCausalLM.from_pretrained runs correctly without trust_remote_code.

Imported parameters are host numpy float32 arrays (fp16 / bf16 checkpoints are upcast);
jax.device_put places or shards them.
"""

from __future__ import annotations

import json
import pathlib
import re
from collections.abc import Iterator, Mapping

import flax.linen as nn
import huggingface_hub
import jax
import numpy as np
import safetensors.numpy
from etils import epath

from codegen2_jax.model.config import TransformerConfig

CONFIG_FILE = "config.json"
GENERATION_CONFIG_FILE = "generation_config.json"
GENERATION_IDS = ("bos_token_id", "eos_token_id", "pad_token_id")
MAX_SHARD_SIZE = "5GB"  # transformers' save_pretrained default for a weights file
SAFETENSORS_FILE = "model.safetensors"
INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
HF_MP_NUM = 4
CODEGEN2_MP_NUM = 8
CODEGEN_EOS_ID = 50256  # <|endoftext|> in the CodeGen tokenizer, transformers' default too.
TANH_GELUS = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")
# Buffers, not parameters, that checkpoints from older transformers versions store.
_IGNORED_TENSORS = re.compile(r"transformer\.h\.\d+\.attn\.(causal_mask|masked_bias)")


def config_from_hf(hf_config: Mapping, *, scan_layers: bool = True) -> TransformerConfig:
    """The TransformerConfig of a CodeGenConfig dictionary (the contents of config.json).

    Raises:
      ValueError: the config describes something our Decoder cannot compute (another model
        type, a non-tanh gelu, tied embeddings).
    """
    if hf_config.get("model_type", "codegen") != "codegen":
        raise ValueError(f"model_type {hf_config['model_type']!r} is not 'codegen'")
    activation = hf_config.get("activation_function", "gelu_new")
    if activation not in TANH_GELUS:
        raise ValueError(f"activation_function {activation!r} is not one of {TANH_GELUS}")
    if hf_config.get("tie_word_embeddings", False):
        raise ValueError("tie_word_embeddings is set, but CodeGen's lm_head is untied")
    embed_dim, num_heads = hf_config["n_embd"], hf_config["n_head"]
    return TransformerConfig(
        vocab_size=hf_config["vocab_size"],
        num_layers=hf_config["n_layer"],
        embed_dim=embed_dim,
        num_heads=num_heads,
        rotary_dim=hf_config.get("rotary_dim") or embed_dim // num_heads,
        mlp_dim=hf_config.get("n_inner") or 0,
        max_len=hf_config.get("n_positions", 2048),
        layer_norm_epsilon=hf_config.get("layer_norm_epsilon", 1e-5),
        scan_layers=scan_layers,
    )


def hf_config_dict(
    config: TransformerConfig,
    *,
    mp_num: int = HF_MP_NUM,
    token_ids: Mapping[str, int] | None = None,
) -> dict:
    """The CodeGenConfig dictionary (config.json) of a model.

    Args:
      config: the model's TransformerConfig.
      mp_num: the qkv grouping of the weights written beside it (read back by infer_mp_num).
      token_ids: bos_token_id, eos_token_id and pad_token_id of the vocabulary the model was
        trained with; None: CodeGen's <|endoftext|> (50256) as bos and eos where the model has
        that id (a bare parameter export), else unset.
    """
    if token_ids is None:
        default_id = CODEGEN_EOS_ID if config.vocab_size > CODEGEN_EOS_ID else None
        token_ids = {"bos_token_id": default_id, "eos_token_id": default_id}
    return {
        "architectures": ["CodeGenForCausalLM"],
        "model_type": "codegen",
        "vocab_size": config.vocab_size,
        "n_positions": config.max_len,
        "n_ctx": config.max_len,
        "n_embd": config.embed_dim,
        "n_layer": config.num_layers,
        "n_head": config.num_heads,
        "rotary_dim": config.rotary_dim,
        "n_inner": config.mlp_dim or None,
        "activation_function": "gelu_new",
        "layer_norm_epsilon": config.layer_norm_epsilon,
        "tie_word_embeddings": False,
        **token_ids,
        "mp_num": mp_num,
    }


def read_config(path: str | pathlib.Path) -> dict:
    """The config.json of a checkpoint directory."""
    file = epath.Path(path) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(
            f"{path} is not a Hugging Face checkpoint directory: no {file.name}"
        )
    return json.loads(file.read_text())


# What the weights and the forward pass depend on; compute settings (dtype, scan, remat,
# attention kernel) and the context length are the run's own.
_ARCHITECTURE_FIELDS = (
    "vocab_size",
    "num_layers",
    "embed_dim",
    "num_heads",
    "head_dim",
    "rotary_dim",
    "hidden_dim",
    "layer_norm_epsilon",
)


def architecture_mismatches(checkpoint: TransformerConfig, model: TransformerConfig) -> list[str]:
    """'field: checkpoint X, model Y' for every architecture field on which two configs differ."""
    return [
        f"{field}: checkpoint {getattr(checkpoint, field)}, model {getattr(model, field)}"
        for field in _ARCHITECTURE_FIELDS
        if getattr(checkpoint, field) != getattr(model, field)
    ]


def infer_mp_num(hf_config: Mapping) -> int:
    """The qkv grouping of a checkpoint whose caller did not say.

    An "mp_num" entry (export_checkpoint writes one) wins. Otherwise a config with "auto_map"
    runs on remote code, as the CodeGen2 releases do, and those group in 8 blocks; anything else
    targets transformers' built-in CodeGen, which groups in 4.
    """
    if "mp_num" in hf_config:
        return int(hf_config["mp_num"])
    return CODEGEN2_MP_NUM if "auto_map" in hf_config else HF_MP_NUM


def split_qkv(weight: np.ndarray, mp_num: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q, k, v weights [d, d_in] (head-major output channels) from a fused qkv_proj [3d, d_in]."""
    d, d_in = weight.shape[0] // 3, weight.shape[1]
    if d % mp_num:
        raise ValueError(f"mp_num {mp_num} does not divide the qkv width {d}")
    blocks = weight.reshape(mp_num, 3, d // mp_num, d_in)  # block-major, then q | v | k
    q, v, k = (blocks[:, i].reshape(d, d_in) for i in range(3))
    return q, k, v


def fuse_qkv(q: np.ndarray, k: np.ndarray, v: np.ndarray, mp_num: int) -> np.ndarray:
    """The fused qkv_proj weight [3d, d_in] in mp_num blocks of q | v | k; inverse of split_qkv."""
    d, d_in = q.shape
    if d % mp_num:
        raise ValueError(f"mp_num {mp_num} does not divide the qkv width {d}")
    blocks = np.stack([x.reshape(mp_num, d // mp_num, d_in) for x in (q, v, k)], axis=1)
    return blocks.reshape(3 * d, d_in)


def regroup_qkv(weight: np.ndarray, from_mp_num: int, to_mp_num: int) -> np.ndarray:
    """Re-blocks a fused qkv_proj weight, e.g. a CodeGen2 (8) one for transformers' forward (4)."""
    return fuse_qkv(*split_qkv(weight, from_mp_num), to_mp_num)


def expected_shapes(config: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Every CodeGenForCausalLM tensor name of a model and its shape."""
    d, m, v = config.embed_dim, config.hidden_dim, config.vocab_size
    layer = {
        "ln_1.weight": (d,),
        "ln_1.bias": (d,),
        "attn.qkv_proj.weight": (3 * d, d),
        "attn.out_proj.weight": (d, d),
        "mlp.fc_in.weight": (m, d),
        "mlp.fc_in.bias": (m,),
        "mlp.fc_out.weight": (d, m),
        "mlp.fc_out.bias": (d,),
    }
    shapes = {
        "transformer.wte.weight": (v, d),
        "transformer.ln_f.weight": (d,),
        "transformer.ln_f.bias": (d,),
        "lm_head.weight": (v, d),
        "lm_head.bias": (v,),
    }
    for i in range(config.num_layers):
        shapes.update({f"transformer.h.{i}.{name}": shape for name, shape in layer.items()})
    return shapes


def check_tensors(tensors: Mapping[str, np.ndarray], config: TransformerConfig) -> None:
    """Raises a ValueError naming every missing, unexpected or mis-shaped tensor."""
    expected = expected_shapes(config)
    present = {name for name in tensors if not _IGNORED_TENSORS.fullmatch(name)}
    problems = [
        f"missing tensor {name} (expected shape {expected[name]})"
        for name in sorted(expected.keys() - present)
    ]
    problems += [
        f"unexpected tensor {name} (shape {tuple(tensors[name].shape)})"
        for name in sorted(present - expected.keys())
    ]
    problems += [
        f"tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape}"
        for name, shape in expected.items()
        if name in tensors and tuple(tensors[name].shape) != shape
    ]
    if problems:
        raise ValueError("checkpoint does not match the config: " + "; ".join(problems))


def to_hf_tensors(params: Mapping, mp_num: int = HF_MP_NUM) -> dict[str, np.ndarray]:
    """CodeGenForCausalLM tensors (float32) of a Decoder parameter tree, either scan layout."""
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), nn.unbox(params))
    tensors = {
        "transformer.wte.weight": params["embed"]["embedding"],
        "transformer.ln_f.weight": params["ln_f"]["scale"],
        "transformer.ln_f.bias": params["ln_f"]["bias"],
        "lm_head.weight": params["lm_head"]["kernel"].T,
        "lm_head.bias": params["lm_head"]["bias"],
    }
    for i, layer in enumerate(_layers(params)):
        tensors.update(
            {f"transformer.h.{i}.{k}": x for k, x in _layer_to_hf(layer, mp_num).items()}
        )
    return {name: np.ascontiguousarray(x) for name, x in tensors.items()}


def from_hf_tensors(
    tensors: Mapping[str, np.ndarray], config: TransformerConfig, mp_num: int
) -> dict:
    """The Decoder parameter tree (float32, config.scan_layers layout) of CodeGen tensors."""
    check_tensors(tensors, config)
    tensors = {name: np.asarray(tensors[name], np.float32) for name in expected_shapes(config)}
    layers = [
        _layer_from_hf(tensors, f"transformer.h.{i}.", config, mp_num)
        for i in range(config.num_layers)
    ]
    params = {
        "embed": {"embedding": tensors["transformer.wte.weight"]},
        "ln_f": {
            "scale": tensors["transformer.ln_f.weight"],
            "bias": tensors["transformer.ln_f.bias"],
        },
        "lm_head": {"kernel": tensors["lm_head.weight"].T, "bias": tensors["lm_head.bias"]},
    }
    if config.scan_layers:
        params["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    else:
        params.update({f"layers_{i}": layer for i, layer in enumerate(layers)})
    return jax.tree.map(np.ascontiguousarray, params)


def _layers(params: Mapping) -> Iterator[Mapping]:
    """Per-layer subtrees of either layout: scanned "layers" (leading layer axis) or layers_{i}."""
    if "layers" in params:
        stacked = params["layers"]
        num_layers = jax.tree.leaves(stacked)[0].shape[0]
        return (jax.tree.map(lambda x, i=i: x[i], stacked) for i in range(num_layers))
    indices = sorted(
        int(name.removeprefix("layers_")) for name in params if name.startswith("layers_")
    )
    return (params[f"layers_{i}"] for i in indices)


def _layer_to_hf(layer: Mapping, mp_num: int) -> dict[str, np.ndarray]:
    qkv = layer["attn"]["qkv"]["kernel"]  # [d, 3, H, hd]
    out = layer["attn"]["out"]["kernel"]  # [H, hd, d]
    q, k, v = (qkv[:, i].reshape(qkv.shape[0], -1).T for i in range(3))
    mlp = layer["mlp"]
    return {
        "ln_1.weight": layer["ln"]["scale"],
        "ln_1.bias": layer["ln"]["bias"],
        "attn.qkv_proj.weight": fuse_qkv(q, k, v, mp_num),
        "attn.out_proj.weight": out.reshape(-1, out.shape[-1]).T,
        "mlp.fc_in.weight": mlp["fc_in"]["kernel"].T,
        "mlp.fc_in.bias": mlp["fc_in"]["bias"],
        "mlp.fc_out.weight": mlp["fc_out"]["kernel"].T,
        "mlp.fc_out.bias": mlp["fc_out"]["bias"],
    }


def _layer_from_hf(
    tensors: Mapping[str, np.ndarray], prefix: str, config: TransformerConfig, mp_num: int
) -> dict:
    t = {name.removeprefix(prefix): x for name, x in tensors.items() if name.startswith(prefix)}
    d, heads, head_dim = config.embed_dim, config.num_heads, config.head_dim
    q, k, v = split_qkv(t["attn.qkv_proj.weight"], mp_num)
    qkv = np.stack([x.T.reshape(d, heads, head_dim) for x in (q, k, v)], axis=1)  # [d,3,H,hd]
    return {
        "ln": {"scale": t["ln_1.weight"], "bias": t["ln_1.bias"]},
        "attn": {
            "qkv": {"kernel": qkv},
            "out": {"kernel": t["attn.out_proj.weight"].T.reshape(heads, head_dim, d)},
        },
        "mlp": {
            "fc_in": {"kernel": t["mlp.fc_in.weight"].T, "bias": t["mlp.fc_in.bias"]},
            "fc_out": {"kernel": t["mlp.fc_out.weight"].T, "bias": t["mlp.fc_out.bias"]},
        },
    }


def load_hf_tensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint directory: sharded (index json), *.safetensors, or a .bin.

    path: local, or any URL etils.epath reads (gs://, so every host of a pod can read it).
    """
    tensors = {}
    for file in _weight_files(epath.Path(path)):
        tensors.update(_read_weight_file(file))
    return tensors


def _weight_files(path: epath.Path) -> list[epath.Path]:
    for index in INDEX_FILES:
        if (path / index).exists():
            weight_map = json.loads((path / index).read_text())["weight_map"]
            return [path / name for name in sorted(set(weight_map.values()))]
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors or pytorch_model*.bin in {path}")
    return files


def _read_weight_file(file: epath.Path) -> dict[str, np.ndarray]:
    if file.suffix == ".safetensors":
        return safetensors.numpy.load(file.read_bytes())
    try:
        import torch  # optional: only PyTorch pickles need it
    except ImportError as e:
        raise ImportError(f"reading {file} needs torch; or convert it to safetensors") from e
    with file.open("rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)
    return {name: x.float().numpy() for name, x in state.items()}


def import_checkpoint(
    path: str | pathlib.Path, mp_num: int | None = None, *, scan_layers: bool = True
) -> tuple[dict, TransformerConfig]:
    """Reads a CodeGen / CodeGen2 checkpoint directory into (params, config).

    Args:
      path: directory with config.json and the weights.
      mp_num: qkv grouping of the checkpoint (4: transformers / CodeGen 1, 8: CodeGen2 releases);
        None infers it with infer_mp_num.
      scan_layers: layout of the returned tree and config (stacked "layers" or layers_{i}).

    Raises:
      ValueError: a tensor is missing, unexpected or mis-shaped (each is named), or the config
        describes a model our Decoder cannot compute.
    """
    hf_config = read_config(path)
    config = config_from_hf(hf_config, scan_layers=scan_layers)
    mp_num = infer_mp_num(hf_config) if mp_num is None else mp_num
    return from_hf_tensors(load_hf_tensors(path), config, mp_num), config


def export_checkpoint(
    params: Mapping,
    config: TransformerConfig,
    out_dir: str | pathlib.Path,
    mp_num: int = HF_MP_NUM,
    *,
    token_ids: Mapping[str, int] | None = None,
    max_shard_size: int | str = MAX_SHARD_SIZE,
) -> list[str]:
    """Writes config.json, generation_config.json and the float32 weights of a model.

    Weights larger than max_shard_size are split into model-0000i-of-0000n.safetensors files
    with a model.safetensors.index.json, as transformers' save_pretrained writes them.

    Args:
      params: Decoder parameter tree, boxed or not, either scan layout.
      config: the model's TransformerConfig.
      out_dir: created if needed; weight files an earlier export left there are replaced.
      mp_num: qkv grouping to write; only 4 runs correctly in transformers' own forward pass.
      token_ids: as hf_config_dict; also written to generation_config.json.
      max_shard_size: bytes per weights file (an int, or a string such as "5GB").

    Returns:
      The names of the files written.
    """
    tensors = to_hf_tensors(params, mp_num)
    check_tensors(tensors, config)  # a params / config mismatch fails before anything is written
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    hf_config = hf_config_dict(config, mp_num=mp_num, token_ids=token_ids)
    generation = {k: hf_config[k] for k in GENERATION_IDS if hf_config.get(k) is not None}
    _write_json(out / CONFIG_FILE, hf_config)
    _write_json(out / GENERATION_CONFIG_FILE, generation)
    return [CONFIG_FILE, GENERATION_CONFIG_FILE, *_write_weights(tensors, out, max_shard_size)]


def _write_json(path: pathlib.Path, value: Mapping) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _write_weights(
    tensors: dict[str, np.ndarray], out: pathlib.Path, max_shard_size: int | str
) -> list[str]:
    """Writes the tensors as safetensors, sharded above max_shard_size; returns the file names."""
    for stale in [*out.glob("model*.safetensors"), out / INDEX_FILES[0]]:
        stale.unlink(missing_ok=True)  # a sharded export must not leave another layout beside
    split = huggingface_hub.split_state_dict_into_shards_factory(
        tensors,
        get_storage_size=lambda x: x.nbytes,
        filename_pattern=SAFETENSORS_FILE.replace(".safetensors", "{suffix}.safetensors"),
        max_shard_size=max_shard_size,
    )
    for file, names in split.filename_to_tensors.items():
        # transformers accepts safetensors files only with a known "format" (the tensors' layout).
        shard = {name: tensors[name] for name in names}
        safetensors.numpy.save_file(shard, out / file, metadata={"format": "pt"})
    files = sorted(split.filename_to_tensors)
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": split.tensor_to_filename}
        _write_json(out / INDEX_FILES[0], index)
        files.append(INDEX_FILES[0])
    return files
