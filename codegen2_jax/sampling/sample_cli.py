"""Sampling command line: completion or infill from a training checkpoint or a Hugging Face model.

  python -m codegen2_jax.sampling.sample_cli --checkpoint_dir=MODEL_DIR/checkpoints \
      --prompt='def f(x):'
  python -m codegen2_jax.sampling.sample_cli --hf_dir=codegen2-1B --hf_tokenizer \
      --prefix='def add(a, b):' --suffix='    return c'

A training checkpoint (Checkpointer directory, usually MODEL_DIR/checkpoints) is read as
trained_model describes: its model, its tokenizer, and a prefix-LM reads its prompt as a
bidirectional prefix. Every prompt starts with the input that tokenizer's documents followed
in training (its decoder_start_id). An imported Hugging Face CodeGen / CodeGen2 directory
(config.json plus weights) describes itself; its tokenizer.json is used with --hf_tokenizer
(read offline, without TensorFlow), otherwise the shipped code vocabulary.

Prints each sample's text: the prompt and its completion, or the prefix, the middle and the
suffix, which is how the code reads (a line `--- sample I/N` before each of several samples).
With --json: one JSON line per sample, its parts apart ({prompt, completion} or {prefix,
suffix, middle}).
"""

from __future__ import annotations

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import argparse
import dataclasses
import json
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax

from codegen2_jax.checkpointing import hf
from codegen2_jax.data import bpe
from codegen2_jax.model import TransformerConfig
from codegen2_jax.sampling import decoding, trained_model


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
    parser.add_argument("--json", action="store_true", help="One JSON line per sample.")
    parser.add_argument("--verbose", action="store_true", help="Every library's INFO lines too.")
    return parser


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
    trained = trained_model.load(directory)
    start_id = trained.vocabulary.decoder_start_id
    return LoadedModel(
        trained.params, trained.config, start_id, trained.prefix_prompt, trained.vocabulary
    )


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


def load_vocabulary(args: argparse.Namespace, model: LoadedModel) -> decoding.InfillVocabulary:
    """The checkpoint's own tokenizer; for --hf_dir, its own (--hf_tokenizer) or the shipped one."""
    if args.hf_tokenizer:
        if not args.hf_dir:
            raise ValueError("--hf_tokenizer reads the tokenizer of --hf_dir")
        return bpe.read_local(args.hf_dir)
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
    generate = decoding.make_generate(
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
        texts = decoding.complete(generate, params, vocab, [args.prompt] * n, **common)
        return [{"prompt": args.prompt, "completion": text} for text in texts]
    segments = [args.prefix or "", args.suffix or ""]
    fills = decoding.infill(generate, params, vocab, [segments] * n, **common)
    return [{"prefix": segments[0], "suffix": segments[1], "middle": f[0]} for f in fills]


def text(record: dict) -> str:
    """A sample as the code reads: prompt and completion, or prefix, middle and suffix."""
    if "completion" in record:
        return record["prompt"] + record["completion"]
    return record["prefix"] + record["middle"] + record["suffix"]


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point (codegen2-sample)."""
    args = make_parser().parse_args(argv)
    console.configure(args.verbose)
    records = run(args)
    for i, record in enumerate(records, 1):
        if args.json:
            print(json.dumps(record), flush=True)
            continue
        if len(records) > 1:
            print(f"--- sample {i}/{len(records)}")
        sample = text(record)
        print(sample, end="" if sample.endswith("\n") else "\n", flush=True)


if __name__ == "__main__":
    main()
