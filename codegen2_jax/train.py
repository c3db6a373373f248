"""train(): initialise or restore, then step, log, evaluate and checkpoint until done or stopped."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Sequence

import jax
import optax

from codegen2_jax import checkpointing, metrics, train_state, trainer
from codegen2_jax.data import pipeline
from codegen2_jax.evaluation.perplexity import Evaluator
from codegen2_jax.model import Decoder, TransformerConfig
from codegen2_jax.partitioning import Partitioner


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


def train(
    *,
    model_config: TransformerConfig,
    partitioner: Partitioner,
    optimizer: optax.GradientTransformation,
    train_task: str,
    batch_size: int,
    seq_len: int,
    total_steps: int,
    model_dir: str,
    eval_tasks: Sequence[str] = (),
    eval_every: int = 0,
    eval_batches: int = 8,
    seed: int = 0,
    z_loss: float = 1e-4,
    num_microbatches: int = 1,
    log_every: int = 10,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 3,
    max_consecutive_skips: int = 3,
    config_text: str = "",
) -> dict[str, float]:
    """Trains on train_task for total_steps global batches of batch_size x seq_len tokens.

    Resumes from the newest valid checkpoint under model_dir/checkpoints at its exact data
    position. SIGTERM (TPU-VM preemption) saves at the current step and returns normally.

    Returns:
      The last logged training scalars and the final evaluation.
    """
    model = Decoder(model_config)
    shape = (batch_size, seq_len)
    abstract, shardings = train_state.state_shardings(model, optimizer, shape, partitioner)
    data = pipeline.make_iterator(
        train_task,
        feature_lengths={"targets": seq_len},
        batch_size=batch_size // jax.process_count(),
        seed=seed,
        shard_index=jax.process_index(),
        num_shards=jax.process_count(),
    )
    checkpointer = checkpointing.Checkpointer(
        os.path.join(model_dir, "checkpoints"), max_to_keep=keep_checkpoints
    )
    step_fn = jax.jit(
        trainer.make_train_step(model, optimizer, z_loss=z_loss, num_microbatches=num_microbatches),
        in_shardings=(shardings, partitioner.batch_sharding()),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    loop = Loop(
        step_fn=step_fn,
        next_batch=lambda: partitioner.global_batch(next(data)),
        save=lambda state: checkpointer.save(
            int(state.step), state, data.save_position(), config_text
        ),
        evaluate=Evaluator(
            model,
            partitioner,
            shardings.params,
            eval_tasks,
            seq_len=seq_len,
            batch_size=batch_size,
            num_batches=eval_batches,
        ),
        progress=metrics.Progress(model_config, seq_len, batch_size * seq_len, total_steps),
        writer=metrics.make_writer(model_dir),
        total_steps=total_steps,
        log_every=log_every,
        checkpoint_every=checkpoint_every,
        eval_every=eval_every,
        max_consecutive_skips=max_consecutive_skips,
    )
    try:
        with partitioner.activate():
            restored = checkpointer.restore_latest(abstract, shardings)
            if restored is None:
                state = train_state.init_train_state(model, optimizer, shape, partitioner, seed)
            else:
                data.restore_position(restored.data_position)
                state = restored.state
            return loop.run(state)
    finally:
        loop.writer.close()
        checkpointer.close()


@dataclasses.dataclass
class Loop:
    """The training loop's control flow, separate from how its parts are built.

    Step metrics are read one step behind, after the next step is dispatched, so the host
    never waits for the device except at log, eval and checkpoint boundaries.
    """

    step_fn: Callable
    next_batch: Callable[[], dict]
    save: Callable
    evaluate: Evaluator
    progress: metrics.Progress
    writer: object
    total_steps: int
    log_every: int
    checkpoint_every: int
    eval_every: int
    max_consecutive_skips: int

    def run(self, state) -> dict[str, float]:
        stop = _StopOnSigterm()
        step = int(state.step)
        self.progress.start(step)
        summary, window, previous = {}, [], None
        while step < self.total_steps and not stop.received:
            state, step_metrics = self.step_fn(state, self.next_batch())
            step += 1
            if previous is not None:
                self._check_finite(step - 1, previous)
            previous = step_metrics
            window.append(step_metrics)
            if step % self.log_every == 0 or step == self.total_steps:
                summary = self._log(step, window)
                window = []
            if self.eval_every and step % self.eval_every == 0:
                summary.update(self._evaluate(step, state))
            if step % self.checkpoint_every == 0:
                self.save(state)
        if previous is not None:
            self._check_finite(step, previous)
        if step % self.checkpoint_every:
            self.save(state)  # the final or preempted step
        if self.evaluate.tasks and not stop.received:
            summary.update(self._evaluate(step, state))
        return summary

    def _check_finite(self, step: int, step_metrics) -> None:
        skips = int(step_metrics["consecutive_skips"])
        if skips:
            logging.warning("step %d: non-finite loss or gradient, update skipped", step)
        if skips >= self.max_consecutive_skips:
            raise NonFiniteTrainingError(
                f"{skips} consecutive non-finite updates ending at step {step}; "
                "weights were left unchanged and no checkpoint holds the bad state"
            )

    def _log(self, step: int, window: list) -> dict[str, float]:
        host = jax.device_get(window)
        weights = sum(float(m["tokens"]) for m in host) or 1.0
        scalars = {
            "loss": sum(float(m["loss"]) * float(m["tokens"]) for m in host) / weights,
            "grad_norm": float(host[-1]["grad_norm"]),
            "skipped_updates": float(host[-1]["skipped_updates"]),
        }
        scalars = self.progress.update(step, scalars)
        self.writer.write_scalars(step, {f"train/{k}": v for k, v in scalars.items()})
        return scalars

    def _evaluate(self, step: int, state) -> dict[str, float]:
        results = self.evaluate(state.params)
        self.writer.write_scalars(step, results)
        for name, value in sorted(results.items()):
            logging.info("step %d | %s %.4f", step, name, value)
        return results


class _StopOnSigterm:
    """Records SIGTERM so the loop can save at the current step and exit cleanly."""

    def __init__(self):
        self.received = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del frame
        logging.warning("signal %d: saving a checkpoint at the current step, then stopping", signum)
        self.received = True
