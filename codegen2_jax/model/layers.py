"""The CodeGen block: one LayerNorm feeding attention and MLP in parallel, and its KV cache.

Every parameter carries logical axis names (nn.with_logical_partitioning) and every large
activation a logical constraint; partitioning.py maps the names onto the device mesh.

Decoding (cache_index given) keeps each layer's keys and values in the "cache" collection,
[batch, heads, cache_length, head_dim] (heads-major, see attention.cache_attention) in the
compute dtype, written at slots
cache_index .. cache_index + T - 1; the cache length is the length of the input the cache was
initialised with (Decoder.init_cache).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from codegen2_jax.model import attention, flash_attention
from codegen2_jax.model.config import TransformerConfig

BATCH, LENGTH = "activation_batch", "activation_length"


def normal_kernel(config: TransformerConfig, axes: tuple[str, ...]):
    return nn.with_logical_partitioning(nn.initializers.normal(config.init_std), axes)


def layer_norm(config: TransformerConfig, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(
        epsilon=config.layer_norm_epsilon,
        dtype=config.compute_dtype,
        scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
        name=name,
    )


class Projection(nn.Module):
    """A bias-free multi-axis projection: one fp32 kernel contracted by an einsum.

    nn.DenseGeneral initialises its kernel flat and reshapes it afterwards, which clashes with
    a logical sharding constraint on the full-rank kernel; this creates it at its real shape.
    """

    config: TransformerConfig
    shape: tuple[int, ...]
    axes: tuple[str, ...]
    equation: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = self.config.compute_dtype
        kernel = self.param("kernel", normal_kernel(self.config, self.axes), self.shape)
        return jnp.einsum(self.equation, x.astype(dtype), kernel.astype(dtype))


class SelfAttention(nn.Module):
    """Fused qkv projection without bias, partial rotary on q and k, output projection."""

    config: TransformerConfig

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | flash_attention.BlockLayout | None,
        positions: jax.Array,
        cache_index: jax.Array | None = None,
    ) -> jax.Array:
        """Attention over x [batch, T, d], or over the cache when cache_index is given.

        Args:
          x: [batch, T, d].
          mask: [batch | 1, 1, T, T] (training) or [batch, 1, T, cache_length] (decoding); with
            attention_impl "pallas", the batch's flash_attention.BlockLayout when training.
          positions: int [batch, T] rotary positions.
          cache_index: int scalar, the cache slot of x's first token; None when not decoding.
        """
        cfg = self.config
        qkv = Projection(
            cfg,
            shape=(cfg.embed_dim, 3, cfg.num_heads, cfg.head_dim),
            axes=("embed", "qkv", "heads", "kv"),
            equation="btd,dchk->btchk",
            name="qkv",
        )(x)  # [B, T, 3, H, hd]
        heads_axes = (BATCH, LENGTH, "activation_heads", "activation_kv")
        q, k, v = (nn.with_logical_constraint(qkv[:, :, i], heads_axes) for i in range(3))
        sin, cos = attention.rotary_tables(positions, cfg.rotary_dim)
        q, k = attention.apply_rotary(q, sin, cos), attention.apply_rotary(k, sin, cos)
        if cache_index is not None:
            # New tokens against the whole cache: memory-bound, so the einsum path serves
            # every backend.
            k, v = self._update_cache(k, v, cache_index)
            out = attention.cache_attention(q, k, v, mask)
        elif cfg.attention_impl == "cudnn":
            out = attention.fused_attention(q, k, v, mask, implementation="cudnn")
        elif cfg.attention_impl == "pallas":
            out = flash_attention.flash_attention(q, k, v, mask)
        else:
            out = attention.xla_attention(q, k, v, mask)
        out = nn.with_logical_constraint(out, heads_axes)
        return Projection(
            cfg,
            shape=(cfg.num_heads, cfg.head_dim, cfg.embed_dim),
            axes=("heads", "kv", "embed"),
            equation="bthk,hkd->btd",
            name="out",
        )(out)

    def _update_cache(self, k: jax.Array, v: jax.Array, index: jax.Array):
        """Writes k, v [batch, T, H, hd] at slot index; returns the whole cache (k and v)."""
        axes = (BATCH, "activation_heads", "activation_cache_length", "activation_kv")
        out = []
        for name, new in (("key", k), ("value", v)):
            new = new.transpose(0, 2, 1, 3)  # [B, H, T, hd]
            cached = self.variable("cache", name, jnp.zeros, new.shape, new.dtype)
            updated = jax.lax.dynamic_update_slice(cached.value, new, (0, 0, index, 0))
            cached.value = nn.with_logical_constraint(updated, axes)
            out.append(cached.value)
        return out


class Mlp(nn.Module):
    """d -> hidden -> d with biases and tanh-approximate gelu."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        bias = nn.with_logical_partitioning(nn.initializers.zeros, ("mlp",))
        h = nn.Dense(
            cfg.hidden_dim,
            dtype=cfg.compute_dtype,
            kernel_init=normal_kernel(cfg, ("embed", "mlp")),
            bias_init=bias,
            name="fc_in",
        )(x)
        h = nn.with_logical_constraint(h, (BATCH, LENGTH, "activation_mlp"))
        h = nn.gelu(h, approximate=True)
        return nn.Dense(
            cfg.embed_dim,
            dtype=cfg.compute_dtype,
            kernel_init=normal_kernel(cfg, ("mlp", "embed")),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
            name="fc_out",
        )(h)


class Block(nn.Module):
    """x + attn(ln(x)) + mlp(ln(x)), the parallel residual of GPT-J and CodeGen.

    Under nn.scan (scanned=True) it returns the (carry, output) pair scan expects.
    """

    config: TransformerConfig
    scanned: bool = False

    @nn.compact
    def __call__(
        self,
        x: jax.Array,
        mask: jax.Array | flash_attention.BlockLayout | None,
        positions: jax.Array,
        cache_index: jax.Array | None = None,
    ):
        x = nn.with_logical_constraint(x, (BATCH, LENGTH, "activation_embed"))
        h = layer_norm(self.config, "ln")(x)
        out = x + SelfAttention(self.config, name="attn")(h, mask, positions, cache_index)
        out = out + Mlp(self.config, name="mlp")(h)
        out = nn.with_logical_constraint(out.astype(x.dtype), (BATCH, LENGTH, "activation_embed"))
        return (out, None) if self.scanned else out


def remat_policy(name: str):
    """Named jax.checkpoint policies; "full" saves nothing and recomputes the whole block."""
    return {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.dots_saveable,
        "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    }[name]
