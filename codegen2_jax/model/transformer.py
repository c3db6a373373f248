"""Decoder: embedding, the stack of CodeGen blocks (optionally scanned and rematerialised),
final LayerNorm and the untied lm_head. It reads the seqio decoder features and never knows
which objective produced them.

Decoding (decode=True, mutable=["cache"]) runs the same parameters incrementally over a KV
cache made by init_cache: one call may feed any number of new tokens (a whole prompt, then one
token per step). Besides each layer's keys and values, the cache holds "index" (the next slot
to write) and "segment_ids" [batch, cache_length] (the segment id written into each slot).
Every row shares the slot index, so prompts of different lengths are left-padded: padding
carries segment id 0 and real tokens 1, and decoder_positions gives each row's own rotary
positions (0 at its first real token). decoder_causal_attention flags a bidirectional prefix
among the tokens of one call, so a prefix-LM reads its prompt as it was trained to.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from codegen2_jax.model import attention, flash_attention
from codegen2_jax.model.config import TransformerConfig
from codegen2_jax.model.layers import BATCH, LENGTH, Block, layer_norm, normal_kernel, remat_policy


class Decoder(nn.Module):
    """CodeGen decoder over packed prefix-LM batches.

    __call__ maps decoder_input_tokens [batch, T] (plus the optional packing and prefix features
    of the batch contract) to logits [batch, T, vocab] in the compute dtype.
    """

    config: TransformerConfig

    @nn.compact
    def __call__(
        self,
        decoder_input_tokens: jax.Array,
        decoder_segment_ids: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        decoder_causal_attention: jax.Array | None = None,
        decode: bool = False,
        last_position_only: bool = False,
    ) -> jax.Array:
        """Logits [batch, T, vocab] for decoder_input_tokens [batch, T].

        With decode=True the tokens continue the cached sequence (see the module docstring):
        decoder_segment_ids defaults to 1 everywhere, decoder_positions to the cache slots, and
        decoder_causal_attention, if given, makes its flagged tokens of this call a prefix.
        last_position_only gives the logits of the last position alone, [batch, 1, vocab]: a
        prompt's prefill needs no others, and their lm_head costs as much as a layer.
        """
        cfg = self.config
        batch, length = decoder_input_tokens.shape
        if decode:
            mask, decoder_positions, cache_index = self._decode_inputs(
                decoder_segment_ids, decoder_positions, decoder_causal_attention, batch, length
            )
        else:
            if decoder_positions is None:
                decoder_positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
            mask = self._training_mask(decoder_segment_ids, decoder_causal_attention, batch, length)
            cache_index = None

        x = nn.Embed(
            cfg.vocab_size,
            cfg.embed_dim,
            dtype=cfg.compute_dtype,
            embedding_init=normal_kernel(cfg, ("vocab", "embed")),
            name="embed",
        )(decoder_input_tokens.astype(jnp.int32))
        x = self._blocks(x, mask, decoder_positions, cache_index)
        if last_position_only:
            x = x[:, -1:]
        x = layer_norm(cfg, "ln_f")(x)
        logits = nn.Dense(
            cfg.vocab_size,
            dtype=cfg.compute_dtype,
            kernel_init=normal_kernel(cfg, ("embed", "vocab")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            name="lm_head",
        )(x)
        return nn.with_logical_constraint(logits, (BATCH, LENGTH, "activation_vocab"))

    def _training_mask(self, segment_ids, prefix, batch: int, length: int):
        """What every layer's attention needs of the batch, built once per forward."""
        if self.config.attention_impl == "pallas":
            return flash_attention.block_layout(batch, length, segment_ids, prefix)
        return attention.make_attention_mask(length, segment_ids, prefix)

    def _decode_inputs(self, segment_ids, positions, prefix, batch: int, length: int):
        """(mask, positions, first slot) of `length` new tokens; advances the cache index."""
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        cached = self.variable("cache", "segment_ids", jnp.zeros, (batch, length), jnp.int32)
        start = index.value
        if segment_ids is None:
            segment_ids = jnp.ones((batch, length), jnp.int32)
        if positions is None:
            positions = jnp.broadcast_to(start + jnp.arange(length), (batch, length))
        cached.value = jax.lax.dynamic_update_slice(
            cached.value, segment_ids.astype(jnp.int32), (0, start)
        )
        index.value = start + length
        mask = attention.make_decode_mask(start, segment_ids, cached.value, prefix)
        return mask, positions, start

    def _blocks(
        self,
        x: jax.Array,
        mask: jax.Array | flash_attention.BlockLayout | None,
        positions: jax.Array,
        cache_index: jax.Array | None,
    ) -> jax.Array:
        cfg = self.config
        block = Block
        # Decoding computes no gradients, so rematerialisation would only cost time.
        if cfg.remat_policy != "none" and cache_index is None:
            block = nn.remat(block, policy=remat_policy(cfg.remat_policy), prevent_cse=False)
        if not cfg.scan_layers:
            for i in range(cfg.num_layers):
                x = block(cfg, name=f"layers_{i}")(x, mask, positions, cache_index)
            return x
        scanned = nn.scan(
            block,
            variable_axes={"params": 0, "cache": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = scanned(cfg, scanned=True, name="layers")(x, mask, positions, cache_index)
        return x


def init_cache(model: Decoder, batch: int, length: int) -> dict:
    """A zeroed decoding cache of `length` slots for `batch` rows (nothing but the cache built).

    Returns:
      The "cache" collection to pass as model.apply({"params": ..., "cache": cache}, ...,
      decode=True, mutable=["cache"]).
    """
    tokens = jnp.zeros((batch, length), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, decode=True)["cache"])
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
