"""Sampling command line: completion or infill from a training checkpoint or a Hugging Face model.

  python -m codegen2_jax.sample_cli --checkpoint_dir=MODEL_DIR/checkpoints --prompt='def f(x):'
  python -m codegen2_jax.sample_cli --hf_dir=codegen2-1B --hf_tokenizer \
      --prefix='def add(a, b):' --suffix='    return c'

A training checkpoint (Checkpointer directory, usually MODEL_DIR/checkpoints) carries the gin
config it was trained with; its TransformerConfig bindings rebuild the model, and a prefix-LM
(OBJECTIVE prefix_lm) reads its prompt as a bidirectional prefix. Its tokenizer is the one
training kept beside the steps (vocabulary/), and every prompt starts with the input that
tokenizer's documents followed in training (its decoder_start_id). An imported
Hugging Face CodeGen / CodeGen2 directory (config.json plus weights) describes itself; its
tokenizer is used with --hf_tokenizer (files in that directory, read offline), otherwise the
shipped code vocabulary. Prints one JSON line per sample.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import gin
import jax
from etils import epath

from codegen2_jax import checkpointing, gin_config, hf, partitioning, sampling, train_state
from codegen2_jax.model import Decoder, TransformerConfig

MODEL_IMPORT = "from codegen2_jax.model import config"
PREFIX_LM_OBJECTIVE = "prefix_lm"  # tasks/objectives.py's name; prompts become prefixes


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint_dir", help="A training Checkpointer directory.")
    source.add_argument("--hf_dir", help="A Hugging Face CodeGen / CodeGen2 checkpoint directory.")
    parser.add_argument(
        "--hf_tokenizer", action="store_true", help="Use --hf_dir's own tokenizer (offline)."
    )
    parser.add_argument("--mp_num", type=int, help="qkv grouping of --hf_dir (default: inferred).")
    parser.add_argument("--prompt", help="Complete this text.")
    parser.add_argument("--prefix", help="Infill between --prefix and --suffix.")
    parser.add_argument("--suffix", help="Infill between --prefix and --suffix.")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy.")
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", help="Compute dtype (default: the model's).")
    return parser


def _is_model_statement(statement: str) -> bool:
    # Only what TransformerConfig reads: other bindings name modules (tasks, train) whose
    # import would need TensorFlow, and are of no use here.
    if statement.startswith(("from __gin__", MODEL_IMPORT, "config.TransformerConfig.")):
        return True
    macro = gin_config.macro_assignment(statement)
    if macro is None:
        return False
    value = macro[1]
    try:
        ast.literal_eval(value)
        return True
    except (ValueError, SyntaxError):
        return re.fullmatch(r"%[\w.]+", value) is not None


def trained_as_prefix_lm(text: str) -> bool:
    """Whether a saved gin config text trained a prefix-LM (its OBJECTIVE macro)."""
    return gin_config.saved_macro(text, "OBJECTIVE") == PREFIX_LM_OBJECTIVE


def model_config_from_gin(text: str) -> TransformerConfig:
    """The TransformerConfig that a saved gin config text binds (its other bindings ignored)."""
    gin.clear_config(clear_constants=True)
    gin.parse_config(
        "\n".join(s for s in gin_config.saved_statements(text) if _is_model_statement(s))
    )
    return gin_config.configured(TransformerConfig)()


def _single_device() -> partitioning.Partitioner:
    return partitioning.make_partitioner(rules=(), data=1, devices=jax.local_devices()[:1])


def restore_checkpoint(directory: str, config: TransformerConfig):
    """Parameters of the newest valid step in a Checkpointer directory, on one device.

    Only the parameters are read (and verified); the optimizer state stays on disk.
    """
    abstract, shardings = train_state.param_shardings(Decoder(config), (1, 1), _single_device())
    # Read-only: a running job's in-progress save must not be set aside by a reader.
    with checkpointing.Checkpointer(directory, read_only=True) as checkpointer:
        restored = checkpointer.restore_latest_params(abstract, shardings)
    if restored is None:
        raise FileNotFoundError(f"no valid checkpoint in {directory}")
    if model_config_from_gin(restored.gin_config) != config:
        raise ValueError(f"step {restored.step} in {directory} was trained with another model")
    return restored.state


def latest_gin_config(directory: str) -> str:
    """The gin config text stored with the newest intact step of a Checkpointer directory."""
    if not epath.Path(directory).is_dir():
        raise FileNotFoundError(f"no checkpoint directory {directory}")
    with checkpointing.Checkpointer(directory, read_only=True) as checkpointer:
        text = checkpointer.latest_gin_config()
    if text is None:
        raise FileNotFoundError(f"no committed checkpoint in {directory}")
    return text


class HFTokenizerVocabulary:
    """The sampling vocabulary interface over a transformers tokenizer (CodeGen2's names).

    Args:
      directory: holds the tokenizer files; read offline.
    """

    def __init__(self, directory: str):
        import transformers  # optional: only this tokenizer needs it

        self.tokenizer = transformers.AutoTokenizer.from_pretrained(
            directory, local_files_only=True
        )
        self.eos_id = self.tokenizer.eos_token_id

    # Looked up when infill asks: CodeGen 1 tokenizers complete code but have no infill tokens.
    @property
    def sep_id(self) -> int:
        return self._special_id("<sep>")

    @property
    def eom_id(self) -> int:
        return self._special_id("<eom>")

    def _special_id(self, token: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {token} token")
        return token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids)

    def mask_id(self, n: int) -> int:
        return self._special_id(f"<mask_{n}>")


class LoadedModel(NamedTuple):
    """A model to sample from and how its prompts are read.

    Attributes:
      params, config: the parameters and their TransformerConfig.
      start_id: what every prompt starts with (sampling's module docstring), or None.
      prefix_prompt: whether the prompt is a bidirectional prefix (a prefix-LM).
      vocabulary: the tokenizer it was trained with, or None (a Hugging Face directory).
    """

    params: Any
    config: TransformerConfig
    start_id: int | None
    prefix_prompt: bool
    vocabulary: Any = None


def load_checkpoint(directory: str) -> LoadedModel:
    """A model trained here: its newest valid parameters and training conventions."""
    from codegen2_jax.data import vocab  # imports seqio and TensorFlow

    text = latest_gin_config(directory)
    config = model_config_from_gin(text)
    params = restore_checkpoint(directory, config)
    vocabulary = vocab.load_saved_vocabulary(
        f"{directory.rstrip('/')}/{vocab.SAVED_VOCABULARY_DIR}"
    )
    if vocabulary is None:  # saved before training kept its tokenizer
        logging.warning("%s keeps no tokenizer: using the shipped one", directory)
        vocabulary = vocab.default_vocabulary()
    start_id = vocabulary.decoder_start_id
    return LoadedModel(params, config, start_id, trained_as_prefix_lm(text), vocabulary)


def load_model(args: argparse.Namespace) -> LoadedModel:
    """The model of --checkpoint_dir or --hf_dir, --dtype applied."""
    if args.checkpoint_dir:
        loaded = load_checkpoint(args.checkpoint_dir)
    else:  # trained on a plain causal token stream: prompts as they are
        params, config = hf.import_checkpoint(args.hf_dir, args.mp_num)
        loaded = LoadedModel(params, config, None, False)
    if args.dtype:
        loaded = loaded._replace(config=dataclasses.replace(loaded.config, dtype=args.dtype))
    return loaded


def load_vocabulary(args: argparse.Namespace, model: LoadedModel) -> sampling.InfillVocabulary:
    """The checkpoint's own tokenizer; for --hf_dir, its own (--hf_tokenizer) or the shipped one."""
    if args.hf_tokenizer:
        if not args.hf_dir:
            raise ValueError("--hf_tokenizer reads the tokenizer of --hf_dir")
        return HFTokenizerVocabulary(args.hf_dir)
    if model.vocabulary is not None:
        return model.vocabulary
    from codegen2_jax.data import vocab  # imports seqio and TensorFlow

    return vocab.default_vocabulary()


def run(args: argparse.Namespace) -> list[dict]:
    """Samples as the arguments ask; one record per sample."""
    if (args.prompt is None) == (args.prefix is None and args.suffix is None):
        raise ValueError("give either --prompt, or --prefix and/or --suffix")
    model = load_model(args)
    vocab = load_vocabulary(args, model)
    generate = sampling.make_generate(
        model.config,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        prefix_prompt=model.prefix_prompt,
    )
    rng, n, params = jax.random.key(args.seed), args.num_samples, model.params
    common = dict(rng=rng, max_new_tokens=args.max_new_tokens, start_id=model.start_id)
    if args.prompt is not None:
        texts = sampling.complete(generate, params, vocab, [args.prompt] * n, **common)
        return [{"prompt": args.prompt, "completion": text} for text in texts]
    segments = [args.prefix or "", args.suffix or ""]
    fills = sampling.infill(generate, params, vocab, [segments] * n, **common)
    return [{"prefix": segments[0], "suffix": segments[1], "middle": f[0]} for f in fills]


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (codegen2-sample)."""
    for record in run(make_parser().parse_args(argv)):
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
