"""KV-cache sampling: the compiled decode loop, token selection, and CodeGen2 infill.

make_generate builds one jitted function that prefills the prompts in a single model call and
then decodes one token per step inside jax.lax.while_loop, so the host is not involved until
every row has finished.

Prompts of different lengths share a batch by left padding (left_pad): every row's last prompt
token sits in the same cache slot, padding carries segment id 0 so no real token attends to it,
and each row's rotary positions start at 0 on its first real token (model/transformer.py).

Infill follows the format the released CodeGen2 models were trained on. Text segments
s_0 .. s_k around k masks become the prompt

    s_0 <mask_1> s_1 <mask_2> ... <mask_k> s_k <|endoftext|> <sep> <mask_1>

and the model writes the first middle, ending it with <eom>. The middles are filled one at a
time: after fill_n the prompt grows by `fill_n <eom> <mask_{n+1}>` and decoding starts again,
which reproduces the training layout `<sep> <mask_1> span_1 <eom> <mask_2> span_2 <eom>`.
A middle that reaches max_new_tokens without <eom> is kept as it is.

Models trained by this codebase saw their vocabulary's decoder_start_id at position 0 of
every document (seqio's decoder inputs are the targets shifted right: pad 0 for the project's
sentencepiece vocabularies, <|endoftext|> for byte-level BPE ones), so their prompts start with
it (start_id); models trained on a plain token stream, such as the released CodeGen2
checkpoints, take prompts as they are (start_id=None).

This module takes token ids or a vocabulary object from the caller and imports neither
TensorFlow nor seqio, so it runs on any JAX image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from codegen2_jax import train_state
from codegen2_jax.model import Decoder, TransformerConfig, init_cache
from codegen2_jax.partitioning import Partitioner

NO_STOP = -1  # pads stop-token lists; token ids are never negative


class SampleOutput(NamedTuple):
    """What a generate function returns.

    Attributes:
      tokens: int32 [batch, max_new_tokens]; pad_id after each row's last generated token.
      lengths: int32 [batch], generated tokens per row, a final stop token included.
      stopped: bool [batch], whether the row ended on one of its stop tokens.
    """

    tokens: jax.Array
    lengths: jax.Array
    stopped: jax.Array


class _LoopState(NamedTuple):
    step: jax.Array  # int scalar: tokens generated so far (the longest row)
    cache: dict
    logits: jax.Array  # fp32 [batch, vocab] for the next token
    out: SampleOutput
    done: jax.Array  # bool [batch]
    rng: jax.Array


class InfillVocabulary(Protocol):
    """What infill needs from a vocabulary (data/vocab.py's CodeVocabulary provides it)."""

    eos_id: int
    sep_id: int
    eom_id: int
    num_masks: int

    def encode(self, text: str) -> Sequence[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def mask_id(self, n: int) -> int: ...


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int = 0, multiple: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens int32 [batch, P], lengths int32 [batch]) with each prompt right-aligned.

    P is the longest prompt rounded up to `multiple`, so nearby lengths share one compilation.
    """
    lengths = np.array([len(p) for p in prompts], np.int32)
    width = -(-max(int(lengths.max()), 1) // multiple) * multiple
    tokens = np.full((len(prompts), width), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt) :] = prompt
    return tokens, lengths


def filter_logits(logits: jax.Array, *, top_k: int = 0, top_p: float = 1.0) -> jax.Array:
    """Sets logits outside the top-k tokens and outside the top-p nucleus to -inf.

    Args:
      logits: fp32 [batch, vocab], already divided by the temperature.
      top_k: keep the k most likely tokens (0: all).
      top_p: keep the smallest set of most likely tokens whose probability reaches top_p
        (1.0: all); the most likely token is always kept.
    """
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]  # [B, 1]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if top_p < 1.0:
        descending = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(descending, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs  # [B, V]
        threshold = jnp.min(
            jnp.where(mass_before < top_p, descending, jnp.inf), axis=-1, keepdims=True
        )
        logits = jnp.where(logits >= threshold, logits, -jnp.inf)
    return logits


def select_tokens(
    rng: jax.Array,
    logits: jax.Array,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
) -> jax.Array:
    """int32 [batch] next tokens from logits [batch, vocab]: greedy when temperature is 0."""
    if temperature == 0.0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logits = filter_logits(logits / temperature, top_k=top_k, top_p=top_p)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def _cast_params(params, dtype: jnp.dtype):
    # Training keeps fp32 parameters and casts them in every layer call; casting once before
    # the loop spares each decode step from reading them in fp32.
    return jax.tree.map(
        lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
    )


def _unstack_layers(params, num_layers: int):
    """Scanned parameters (one stacked "layers" tree) as layers_0 .. layers_{L-1}.

    Decoding runs the layers unrolled: under nn.scan every step would copy each layer's
    whole KV cache in and out of the scan (2-3x slower per token on CPU), while unstacking
    the parameters happens once, before the loop.
    """
    if "layers" not in params:
        return params
    out = {name: tree for name, tree in params.items() if name != "layers"}
    for i in range(num_layers):
        out[f"layers_{i}"] = jax.tree.map(lambda x, i=i: x[i], params["layers"])
    return out


def _prefill(
    model: Decoder,
    prefix_prompt: bool,
    params,
    prompts: jax.Array,
    lengths: jax.Array,
    cache_length: int,
):
    """Runs the left-padded prompts [B, P] through the model: (last logits [B, V], cache)."""
    batch, width = prompts.shape
    pad = (width - lengths)[:, None]  # [B, 1]
    slots = jnp.arange(width)[None]  # [1, P]
    real = (slots >= pad).astype(jnp.int32)
    logits, variables = model.apply(
        {"params": params, "cache": init_cache(model, batch, cache_length)},
        prompts,
        decoder_segment_ids=real,
        decoder_positions=jnp.maximum(slots - pad, 0),
        decoder_causal_attention=real if prefix_prompt else None,
        decode=True,
        last_position_only=True,
        mutable=["cache"],
    )
    return logits[:, -1].astype(jnp.float32), variables["cache"]


def _decode_step(model: Decoder, params, cache: dict, tokens: jax.Array, positions: jax.Array):
    """Feeds one token per row (tokens, positions int [B]): (logits [B, V], cache)."""
    logits, variables = model.apply(
        {"params": params, "cache": cache},
        tokens[:, None],
        decoder_positions=positions[:, None],
        decode=True,
        mutable=["cache"],
    )
    return logits[:, 0].astype(jnp.float32), variables["cache"]


def _generate(
    model: Decoder,
    select: Callable,
    max_new_tokens: int,
    pad_id: int,
    prefix_prompt: bool,
    params,
    prompts: jax.Array,
    lengths: jax.Array,
    stop_tokens: jax.Array,
    max_lengths: jax.Array,
    rng: jax.Array,
    suppressed_ids: jax.Array | None,
) -> SampleOutput:
    """The whole generation, traced once: prefill, then a while_loop of decode steps."""
    params = _cast_params(
        _unstack_layers(params, model.config.num_layers), model.config.compute_dtype
    )
    cache_length = prompts.shape[1] + max_new_tokens
    logits, cache = _prefill(model, prefix_prompt, params, prompts, lengths, cache_length)
    batch = prompts.shape[0]
    out = SampleOutput(
        tokens=jnp.full((batch, max_new_tokens), pad_id, jnp.int32),
        lengths=jnp.zeros((batch,), jnp.int32),
        stopped=jnp.zeros((batch,), bool),
    )
    state = _LoopState(jnp.zeros((), jnp.int32), cache, logits, out, max_lengths <= 0, rng)

    def body(state: _LoopState) -> _LoopState:
        rng, key = jax.random.split(state.rng)
        logits = state.logits
        if suppressed_ids is not None:
            logits = logits.at[:, suppressed_ids].set(-jnp.inf)
        token = jnp.where(state.done, pad_id, select(key, logits))  # [B]
        out = _record(state.out, state.step, token, state.done, stop_tokens)
        done = state.done | out.stopped | (out.lengths >= max_lengths)
        logits, cache = _decode_step(model, params, state.cache, token, lengths + state.step)
        return _LoopState(state.step + 1, cache, logits, out, done, rng)

    def cond(state: _LoopState) -> jax.Array:
        return (state.step < max_new_tokens) & ~jnp.all(state.done)

    return jax.lax.while_loop(cond, body, state).out


def _record(
    out: SampleOutput, step: jax.Array, token: jax.Array, done: jax.Array, stop_tokens: jax.Array
) -> SampleOutput:
    """Writes token [B] into column `step` and counts it for the rows still running."""
    is_stop = jnp.any(token[:, None] == stop_tokens, axis=-1) & ~done  # [B]
    return SampleOutput(
        tokens=jax.lax.dynamic_update_slice(out.tokens, token[:, None], (0, step)),
        lengths=out.lengths + (~done).astype(jnp.int32),
        stopped=out.stopped | is_stop,
    )


def _global(array, sharding) -> jax.Array:
    """The same host array on every process as one global array laid out by `sharding`."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def make_generate(
    config: TransformerConfig,
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    pad_id: int = 0,
    prefix_prompt: bool = False,
    partitioner: Partitioner | None = None,
) -> Callable[..., SampleOutput]:
    """Compiles generation for one model and one sampling setting.

    Args:
      config: the model; its dtype is the compute dtype of decoding. Parameters come in its
        layout (scanned or not); decoding always runs the layers unrolled.
      max_new_tokens: the most tokens any row generates (the output width).
      temperature: 0 for greedy decoding, else the softmax temperature.
      top_k, top_p: see filter_logits (used only when temperature > 0).
      pad_id: fills the output after each row's end.
      prefix_prompt: read each prompt as a bidirectional prefix, as a prefix-LM was trained
        (the start token included); False decodes the prompt causally.
      partitioner: shard parameters like training and the batch over the data axes (the
        batch must then divide by partitioner.data_parallel_size); every process passes the
        same whole batch and gets the whole output. None runs on the default device.

    Returns:
      generate(params, prompts, lengths, stop_tokens, max_lengths, rng, suppressed_ids=None)
      -> SampleOutput with prompts int [B, P] from left_pad, lengths int [B] their real
      lengths, stop_tokens int [B, K] each row's stop ids (NO_STOP pads the lists),
      max_lengths int [B] each row's limit of new tokens (at most max_new_tokens), rng a
      jax.random key, and suppressed_ids int [S] ids never generated (their logits set to
      -inf), or None. Prompt width P, batch B and S are compiled in: left_pad's `multiple`
      keeps the number of shapes small.
    """
    model = Decoder(dataclasses.replace(config, scan_layers=False))
    select = functools.partial(select_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    fn = functools.partial(_generate, model, select, max_new_tokens, pad_id, prefix_prompt)
    if partitioner is None:
        jitted = jax.jit(fn)
        return lambda *args, suppressed_ids=None: jitted(*args, suppressed_ids)
    rows = partitioner.sharding(("activation_batch",))
    matrix = partitioner.sharding(("activation_batch", None))
    row_shardings = (matrix, rows, matrix, rows)  # prompts, lengths, stop_tokens, max_lengths
    jitted = jax.jit(
        fn,
        in_shardings=(
            train_state.param_shardings(Decoder(config), (1, 1), partitioner)[1],
            *row_shardings,
            None,
            None,
        ),
        # Every process gets every row: in a multi-host run each decodes its devices' rows
        # and all of them read the whole output.
        out_shardings=partitioner.sharding(()),
    )

    def generate(params, *arrays, suppressed_ids=None) -> SampleOutput:
        *row_arrays, rng = arrays
        row_arrays = [_global(x, s) for x, s in zip(row_arrays, row_shardings, strict=True)]
        with partitioner.activate():  # resolves the model's logical activation constraints
            return jitted(params, *row_arrays, rng, suppressed_ids)

    return generate


def stop_token_array(stops: Sequence[Sequence[int]]) -> np.ndarray:
    """int32 [batch, K] of per-row stop ids, padded with NO_STOP."""
    width = max([len(s) for s in stops] + [1])
    out = np.full((len(stops), width), NO_STOP, np.int32)
    for row, ids in enumerate(stops):
        out[row, : len(ids)] = ids
    return out


def generated(out: SampleOutput, row: int, strip_stop: bool = True) -> list[int]:
    """Row `row`'s generated ids as a host list, without its stop token when strip_stop."""
    length = int(out.lengths[row]) - int(strip_stop and bool(out.stopped[row]))
    return [int(t) for t in np.asarray(out.tokens[row, :length])]


def infill_token_ids(vocab: InfillVocabulary) -> list[int]:
    """`<sep>`, `<eom>` and every `<mask_N>`: the tokens of the infill format, which
    left-to-right completion never generates (the CodeGen2 mixture trains them as targets)."""
    ids = [vocab.mask_id(n) for n in range(1, vocab.num_masks + 1)]
    for name in ("sep_id", "eom_id"):
        with contextlib.suppress(ValueError):  # a tokenizer without them (CodeGen 1's)
            ids.append(getattr(vocab, name))
    return ids


def infill_prompt(segments: Sequence[Sequence[int]], vocab: InfillVocabulary) -> list[int]:
    """`s_0 <mask_1> s_1 ... <mask_k> s_k <|endoftext|> <sep> <mask_1>` from k + 1 id lists."""
    if len(segments) < 2:
        raise ValueError("infill needs at least two segments (one mask between them)")
    ids = list(segments[0])
    for n, segment in enumerate(segments[1:], start=1):
        ids += [vocab.mask_id(n), *segment]
    return ids + [vocab.eos_id, vocab.sep_id, vocab.mask_id(1)]


def infill(
    generate: Callable[..., SampleOutput],
    params,
    vocab: InfillVocabulary,
    problems: Sequence[Sequence[str]],
    *,
    rng: jax.Array,
    max_new_tokens: int,
    start_id: int | None = None,
    pad_multiple: int = 64,
) -> list[list[str]]:
    """Fills every mask of every problem, batched, one mask per round (module docstring).

    Args:
      generate: from make_generate (its max_new_tokens at least this one's).
      params: the model parameters.
      vocab: encodes the segments and decodes the fills.
      problems: each the k + 1 text segments around its k masks (k may differ per problem).
      rng: key; each round folds in its number.
      max_new_tokens: the longest middle, per mask.
      start_id: token put before each prompt (module docstring), or None.
      pad_multiple: see left_pad.

    Returns:
      For each problem, its k middles as text.
    """
    start = [] if start_id is None else [start_id]
    prompts = [start + infill_prompt([vocab.encode(s) for s in segs], vocab) for segs in problems]
    masks = [len(segs) - 1 for segs in problems]
    fills: list[list[str]] = [[] for _ in problems]
    stops = stop_token_array([[vocab.eom_id, vocab.eos_id]] * len(problems))
    for n in range(1, max(masks) + 1):
        active = np.array([k >= n for k in masks])
        tokens, lengths = left_pad(prompts, multiple=pad_multiple)
        limits = np.where(active, max_new_tokens, 0).astype(np.int32)
        out = jax.device_get(
            generate(params, tokens, lengths, stops, limits, jax.random.fold_in(rng, n))
        )
        for row in np.flatnonzero(active):
            middle = generated(out, row)
            fills[row].append(vocab.decode(middle))
            more = [vocab.mask_id(n + 1)] if masks[row] > n else []
            prompts[row] = prompts[row] + middle + [vocab.eom_id] + more
    return fills


def complete(
    generate: Callable[..., SampleOutput],
    params,
    vocab: InfillVocabulary,
    prompts: Sequence[str],
    *,
    rng: jax.Array,
    max_new_tokens: int,
    start_id: int | None = None,
    pad_multiple: int = 64,
) -> list[str]:
    """Continues each prompt until <|endoftext|> or max_new_tokens; returns the new text.
    The infill format's tokens are never generated (infill_token_ids).

    start_id: token put before each prompt (module docstring), or None.
    """
    start = [] if start_id is None else [start_id]
    tokens, lengths = left_pad([start + vocab.encode(p) for p in prompts], multiple=pad_multiple)
    stops = stop_token_array([[vocab.eos_id]] * len(prompts))
    limits = np.full(len(prompts), max_new_tokens, np.int32)
    suppressed = np.asarray(infill_token_ids(vocab), np.int32)
    out = jax.device_get(
        generate(params, tokens, lengths, stops, limits, rng, suppressed_ids=suppressed)
    )
    return [vocab.decode(generated(out, row)) for row in range(len(prompts))]
