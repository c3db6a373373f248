"""Throughput of the input pipeline (read, tokenize, CodeGen2 mixture, pack), printed as JSON.

    python -m codegen2_jax.data.benchmark [--task NAME] [--length 2048] [--batch_size 8]
    python -m codegen2_jax.data.benchmark --module tasks --task stdlib_v1_codegen2_mix \
        --cache_dir DIR [--gin_bindings "tasks.stdlib_data_dir.path = '...'"]

With --task, it measures that registered seqio task or mixture (import the module that
registers it with --module). Without, it measures an in-memory task: the Python sources of
the running interpreter's standard library, read into memory, tokenized with the shipped
vocabulary, then codegen2_mixture and packing, as in training. With --cache_dir (seqio's
offline cache of --task, codegen2_jax.data.cache) it measures the task read from its source
and then from the cache, in the same process, and their ratio. "tokens_per_s" counts
non-padding tokens of the packed batches; "slots_per_s" counts every position.
"""

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import argparse
import importlib
import json
import pathlib
import re
import sysconfig
import time

import gin
import seqio
import tensorflow as tf

from codegen2_jax.data import cache, features, pipeline, preprocessors, vocab

IN_MEMORY_TASK = "benchmark_stdlib_in_memory_codegen2"


def stdlib_sources(max_files: int) -> list[str]:
    """Up to `max_files` standard-library modules' text, in a fixed order."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(root.rglob("*.py"))[:max_files]
    return [path.read_text(encoding="utf-8", errors="replace") for path in paths]


def register_in_memory_task(texts: list[str], vocabulary_path: str | None = None) -> str:
    """Registers (once) a task over `texts`: tokenize, then the CodeGen2 mixture."""
    suffix = "" if vocabulary_path is None else "_" + re.sub(r"\W", "_", vocabulary_path)
    name = IN_MEMORY_TASK + suffix
    if name not in seqio.TaskRegistry.names():

        def documents(split, shuffle_files, seed=None):
            del split, shuffle_files, seed
            return tf.data.Dataset.from_tensor_slices({features.TARGETS: texts})

        vocabulary = (
            vocab.load_vocabulary(vocabulary_path)
            if vocabulary_path
            else vocab.default_vocabulary()
        )
        seqio.TaskRegistry.add(
            name,
            source=seqio.FunctionDataSource(documents, splits=["train"]),
            preprocessors=[seqio.preprocessors.tokenize, preprocessors.codegen2_mixture],
            output_features=features.output_features(vocabulary),
        )
    return name


def measure(iterator, *, seconds: float, warmup_batches: int) -> dict[str, float]:
    """Pulls batches for about `seconds` after a warm-up and counts tokens."""
    for _ in range(warmup_batches):
        next(iterator)
    batches = tokens = slots = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        segment_ids = next(iterator)["decoder_segment_ids"]
        batches += 1
        tokens += int((segment_ids > 0).sum())
        slots += segment_ids.size
    elapsed = time.perf_counter() - start
    return {
        "tokens_per_s": round(tokens / elapsed),
        "slots_per_s": round(slots / elapsed),
        "packing_efficiency": round(tokens / slots, 4),
        "batches": batches,
        "seconds": round(elapsed, 2),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", help="registered seqio task or mixture (default: in-memory)")
    parser.add_argument("--module", help="module to import first, e.g. the one registering --task")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--warmup_batches", type=int, default=10)
    parser.add_argument("--max_files", type=int, default=2000, help="in-memory task only")
    parser.add_argument(
        "--vocabulary",
        help="in-memory task only: a sentencepiece .model or a tokenizer.json (or its directory)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache_dir", help="also measure --task read from this offline cache")
    parser.add_argument("--gin_bindings", action="append", default=[], help="e.g. data roots")
    parser.add_argument("--verbose", action="store_true", help="every library's INFO lines too")
    args = parser.parse_args(argv)
    console.configure(args.verbose)
    if args.module:
        importlib.import_module(args.module)
    gin.parse_config(args.gin_bindings)
    task = args.task or register_in_memory_task(stdlib_sources(args.max_files), args.vocabulary)
    header = {"task": task, "length": args.length, "batch_size": args.batch_size}
    if args.vocabulary:
        header["vocabulary"] = args.vocabulary
    if not args.cache_dir:
        print(json.dumps({**header, **_measure_task(task, args, use_cached=False)}))
        return
    cache.require_cached([task], args.cache_dir)
    uncached = _measure_task(task, args, use_cached=False)
    cached = _measure_task(task, args, use_cached=True)
    ratio = round(cached["tokens_per_s"] / uncached["tokens_per_s"], 2)
    print(json.dumps({**header, "uncached": uncached, "cached": cached, "cached_speedup": ratio}))


def _measure_task(task: str, args, *, use_cached: bool) -> dict[str, float]:
    iterator = pipeline.make_iterator(
        task,
        feature_lengths={features.TARGETS: args.length},
        batch_size=args.batch_size,
        seed=args.seed,
        use_cached=use_cached,
    )
    return measure(iterator, seconds=args.seconds, warmup_batches=args.warmup_batches)


if __name__ == "__main__":
    main()
