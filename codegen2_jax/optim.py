"""optax factories: AdamW with a weight-decay mask, warmup + cosine schedule, clipping."""

from __future__ import annotations

import jax
import optax

NO_DECAY_LEAVES = ("bias", "scale")  # LayerNorm scales and every bias


def make_schedule(
    *, peak_learning_rate: float, end_learning_rate: float, warmup_steps: int, total_steps: int
) -> optax.Schedule:
    """Linear warmup from 0 to the peak, then cosine decay to end_learning_rate at total_steps."""
    if total_steps <= warmup_steps:
        raise ValueError(f"total_steps {total_steps} must exceed warmup_steps {warmup_steps}")
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak_learning_rate,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=end_learning_rate,
    )


def decay_mask(params):
    """True for leaves that get weight decay: every kernel and embedding, no bias or scale."""

    def decays(path, _) -> bool:
        # The last dict key names the leaf; metadata boxes add attribute keys after it.
        names = [entry.key for entry in path if isinstance(entry, jax.tree_util.DictKey)]
        return names[-1] not in NO_DECAY_LEAVES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    *,
    peak_learning_rate: float = 2e-4,
    end_learning_rate: float = 2e-5,
    warmup_steps: int = 3000,
    total_steps: int = 250_000,
    weight_decay: float = 0.1,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    clip_norm: float = 1.0,
) -> optax.GradientTransformation:
    """Global-norm clipping followed by AdamW on the warmup + cosine schedule.

    The defaults are the jaxformer settings CodeGen was trained with (see
    gin/optimizers/adamw.gin for the source).
    """
    schedule = make_schedule(
        peak_learning_rate=peak_learning_rate,
        end_learning_rate=end_learning_rate,
        warmup_steps=warmup_steps,
        total_steps=total_steps,
    )
    return optax.chain(
        optax.clip_by_global_norm(clip_norm),
        optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask),
    )
