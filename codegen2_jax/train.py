"""train(): initialise or restore, then step, log, evaluate and checkpoint until done or stopped."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from collections.abc import Callable, Sequence

import jax
import optax

from codegen2_jax import metrics, train_state, trainer, watchdog
from codegen2_jax.checkpointing import checkpointer, hf
from codegen2_jax.data import cache, pipeline, vocab
from codegen2_jax.evaluation import during_training
from codegen2_jax.evaluation.perplexity import Evaluator
from codegen2_jax.model import Decoder, TransformerConfig
from codegen2_jax.partitioning import Partitioner
from codegen2_jax.sampling import trained_model

logger = logging.getLogger(__name__)


class NonFiniteTrainingError(RuntimeError):
    """Too many consecutive updates had a non-finite loss or gradient."""


def train(
    *,
    model_config: TransformerConfig,
    partitioner: Partitioner,
    optimizer: optax.GradientTransformation,
    train_task: str,
    prefix_lm: bool = False,
    batch_size: int,
    seq_len: int,
    total_steps: int,
    model_dir: str,
    eval_tasks: Sequence[str] = (),
    eval_every: int = 0,
    eval_batches: int = 8,
    execution_eval: during_training.ExecutionEvalSettings | None = None,
    seed: int = 0,
    z_loss: float = 1e-4,
    num_microbatches: int = 1,
    log_every: int = 10,
    checkpoint_every: int = 100,
    keep_checkpoints: int = 3,
    max_consecutive_skips: int = 3,
    data_shards: int | None = None,
    use_cached: bool = False,
    cache_dir: str | None = None,
    init_from_hf: str | None = None,
    step_timeout_s: float = 600.0,
    slow_op_timeout_s: float = 1800.0,
    peer_timeout_s: float = 30.0,
    config_text: str = "",
) -> dict[str, float] | None:
    """Trains on train_task for total_steps global batches of batch_size x seq_len tokens.

    Resumes from the newest valid checkpoint under model_dir/checkpoints at its exact data
    position. SIGTERM (TPU-VM preemption) saves at the current step and returns normally.
    A watchdog aborts the process (watchdog.EXIT_CODE) when a step or a slow operation
    overruns its limit or, in multi-process runs, another process falls silent.

    Args (the less obvious ones):
      prefix_lm: whether train_task's objective reads prompts as bidirectional prefixes
        (gin: from OBJECTIVE); recorded with each checkpoint for sampling and evaluation.
      data_shards: how many shards the data is split into (default: one per process); each
        process reads data_shards / process_count of them, so runs over different process
        counts with the same data_shards see the same global batches.
      use_cached: read the training and evaluation tasks from seqio's offline cache in
        cache_dir (codegen2_jax.data.cache); a task without one stops the run at once.
      execution_eval: when and on what to score greedy HumanEval and HumanEval-Infilling
        by running the programs (evaluation/during_training.py); None or every=0: never.
      init_from_hf: a Hugging Face CodeGen / CodeGen2 directory whose weights start the run
        (optimizer state fresh); a checkpoint in model_dir wins over it (a resume). Its
        architecture must be model_config's, or the run stops before anything is compiled.
      step_timeout_s: limit for one training step.
      slow_op_timeout_s: limit for compilation, checkpoint restore, save and commit waits,
        and evaluation.
      peer_timeout_s: how long another process may send no heartbeat.

    Returns:
      The last logged training scalars and the final evaluation; None when model_dir's
      checkpoint already holds total_steps (a rerun of a finished run changes nothing).
    """
    if use_cached:
        cache.require_cached([train_task, *eval_tasks], cache_dir)
    _log_header(train_task, model_config, batch_size, seq_len, total_steps, partitioner, model_dir)
    checkpoint_dir = os.path.join(model_dir, "checkpoints")
    vocabulary = pipeline.task_vocabulary(train_task)
    _record_vocabulary(checkpoint_dir, vocabulary, model_config)
    run = trained_model.RunRecord(
        model=model_config,
        prefix_lm=prefix_lm,
        train_task=train_task,
        eval_tasks=tuple(eval_tasks),
        vocabulary=trained_model.vocabulary_record(vocabulary),
    ).to_json()
    model = Decoder(model_config)
    shape = (batch_size, seq_len)
    abstract, shardings = train_state.state_shardings(model, optimizer, shape, partitioner)
    data = _host_batches(train_task, seq_len, batch_size, seed, data_shards, use_cached)
    ckpt = checkpointer.Checkpointer(checkpoint_dir, max_to_keep=keep_checkpoints)
    step_fn = jax.jit(
        trainer.make_train_step(model, optimizer, z_loss=z_loss, num_microbatches=num_microbatches),
        in_shardings=(shardings, partitioner.batch_sharding()),
        out_shardings=(shardings, None),
        donate_argnums=0,
    )
    evaluations = []
    if eval_tasks:
        perplexity = Evaluator(
            model,
            partitioner,
            shardings.params,
            eval_tasks,
            seq_len=seq_len,
            batch_size=batch_size,
            num_batches=eval_batches,
            use_cached=use_cached,
        )
        evaluations.append(Evaluation("evaluation", eval_every, perplexity))
    if execution_eval and execution_eval.every:
        execution = during_training.ExecutionEvaluator(
            model_config,
            partitioner,
            vocabulary,
            execution_eval,
            prefix_prompt=prefix_lm,
        )
        evaluations.append(Evaluation("execution evaluation", execution_eval.every, execution))
    dog = watchdog.Watchdog.for_this_process(
        step_timeout_s=step_timeout_s,
        slow_op_timeout_s=slow_op_timeout_s,
        peer_timeout_s=peer_timeout_s,
    )
    with dog:
        loop = Loop(
            step_fn=step_fn,
            next_batch=lambda: partitioner.global_batch(next(data)),
            save=lambda state: ckpt.save(
                int(state.step), state, data.save_position(), config_text, run
            ),
            evaluations=evaluations,
            progress=metrics.Progress(model_config, seq_len, batch_size * seq_len, total_steps),
            writer=metrics.make_writer(model_dir),
            total_steps=total_steps,
            log_every=log_every,
            checkpoint_every=checkpoint_every,
            max_consecutive_skips=max_consecutive_skips,
            watchdog=dog,
        )
        try:
            with partitioner.activate():
                with dog.slow_op("checkpoint restore or state initialisation"):
                    state = _restore_or_init(
                        ckpt,
                        data,
                        abstract,
                        shardings,
                        lambda: _initial_state(
                            init_from_hf,
                            model,
                            optimizer,
                            shape,
                            partitioner,
                            seed,
                            abstract,
                            shardings,
                        ),
                        init_from_hf,
                    )
                return loop.run(state)
        except Exception:
            logger.exception("training failed; first checking whether a process was lost")
            dog.settle()  # a lost process explains the error: it is named, and aborts, here
            raise
        finally:
            with dog.slow_op("the last checkpoint commit"):
                loop.writer.close()
                ckpt.close()


def _log_header(task, model_config, batch_size, seq_len, total_steps, partitioner, model_dir):
    """What runs and where: the console's first lines."""
    mesh = partitioner.mesh
    axes = " x ".join(f"{name} {size}" for name, size in mesh.shape.items())
    devices, processes = mesh.devices.size, jax.process_count()
    logger.info(
        "train %s for %d steps: %s parameters, batch %d x %d tokens",
        task,
        total_steps,
        _short_count(model_config.num_params()),
        batch_size,
        seq_len,
    )
    logger.info(
        "mesh %s over %d %s device%s, %d process%s",
        axes,
        devices,
        mesh.devices.flat[0].device_kind,
        "s" * (devices > 1),
        processes,
        "es" * (processes > 1),
    )
    logger.info("MODEL_DIR %s", model_dir)


def _short_count(n: int) -> str:
    """9430000 -> '9.43M'."""
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


def _record_vocabulary(checkpoint_dir: str, vocabulary, model_config: TransformerConfig) -> None:
    """Checks the model against its tokenizer and keeps the tokenizer with the checkpoints.

    Sampling, evaluation and export read it back (vocab.load_saved_vocabulary), so they
    tokenize as training did. A rerun must use the tokenizer its checkpoints were made with.
    """
    size = vocabulary.vocab_size
    if model_config.vocab_size < size:
        raise ValueError(
            f"VOCAB_SIZE {model_config.vocab_size} is smaller than the tokenizer's {size} ids"
        )
    if model_config.vocab_size > size:
        logger.warning(
            "VOCAB_SIZE %d is larger than the tokenizer's %d ids: %d embedding rows stay unused",
            model_config.vocab_size,
            size,
            model_config.vocab_size - size,
        )
    vocab.keep_vocabulary(
        vocabulary,
        os.path.join(checkpoint_dir, vocab.SAVED_VOCABULARY_DIR),
        made="this run's checkpoints",
        remedy="use that one or another MODEL_DIR",
        save=jax.process_index() == 0,
    )


def _check_hf_architecture(hf_dir: str, model_config: TransformerConfig) -> None:
    """Raises a ValueError naming both sides of every way hf_dir's model differs from ours."""
    checkpoint = hf.config_from_hf(hf.read_config(hf_dir))
    if problems := hf.architecture_mismatches(checkpoint, model_config):
        raise ValueError(
            f"INIT_FROM_HF {hf_dir} does not fit the configured model:\n  " + "\n  ".join(problems)
        )


def _initial_state(init_from_hf, model, optimizer, shape, partitioner, seed, abstract, shardings):
    """Step 0: the weights of init_from_hf with a fresh optimizer state, else a random init."""
    if not init_from_hf:
        logger.info("fresh start: random initialisation (seed %d)", seed)
        return train_state.init_train_state(
            model, optimizer, shape, partitioner, seed, shardings=shardings
        )
    _check_hf_architecture(init_from_hf, model.config)
    params, _ = hf.import_checkpoint(init_from_hf, scan_layers=model.config.scan_layers)
    state = train_state.train_state_from_params(params, abstract, optimizer, partitioner, shardings)
    logger.info("fresh start: weights from INIT_FROM_HF %s", init_from_hf)
    return state


def _restore_or_init(ckpt, data, abstract, shardings, init: Callable, init_from_hf):
    """The newest valid checkpoint's state (moving data to its position), else init()."""
    restored = ckpt.restore_latest(abstract, shardings)
    if restored is None:
        return init()
    unused = f" (INIT_FROM_HF {init_from_hf} is not used)" if init_from_hf else ""
    logger.info("resumed from step %d%s", restored.step, unused)
    data.restore_position(restored.data_position)
    return restored.state


def _host_batches(
    task: str,
    seq_len: int,
    batch_size: int,
    seed: int,
    data_shards: int | None,
    use_cached: bool,
) -> pipeline.BatchIterator:
    """This process's rows of each global batch, read from its own data shards."""
    process_count = jax.process_count()
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} does not split over {process_count} processes")
    num_shards = data_shards or process_count
    dataset = pipeline.make_host_dataset(
        task,
        shards=pipeline.host_shards(num_shards, jax.process_index(), process_count),
        num_shards=num_shards,
        feature_lengths={"targets": seq_len},
        batch_size=batch_size // process_count,
        seed=seed,
        use_cached=use_cached,
    )
    return pipeline.BatchIterator(dataset)


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Scores of the parameters the loop logs every `every` steps (0: only after the last)."""

    name: str
    every: int
    run: Callable[[object], dict[str, float]]


@dataclasses.dataclass
class Loop:
    """The training loop's control flow, separate from how its parts are built.

    Step metrics are read one step behind, after the next step is dispatched, so the host
    never waits for the device except at log, eval and checkpoint boundaries, and after the
    first step: its call compiles, so throughput (tokens/s, MFU, ETA) counts from its end.
    """

    step_fn: Callable
    next_batch: Callable[[], dict]
    save: Callable
    evaluations: Sequence[Evaluation]
    progress: metrics.Progress
    writer: object
    total_steps: int
    log_every: int
    checkpoint_every: int
    max_consecutive_skips: int
    watchdog: watchdog.Watchdog

    def run(self, state) -> dict[str, float] | None:
        step = int(state.step)
        if step >= self.total_steps:
            logger.warning(
                "the run is already finished: its checkpoint holds step %d of %d; nothing to "
                "do (raise TRAIN_STEPS to train on)",
                step,
                self.total_steps,
            )
            return None
        stop = _StopOnSigterm()
        self.progress.start(step)
        summary, window, previous, evaluated = {}, [], None, {}
        # Steps finish one behind their dispatch; the first also compiles.
        first = step + 1
        self.watchdog.expect(f"step {first} (with compilation)", self.watchdog.slow_op_timeout_s)
        while step < self.total_steps and not stop.received:
            state, step_metrics = self.step_fn(state, self.next_batch())
            step += 1
            if step == first:
                jax.block_until_ready(step_metrics)
                seconds = self.progress.start(step)
                logger.info(
                    "step %d done in %.1f s, compilation included (throughput counts from here)",
                    step,
                    seconds,
                )
            if previous is not None:
                self._check_finite(step - 1, previous)
                self.watchdog.expect(f"step {step}")
            previous = step_metrics
            window.append(step_metrics)
            if step % self.log_every == 0 or step == self.total_steps:
                summary = self._log(step, window)
                window = []
            for evaluation in self.evaluations:
                if evaluation.every and step % evaluation.every == 0:
                    summary.update(self._evaluate(evaluation, step, state))
                    evaluated[evaluation.name] = step
            if step % self.checkpoint_every == 0:
                self._save(step, state)
        if previous is not None:
            self._check_finite(step, previous)
        if step % self.checkpoint_every:
            self._save(step, state)  # the final or preempted step
        for evaluation in self.evaluations:
            if evaluated.get(evaluation.name) != step and not stop.received:
                summary.update(self._evaluate(evaluation, step, state))
        return summary

    def _save(self, step: int, state) -> None:
        with self.watchdog.slow_op(f"checkpoint save at step {step}"):
            self.save(state)

    def _check_finite(self, step: int, step_metrics) -> None:
        skips = int(step_metrics["consecutive_skips"])
        if skips:
            logger.warning("step %d: non-finite loss or gradient, update skipped", step)
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

    def _evaluate(self, evaluation: Evaluation, step: int, state) -> dict[str, float]:
        with self.watchdog.slow_op(f"{evaluation.name} at step {step}"):
            results = evaluation.run(state.params)
        self.progress.start(step)  # throughput and ETA leave evaluations out
        self.writer.write_scalars(step, results)
        for line in _result_lines(results):
            logger.info("step %d | %s", step, line)
        return results


def _result_lines(results: dict[str, float]) -> list[str]:
    """Console lines of evaluation results: one per held-out task, one per other result.

    {"eval/t/loss": 2.0, "eval/t/perplexity": 7.389, "humaneval/pass@1": 0.125} gives
    "eval/t loss 2.0000 perplexity 7.3890" and "humaneval/pass@1 0.1250".
    """
    lines: dict[str, list[str]] = {}
    for name, value in sorted(results.items()):
        task, _, metric = name.rpartition("/")
        if name.startswith("eval/") and task.count("/") == 1:
            lines.setdefault(task, [task]).append(f"{metric} {value:.4f}")
        else:
            lines[name] = [f"{name} {value:.4f}"]
    return [" ".join(parts) for parts in lines.values()]


class _StopOnSigterm:
    """Records SIGTERM so the loop can save at the current step and exit cleanly."""

    def __init__(self):
        self.received = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        del frame
        logger.warning("signal %d: saving a checkpoint at the current step, then stopping", signum)
        self.received = True
