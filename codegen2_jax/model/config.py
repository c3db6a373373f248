"""TransformerConfig: the one description of a CodeGen-architecture model's shape and numerics."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")
ATTENTION_IMPLEMENTATIONS = ("xla", "cudnn", "pallas")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Shape and numerics of a CodeGen decoder.

    Attributes:
      vocab_size: rows of the embedding and columns of the untied lm_head (51200 in CodeGen2).
      num_layers: transformer blocks.
      embed_dim: model width d.
      num_heads: attention heads; embed_dim must divide evenly.
      rotary_dim: leading channels of each head that get rotary embedding (GPT-J interleaved).
      mlp_dim: hidden width of the MLP; CodeGen uses 4 * embed_dim (the default, 0).
      max_len: longest sequence the model is configured for (context length).
      layer_norm_epsilon: LayerNorm epsilon (1e-5 in CodeGen).
      dtype: compute dtype ("bfloat16" on accelerators, "float32" on CPU). Parameters stay fp32.
      scan_layers: run the blocks under nn.scan (one compiled block, stacked parameters).
      remat_policy: activation rematerialisation: none | full | dots | dots_no_batch.
      attention_impl: "xla" (einsum + softmax, runs everywhere), "cudnn" (fused, GPU only) or
        "pallas" (flash_attention.py: skips the key blocks packing and prefixes mask out; Triton
        on a GPU, Pallas' slow interpret mode elsewhere).
      init_std: standard deviation of the normal initialiser for kernels and embeddings.
    """

    vocab_size: int = 51200
    num_layers: int = 16
    embed_dim: int = 2048
    num_heads: int = 16
    rotary_dim: int = 64
    mlp_dim: int = 0
    max_len: int = 2048
    layer_norm_epsilon: float = 1e-5
    dtype: str = "float32"
    scan_layers: bool = True
    remat_policy: str = "none"
    attention_impl: str = "xla"
    init_std: float = 0.02

    def __post_init__(self):
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}"
            )
        if self.rotary_dim > self.head_dim or self.rotary_dim % 2:
            raise ValueError(
                f"rotary_dim {self.rotary_dim} must be even and at most head_dim {self.head_dim}"
            )
        if self.remat_policy not in REMAT_POLICIES:
            raise ValueError(f"remat_policy {self.remat_policy!r} is not one of {REMAT_POLICIES}")
        if self.attention_impl not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(
                f"attention_impl {self.attention_impl!r} is not one of {ATTENTION_IMPLEMENTATIONS}"
            )
        jnp.dtype(self.dtype)  # raises on an unknown dtype name

    def to_dict(self) -> dict[str, int | float | str | bool]:
        """Every field, JSON-ready (what each checkpoint step records of its model)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> TransformerConfig:
        """The config to_dict wrote; a field missing takes its default, an unknown one raises.

        Raises:
          ValueError: a field TransformerConfig does not have (written by another version).
        """
        if unknown := sorted(set(fields) - {f.name for f in dataclasses.fields(cls)}):
            raise ValueError(f"TransformerConfig has no field {', '.join(unknown)}")
        return cls(**fields)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @property
    def hidden_dim(self) -> int:
        """The MLP's hidden width (mlp_dim, or 4 * embed_dim when unset)."""
        return self.mlp_dim or 4 * self.embed_dim

    @property
    def compute_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    def num_params(self, include_embedding: bool = True) -> int:
        """Parameter count, computed from the shapes (no arrays are built)."""
        d, m, v = self.embed_dim, self.hidden_dim, self.vocab_size
        per_layer = 2 * d + 3 * d * d + d * d + (d * m + m) + (m * d + d)
        head = 2 * d + d * v + v
        embedding = v * d if include_embedding else 0
        return embedding + self.num_layers * per_layer + head

    def flops_per_token(self, seq_len: int) -> int:
        """Model FLOPs per trained token: 6 * N_matmul + 12 * L * d * T (PaLM appendix B)."""
        return 6 * self.num_params(include_embedding=False) + 12 * (
            self.num_layers * self.embed_dim * seq_len
        )
