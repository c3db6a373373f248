"""codegen2_jax: pretraining code language models with the CodeGen2 recipe in JAX/Flax."""
