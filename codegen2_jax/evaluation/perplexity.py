"""Held-out loss and perplexity per validation task, as exact token-weighted means."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax

from codegen2_jax import trainer
from codegen2_jax.data import pipeline
from codegen2_jax.partitioning import Partitioner


class Evaluator:
    """Scores params on the first `num_batches` validation batches of each task.

    The batches are the same every time (unshuffled, one epoch, fixed seed), so curves over
    training compare like with like. Tasks are named per objective (…_causal, …_span_corruption),
    which gives the loss per task and per objective.
    """

    def __init__(
        self,
        model,
        partitioner: Partitioner,
        param_shardings,
        tasks: Sequence[str],
        *,
        seq_len: int,
        batch_size: int,
        num_batches: int,
        use_cached: bool = False,
    ):
        self.tasks = tuple(tasks)
        self._partitioner = partitioner
        self._lengths = {"targets": seq_len}
        self._batch_size = batch_size
        self._num_batches = num_batches
        self._use_cached = use_cached
        self._step = jax.jit(
            trainer.make_eval_step(model),
            in_shardings=(param_shardings, partitioner.batch_sharding()),
        )
        for task in self.tasks:  # found before training, not at its first evaluation
            self._require_scored_tokens(task)

    def __call__(self, params) -> dict[str, float]:
        """{"eval/<task>/loss": mean loss, "eval/<task>/perplexity": exp(loss)} per task."""
        results = {}
        for task in self.tasks:
            loss = self._task_loss(params, task)
            results[f"eval/{task}/loss"] = loss
            results[f"eval/{task}/perplexity"] = math.exp(min(loss, 50.0))
        return results

    def _require_scored_tokens(self, task: str) -> None:
        first = next(self._batches(task).take(1).as_numpy_iterator(), None)
        if first is None or not first["decoder_loss_weights"].any():
            raise ValueError(
                f"evaluation task {task!r} has no scored tokens in its validation split "
                f"(shard {jax.process_index()} of {jax.process_count()}): its corpus may hold "
                "no validation documents; choose other EVAL_TASKS or raise the corpus's "
                "validation_percent"
            )

    def _task_loss(self, params, task: str) -> float:
        loss_sum, weight_sum = 0.0, 0.0
        for batch in self._batches(task).take(self._num_batches).as_numpy_iterator():
            sums = self._step(params, self._partitioner.global_batch(batch))
            loss_sum += float(sums["loss_sum"])
            weight_sum += float(sums["weight_sum"])
        if weight_sum == 0:
            raise ValueError(f"validation split of {task!r} produced no scored tokens")
        return loss_sum / weight_sum

    def _batches(self, task: str):
        return pipeline.make_dataset(
            task,
            feature_lengths=self._lengths,
            batch_size=self._batch_size // jax.process_count(),
            seed=0,
            shard_index=jax.process_index(),
            num_shards=jax.process_count(),
            split="validation",
            shuffle=False,
            num_epochs=1,
            use_cached=self._use_cached,
        )
