"""Decoding with a KV cache, and models read back for it."""
