"""Decode benchmark: tokens/s of greedy KV-cache generation at several batch sizes.

The setup of the Hugging Face anchor's decode measurement (hf_codegen_bench.py): random
prompts of --prompt_len tokens, greedy decoding of exactly --new_tokens tokens (no stop
token), the timed call including the prompt's prefill; tokens/s = batch * new_tokens / seconds.
Random parameters and prompts keep it free of TensorFlow, seqio and checkpoints:

  python -m codegen2_jax.benchmarks.decode_benchmark                       # models/small.gin (CPU)
  python -m codegen2_jax.benchmarks.decode_benchmark --gin_file=models/1b.gin \
      --gin.COMPUTE_DTYPE='"bfloat16"'                            # the CodeGen2-1B shape (GPU)

Prints one JSON line per batch size; seconds is the median of --repeats timed calls after one
compiling call.
"""

from __future__ import annotations

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import argparse
import json
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from codegen2_jax import gin_config
from codegen2_jax.model import Decoder, TransformerConfig
from codegen2_jax.sampling import decoding

DEFAULT_GIN_FILE = "models/small.gin"


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--batch", type=int, action="append", help="Batch sizes (repeatable). Default: 1, 32."
    )
    parser.add_argument("--prompt_len", type=int, default=128)
    parser.add_argument("--new_tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="Timed calls per batch size.")
    return parser


def random_params(config: TransformerConfig, seed: int = 0):
    """Initialised parameters (fp32) on the default device."""
    model = Decoder(config)
    init = jax.jit(lambda rng: nn.unbox(model.init(rng, jnp.zeros((1, 1), jnp.int32))))
    return init(jax.random.key(seed))["params"]


def benchmark_decode(
    config: TransformerConfig,
    params,
    *,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    repeats: int,
) -> dict:
    """Compiles and runs generation once, then times `repeats` calls."""
    generate = decoding.make_generate(config, max_new_tokens=new_tokens)
    rng = np.random.default_rng(batch)
    prompts = rng.integers(0, config.vocab_size, (batch, prompt_len), dtype=np.int32)
    inputs = (
        params,
        prompts,
        np.full(batch, prompt_len, np.int32),
        decoding.stop_token_array([[]] * batch),
        np.full(batch, new_tokens, np.int32),
        jax.random.key(0),
    )
    start = time.perf_counter()
    jax.block_until_ready(generate(*inputs))
    first_s = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = jax.block_until_ready(generate(*inputs))
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    assert int(out.lengths.min()) == new_tokens  # every row decoded the full length
    return report(config, batch, prompt_len, new_tokens, seconds, first_s, times)


def report(config, batch, prompt_len, new_tokens, seconds, first_s, times) -> dict:
    return {
        "what": "codegen2_jax greedy decode",
        "params": config.num_params(),
        "dtype": config.dtype,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "seconds": seconds,
        "tokens_per_s": batch * new_tokens / seconds,
        "timed_calls_s": times,
        "first_call_s": first_s,
        "device": str(jax.devices()[0].device_kind),
        "jax": jax.__version__,
    }


def main(argv: list[str] | None = None) -> None:
    """Console entry point: `--gin.NAME=VALUE` arguments become gin bindings."""
    args = gin_config.parse_tool_args(make_parser(), argv, model=DEFAULT_GIN_FILE)
    console.configure(args.verbose)
    config = gin_config.configured(TransformerConfig)()
    params = random_params(config)
    for batch in args.batch or [1, 32]:
        result = benchmark_decode(
            config,
            params,
            batch=batch,
            prompt_len=args.prompt_len,
            new_tokens=args.new_tokens,
            repeats=args.repeats,
        )
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
