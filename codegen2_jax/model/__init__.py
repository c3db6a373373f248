"""The CodeGen decoder: configuration, layers, attention and the full transformer."""

from codegen2_jax.model.config import TransformerConfig
from codegen2_jax.model.transformer import Decoder, init_cache

__all__ = ["Decoder", "TransformerConfig", "init_cache"]
