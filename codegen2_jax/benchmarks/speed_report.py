"""One command for every speed figure, beside its references, in one process tree.

  python -m codegen2_jax.benchmarks.speed_report --anchors=DIR         # GPU: the CodeGen2-1B shape
  python -m codegen2_jax.benchmarks.speed_report --anchors=DIR --tiny  # seconds, on a CPU

DIR holds the reference scripts jax_ref_bench.py (a plain JAX decoder step) and
hf_codegen_bench.py (transformers' CodeGen). Each measurement runs in its own process, one
after another, so none holds another's device memory: the project's train step on a causal, a
packed (the CodeGen2 mixture's rows) and a prefix-LM batch
(codegen2_jax.benchmarks.train_benchmark), the packed and prefix-LM steps again with the
block-skipping Pallas attention (attention_impl "pallas"; off a GPU it runs interpreted, so its
CPU figures say nothing of its speed), the plain JAX reference causal and prefix-LM at the same
shape, the project's greedy decode (codegen2_jax.benchmarks.decode_benchmark) and transformers'
(train step and decode). Needs neither TensorFlow nor seqio. Prints one JSON object: every
figure, the ratios that compare them, and each run's own JSON lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence

JAX_REFERENCE = "jax_ref_bench.py"
HF_REFERENCE = "hf_codegen_bench.py"
LAYOUTS = ("causal", "packed", "prefix_lm")
# Layouts the Pallas kernel is measured on: those whose masks it skips blocks of.
PALLAS_LAYOUTS = ("packed", "prefix_lm")
PALLAS = "--gin.ATTENTION_IMPL='pallas'"  # after the shape's bindings, so it overrides them


@dataclasses.dataclass(frozen=True)
class Shape:
    """What is measured: the references' shape (their own flag selects it)."""

    gin: tuple[str, ...]  # the project's model: gin file, then bindings
    batch: int
    seq: int
    steps: int
    decode_batches: tuple[int, int]
    prompt_len: int
    new_tokens: int
    reference_flags: tuple[str, ...]


FULL = Shape(
    gin=(
        "--gin_file=models/1b.gin",
        "--gin.COMPUTE_DTYPE='bfloat16'",
        "--gin.ATTENTION_IMPL='cudnn'",
    ),
    batch=8,
    seq=2048,
    steps=10,
    decode_batches=(1, 32),
    prompt_len=128,
    new_tokens=128,
    reference_flags=(),
)
# The references' --tiny shape: vocabulary 512, width 128, 2 layers, 4 heads, 2 x 128 tokens.
TINY = Shape(
    gin=(
        "--gin_file=models/tiny.gin",
        "--gin.VOCAB_SIZE=512",
        "--gin.config.TransformerConfig.embed_dim=128",
        "--gin.config.TransformerConfig.rotary_dim=32",
    ),
    batch=2,
    seq=128,
    steps=2,
    decode_batches=(1, 4),
    prompt_len=32,
    new_tokens=8,
    reference_flags=("--tiny",),
)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--anchors", required=True, help="Directory of the reference scripts.")
    parser.add_argument("--tiny", action="store_true", help="The references' --tiny shape.")
    parser.add_argument("--out", help="Also write the JSON object here.")
    return parser


def _run(command: Sequence[str]) -> list[dict]:
    """The JSON lines a measurement prints; its failure stops the report, naming it."""
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(
            f"{' '.join(command)} exited with {done.returncode}:\n{done.stderr[-4000:]}"
        )
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def measurements(anchors: str, shape: Shape) -> dict[str, list[dict]]:
    """Every run's JSON lines, by run name."""
    python = sys.executable
    train = [
        python,
        "-m",
        "codegen2_jax.benchmarks.train_benchmark",
        *shape.gin,
        f"--batch={shape.batch}",
        f"--seq={shape.seq}",
        f"--steps={shape.steps}",
    ]
    runs = {f"train_{layout}": [*train, f"--layout={layout}"] for layout in LAYOUTS}
    for layout in PALLAS_LAYOUTS:
        runs[f"train_{layout}_pallas"] = [*train, PALLAS, f"--layout={layout}"]
    reference = [python, os.path.join(anchors, JAX_REFERENCE), *shape.reference_flags]
    runs["jax_reference"] = reference
    runs["jax_reference_prefix_lm"] = [*reference, "--prefix-lm"]
    runs["decode"] = [
        python,
        "-m",
        "codegen2_jax.benchmarks.decode_benchmark",
        *shape.gin,
        *(f"--batch={b}" for b in shape.decode_batches),
        f"--prompt_len={shape.prompt_len}",
        f"--new_tokens={shape.new_tokens}",
    ]
    runs["hf"] = [python, os.path.join(anchors, HF_REFERENCE), *shape.reference_flags]
    return {name: _run(command) for name, command in runs.items()}


def _one(lines: list[dict], **match) -> dict:
    found = [line for line in lines if all(line.get(k) == v for k, v in match.items())]
    if len(found) != 1:
        raise ValueError(f"expected one measurement with {match}, found {len(found)}")
    return found[0]


def summarize(runs: dict[str, list[dict]], shape: Shape) -> dict:
    """Figures (tokens/s) and the ratios the speed goals are stated in."""
    small, large = shape.decode_batches
    train = {layout: _one(runs[f"train_{layout}"])["tokens_per_s"] for layout in LAYOUTS}
    for layout in PALLAS_LAYOUTS:
        train[f"{layout}_pallas"] = _one(runs[f"train_{layout}_pallas"])["tokens_per_s"]
    train["jax_reference"] = _one(runs["jax_reference"])["tokens_per_s"]
    train["jax_reference_prefix_lm"] = _one(runs["jax_reference_prefix_lm"])["tokens_per_s"]
    train["hf"] = _one(runs["hf"], what="hf codegen train step")["tokens_per_s"]
    decode = {f"batch_{b}": _one(runs["decode"], batch=b)["tokens_per_s"] for b in (small, large)}
    for b in (small, large):
        decode[f"hf_batch_{b}"] = _one(runs["hf"], what="hf codegen greedy decode", batch=b)[
            "tokens_per_s"
        ]
    ratios = {
        "train_causal_vs_jax_reference": train["causal"] / train["jax_reference"],
        "train_packed_vs_causal": train["packed"] / train["causal"],
        "train_prefix_lm_vs_causal": train["prefix_lm"] / train["causal"],
        **{
            f"train_{layout}_pallas_vs_causal": train[f"{layout}_pallas"] / train["causal"]
            for layout in PALLAS_LAYOUTS
        },
        "train_causal_vs_hf": train["causal"] / train["hf"],
        f"decode_batch_{small}_vs_hf": decode[f"batch_{small}"] / decode[f"hf_batch_{small}"],
        f"decode_batch_{large}_vs_hf": decode[f"batch_{large}"] / decode[f"hf_batch_{large}"],
        f"decode_batch_{large}_vs_batch_{small}": decode[f"batch_{large}"]
        / decode[f"batch_{small}"],
    }
    return {
        # Read from a measurement: this process never starts JAX, so it holds no device memory.
        "device": _one(runs["train_causal"])["device"],
        "shape": dataclasses.asdict(shape),
        "train_tokens_per_s": train,
        "decode_tokens_per_s": decode,
        "ratios": ratios,
        "runs": runs,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    shape = TINY if args.tiny else FULL
    report = summarize(measurements(args.anchors, shape), shape)
    text = json.dumps(report, indent=1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
