"""A model trained here, read back from its Checkpointer directory (usually MODEL_DIR/checkpoints).

Each step stores the gin config it was trained with; its TransformerConfig bindings rebuild the
model, and its OBJECTIVE says whether prompts are bidirectional prefixes (a prefix-LM). The
tokenizer is the one training kept beside the steps (vocabulary/). Only the parameters are read
(and verified against the step's digests); the optimizer state stays on disk. Sampling,
evaluation and export all load models this way.
"""

from __future__ import annotations

import ast
import logging
import re
from typing import Any, NamedTuple

import gin
import jax
from etils import epath

from codegen2_jax import checkpointing, gin_config, partitioning, train_state
from codegen2_jax.model import Decoder, TransformerConfig

MODEL_IMPORT = "from codegen2_jax.model import config"
PREFIX_LM_OBJECTIVE = "prefix_lm"  # tasks/objectives.py's name; prompts become prefixes

logger = logging.getLogger(__name__)


def _is_model_statement(statement: str) -> bool:
    # Only what TransformerConfig reads: other bindings name modules (tasks, train) whose
    # import would need TensorFlow, and are of no use here.
    if statement.startswith(("from __gin__", MODEL_IMPORT, "config.TransformerConfig.")):
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


def trained_as_prefix_lm(text: str) -> bool:
    """Whether a saved gin config text trained a prefix-LM (its OBJECTIVE macro)."""
    return gin_config.saved_macro(text, "OBJECTIVE") == PREFIX_LM_OBJECTIVE


def model_config_from_gin(text: str) -> TransformerConfig:
    """The TransformerConfig that a saved gin config text binds (its other bindings ignored)."""
    gin.clear_config(clear_constants=True)
    gin.parse_config(
        "\n".join(s for s in gin_config.saved_statements(text) if _is_model_statement(s))
    )
    return gin_config.configured(TransformerConfig)()


def _single_device() -> partitioning.Partitioner:
    return partitioning.make_partitioner(rules=(), data=1, devices=jax.local_devices()[:1])


def _checkpointer(directory: str) -> checkpointing.Checkpointer:
    if not epath.Path(directory).is_dir():
        raise FileNotFoundError(f"no checkpoint directory {directory}")
    # Read-only: a running job's in-progress save must not be set aside by a reader.
    return checkpointing.Checkpointer(directory, read_only=True)


def saved_gin_config(directory: str, step: int | None = None) -> str:
    """The gin config text stored with a step (None: the newest intact one)."""
    with _checkpointer(directory) as checkpointer:
        text = checkpointer.latest_gin_config() if step is None else checkpointer.gin_config(step)
    if text is None:
        raise FileNotFoundError(f"no committed checkpoint in {directory}")
    return text


def restore_params(directory: str, config: TransformerConfig, step: int | None = None):
    """(params on one device, step) of a step (None: the newest valid one)."""
    abstract, shardings = train_state.param_shardings(Decoder(config), (1, 1), _single_device())
    with _checkpointer(directory) as checkpointer:
        if step is None:
            restored = checkpointer.restore_latest_params(abstract, shardings)
        else:
            restored = checkpointer.restore_params(step, abstract, shardings)
    if restored is None:
        raise FileNotFoundError(f"no valid checkpoint in {directory}")
    if model_config_from_gin(restored.gin_config) != config:
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
    from codegen2_jax.data import vocab  # imports seqio and TensorFlow

    text = saved_gin_config(directory, step)
    config = model_config_from_gin(text)
    params, step = restore_params(directory, config, step)
    vocabulary = vocab.load_saved_vocabulary(
        f"{directory.rstrip('/')}/{vocab.SAVED_VOCABULARY_DIR}"
    )
    if vocabulary is None:  # saved before training kept its tokenizer
        logger.warning("%s keeps no tokenizer: using the shipped one", directory)
        vocabulary = vocab.default_vocabulary()
    return TrainedModel(params, config, vocabulary, trained_as_prefix_lm(text), step)
