"""A model trained here, read back from its Checkpointer directory (usually MODEL_DIR/checkpoints).

Each step stores a run record (RunRecord): the TransformerConfig that rebuilds the model,
whether prompts are bidirectional prefixes (a prefix-LM), the tasks and what identifies the
tokenizer, which training kept beside the steps (vocabulary/). Only the parameters are read
(and verified against the step's digests); the optimizer state stays on disk. Sampling,
evaluation and export all load models this way.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import logging
import re
from typing import Any, NamedTuple

import gin
import jax
from etils import epath

from codegen2_jax import gin_config, partitioning, train_state
from codegen2_jax.checkpointing import checkpointer
from codegen2_jax.model import Decoder, TransformerConfig

_MODEL_IMPORT = "from codegen2_jax.model import config"  # in an older step's gin config

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What a run trained, as data: each checkpoint step stores it beside its gin config.

    Attributes:
      model: the model's TransformerConfig.
      prefix_lm: whether prompts were bidirectional prefixes (the prefix_lm objective).
      train_task: the seqio task or mixture trained on (None: a step older than the record).
      eval_tasks: the held-out tasks scored during training, in their configured order.
      vocabulary: what identifies the tokenizer kept in vocabulary/ (vocabulary_record);
        None: a step older than the record.
    """

    model: TransformerConfig
    prefix_lm: bool
    train_task: str | None
    eval_tasks: tuple[str, ...]
    vocabulary: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> RunRecord:
        model, eval_tasks = TransformerConfig.from_dict(record["model"]), record["eval_tasks"]
        return cls(**{**record, "model": model, "eval_tasks": tuple(eval_tasks)})


def vocabulary_record(vocabulary) -> dict[str, Any]:
    """What identifies a tokenizer: its saved file's name and SHA-256, and its size."""
    from codegen2_jax.data import vocab  # imports seqio and TensorFlow

    name, contents = vocab.vocabulary_file(vocabulary)
    return {
        "file": name,
        "sha256": hashlib.sha256(contents).hexdigest(),
        "vocab_size": vocabulary.vocab_size,
    }


def _recorded_run(record: dict[str, Any] | None, text: str) -> RunRecord:
    """A step's run record; `text`, its gin config, serves only steps saved without one."""
    if record is None:
        return run_record_of_older_checkpoint(text)
    return RunRecord.from_json(record)


def run_record_of_older_checkpoint(text: str) -> RunRecord:
    """The reader of steps saved before the run record (checkpoint format 2 and older).

    Their gin config text is all they store: its TransformerConfig bindings rebuild the
    model, its OBJECTIVE macro says whether it trained a prefix-LM; the tasks and the
    tokenizer's identity are unknown.
    """
    gin.clear_config(clear_constants=True)
    gin.parse_config(
        "\n".join(s for s in gin_config.saved_statements(text) if _is_model_statement(s))
    )
    model = gin_config.configured(TransformerConfig)()
    prefix_lm = gin_config.saved_macro(text, "OBJECTIVE") == "prefix_lm"
    return RunRecord(model, prefix_lm, train_task=None, eval_tasks=(), vocabulary=None)


def _is_model_statement(statement: str) -> bool:
    # Only what TransformerConfig reads: other bindings name modules (tasks, train) whose
    # import would need TensorFlow, and are of no use here.
    if statement.startswith(("from __gin__", _MODEL_IMPORT, "config.TransformerConfig.")):
        return True
    macro = gin_config.macro_assignment(statement)
    if macro is None:
        return False
    value = macro[1]
    try:
        ast.literal_eval(value)
        return True
    except (ValueError, SyntaxError):
        return re.fullmatch(r"%[\w.]+", value) is not None


def _single_device() -> partitioning.Partitioner:
    return partitioning.make_partitioner(rules=(), data=1, devices=jax.local_devices()[:1])


def _checkpointer(directory: str) -> checkpointer.Checkpointer:
    if not epath.Path(directory).is_dir():
        raise FileNotFoundError(f"no checkpoint directory {directory}")
    # Read-only: a running job's in-progress save must not be set aside by a reader.
    return checkpointer.Checkpointer(directory, read_only=True)


def saved_run(directory: str, step: int | None = None) -> RunRecord:
    """The run record of a step (None: the newest one whose manifest is intact)."""
    with _checkpointer(directory) as ckpt:
        if step is None and (step := ckpt.latest_intact_step()) is None:
            raise FileNotFoundError(f"no committed checkpoint in {directory}")
        return _recorded_run(ckpt.run_record(step), ckpt.gin_config(step))


def restore_params(directory: str, config: TransformerConfig, step: int | None = None):
    """(params on one device, step) of a step (None: the newest valid one)."""
    abstract, shardings = train_state.param_shardings(Decoder(config), (1, 1), _single_device())
    with _checkpointer(directory) as ckpt:
        if step is None:
            restored = ckpt.restore_latest_params(abstract, shardings)
        else:
            restored = ckpt.restore_params(step, abstract, shardings)
    if restored is None:
        raise FileNotFoundError(f"no valid checkpoint in {directory}")
    if _recorded_run(restored.run, restored.gin_config).model != config:
        raise ValueError(f"step {restored.step} in {directory} was trained with another model")
    return restored.state, restored.step


class TrainedModel(NamedTuple):
    """A step's parameters and how the model was trained.

    Attributes:
      params, config: the parameters and their TransformerConfig.
      vocabulary: the tokenizer it was trained with (a seqio Vocabulary).
      prefix_prompt: whether it was trained as a prefix-LM.
      step: the step the parameters are from.
    """

    params: Any
    config: TransformerConfig
    vocabulary: Any
    prefix_prompt: bool
    step: int


def load(directory: str, step: int | None = None) -> TrainedModel:
    """A step of a Checkpointer directory (None: the newest valid one)."""
    run = saved_run(directory, step)
    params, step = restore_params(directory, run.model, step)
    vocabulary = _saved_vocabulary(directory, run.vocabulary)
    return TrainedModel(params, run.model, vocabulary, run.prefix_lm, step)


def _saved_vocabulary(directory: str, recorded: dict[str, Any] | None):
    """The tokenizer kept in directory's vocabulary/, checked against the one recorded.

    Raises:
      ValueError: vocabulary/ holds another tokenizer than the run recorded, or none.
    """
    from codegen2_jax.data import vocab  # imports seqio and TensorFlow

    saved_dir = f"{directory.rstrip('/')}/{vocab.SAVED_VOCABULARY_DIR}"
    vocabulary = vocab.load_saved_vocabulary(saved_dir)
    if recorded is None:  # a step older than the record
        if vocabulary is None:  # and than training keeping its tokenizer
            logger.warning("%s keeps no tokenizer: using the shipped one", directory)
            return vocab.default_vocabulary()
        return vocabulary
    if vocabulary is None or vocabulary_record(vocabulary) != recorded:
        raise ValueError(
            f"{saved_dir} does not hold the tokenizer the run trained with ({recorded})"
        )
    return vocabulary
