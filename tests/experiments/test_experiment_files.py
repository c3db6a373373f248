"""Every shipped experiment parses and builds: model, mesh, optimizer, and a registered task."""

import copy
import pathlib

import gin
import pytest
import seqio

import tasks  # noqa: F401  (registers the tasks the experiments name)
from codegen2_jax import gin_config, optim, partitioning
from codegen2_jax.data import vocab
from codegen2_jax.model import TransformerConfig
from tasks import registry

EXPERIMENTS = sorted(
    str(p.relative_to(gin_config.GIN_DIR))
    for p in (gin_config.GIN_DIR / "experiments").rglob("*.gin")
)


def test_the_demo_and_released_sizes_ship():
    names = {pathlib.Path(p).stem for p in EXPERIMENTS}
    assert {"demo_cpu", "codegen2_1b", "codegen2_3_7b", "codegen2_7b", "codegen2_16b"} <= names


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_builds(experiment):
    gin_config.parse([experiment], ["MODEL_DIR = '/unused'"])
    config = gin_config.configured(TransformerConfig)()
    partitioner = gin_config.configured(partitioning.make_partitioner)()
    gin_config.configured(optim.make_optimizer)()
    task = gin_config.configured(registry.task_name)()
    # deepcopy evaluates macro references inside the list, as gin does when it calls train.
    for name in [task, *copy.deepcopy(gin.query_parameter("%EVAL_TASKS"))]:
        seqio.get_mixture_or_task(name)  # raises when the experiment names an unknown task
    assert config.num_params() > 0 and partitioner.mesh.size == 8


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_model_fits_its_tokenizer(experiment):
    """An experiment on the shipped tokenizer has its size; others name their tokenizer."""
    gin_config.parse([experiment], ["MODEL_DIR = '/unused'"])
    vocabulary, init_from_hf = (gin.query_parameter(m) for m in ("%VOCABULARY", "%INIT_FROM_HF"))
    vocab_size = gin_config.configured(TransformerConfig)().vocab_size
    if vocabulary is None and init_from_hf is None:
        assert vocab_size == vocab.default_vocabulary().vocab_size
    else:  # CodeGen2's tokenizer, from a local copy of a released checkpoint
        assert vocab_size == 51200
