"""Decoder: embedding, the stack of CodeGen blocks (optionally scanned and rematerialised),
final LayerNorm and the untied lm_head. It reads the seqio decoder features and never knows
which objective produced them."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from codegen2_jax.model import attention
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
    ) -> jax.Array:
        cfg = self.config
        batch, length = decoder_input_tokens.shape
        if decoder_positions is None:
            decoder_positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
        mask = attention.make_attention_mask(length, decoder_segment_ids, decoder_causal_attention)

        x = nn.Embed(
            cfg.vocab_size,
            cfg.embed_dim,
            dtype=cfg.compute_dtype,
            embedding_init=normal_kernel(cfg, ("vocab", "embed")),
            name="embed",
        )(decoder_input_tokens.astype(jnp.int32))
        x = self._blocks(x, mask, decoder_positions)
        x = layer_norm(cfg, "ln_f")(x)
        logits = nn.Dense(
            cfg.vocab_size,
            dtype=cfg.compute_dtype,
            kernel_init=normal_kernel(cfg, ("embed", "vocab")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
            name="lm_head",
        )(x)
        return nn.with_logical_constraint(logits, (BATCH, LENGTH, "activation_vocab"))

    def _blocks(self, x: jax.Array, mask: jax.Array | None, positions: jax.Array) -> jax.Array:
        cfg = self.config
        block = Block
        if cfg.remat_policy != "none":
            block = nn.remat(block, policy=remat_policy(cfg.remat_policy), prevent_cse=False)
        if not cfg.scan_layers:
            for i in range(cfg.num_layers):
                x = block(cfg, name=f"layers_{i}")(x, mask, positions)
            return x
        scanned = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, _ = scanned(cfg, scanned=True, name="layers")(x, mask, positions)
        return x
