"""Every shipped gin model and mesh file parses and builds what it describes."""

import argparse

import pytest

from codegen2_jax import gin_config, partitioning
from codegen2_jax.model import TransformerConfig

RELEASED = {  # CodeGen2 checkpoints: (layers, d_model, heads)
    "models/1b.gin": (16, 2048, 16),
    "models/3_7b.gin": (16, 4096, 16),
    "models/7b.gin": (32, 4096, 16),
    "models/16b.gin": (34, 6144, 24),
}


@pytest.mark.parametrize("path", gin_config.model_files())
def test_model_file_builds_a_config(path):
    gin_config.parse([path])
    config = gin_config.configured(TransformerConfig)()
    assert config.num_params() > 0
    if path in RELEASED:
        shape = (config.num_layers, config.embed_dim, config.num_heads)
        assert shape == RELEASED[path]
        assert (config.rotary_dim, config.max_len, config.vocab_size) == (64, 2048, 51200)


def test_every_released_size_ships():
    assert set(RELEASED) <= set(gin_config.model_files())
    assert {"models/tiny.gin", "models/small.gin", "models/350m.gin"} <= set(
        gin_config.model_files()
    )


def test_small_model_is_about_ten_million_parameters():
    gin_config.parse(["models/small.gin"])  # at its own 8k vocabulary
    assert 8e6 < gin_config.configured(TransformerConfig)().num_params() < 12e6


@pytest.mark.parametrize("path", gin_config.mesh_files())
def test_mesh_file_builds_a_partitioner(path):
    gin_config.parse([path])
    partitioner = gin_config.configured(partitioning.make_partitioner)()
    assert partitioner.mesh.axis_names == partitioning.MESH_AXES
    assert partitioner.mesh.size == 8


def test_includes_resolve_to_gin_dir_whatever_the_working_directory_holds(tmp_path, monkeypatch):
    # A runs/ folder (a Python namespace package) and a look-alike file must not interfere.
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "base.gin").write_text("this is not gin")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    import tasks  # noqa: F401  (the experiment binds task parameters)

    gin_config.parse(["experiments/tiny_cpu.gin"], ["MODEL_DIR = 'runs/x'"])
    assert gin_config.configured(TransformerConfig)().num_layers == 2


def test_tool_command_line_parses_its_flags_files_mesh_and_bindings():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1)
    argv = ["--steps=3", "--gin_file=models/tiny.gin", "--gin.VOCAB_SIZE=512"]
    args = gin_config.parse_tool_args(
        parser, argv, model="models/1b.gin", mesh="mesh/data_parallel.gin"
    )
    assert (args.steps, args.mesh) == (3, "mesh/data_parallel.gin")
    config = gin_config.configured(TransformerConfig)()
    assert (config.num_layers, config.vocab_size) == (2, 512)
    assert gin_config.configured(partitioning.make_partitioner)().mesh.size == 8

    args = gin_config.parse_tool_args(argparse.ArgumentParser(), [], model="models/1b.gin")
    assert args.gin_file is None and not hasattr(args, "mesh")
    assert gin_config.configured(TransformerConfig)().num_layers == 16


@pytest.mark.parametrize(
    "binding, message",
    [
        ("NUM_LAYERS = 3", "no gin file sets or uses macro NUM_LAYERS"),
        ("VOCAB_SIZ = 3", r"macro VOCAB_SIZ \(did you mean VOCAB_SIZE\?\)"),
        ("config.TransformerConfig.num_layer = 3", r"'num_layer'.*\(did you mean num_layers\?\)"),
    ],
)
def test_a_binding_typo_is_refused_naming_the_nearest_known_name(binding, message):
    with pytest.raises(ValueError, match=message):
        gin_config.parse(["models/tiny.gin"], [binding])


def test_bindings_may_set_a_macro_another_binding_uses():
    gin_config.parse(
        ["models/tiny.gin"], ["LAYERS = 3", "config.TransformerConfig.num_layers = %LAYERS"]
    )
    assert gin_config.configured(TransformerConfig)().num_layers == 3


def test_an_unset_required_macro_stops_the_parse_naming_it():
    import tasks  # noqa: F401  (pretrain.gin binds the task registry)

    with pytest.raises(
        ValueError, match=r"required gin macro not set: MODEL_DIR \(.*--gin.MODEL_DIR"
    ):
        gin_config.parse(["experiments/tiny_cpu.gin"])
    with pytest.raises(ValueError, match="required gin macros not set: BATCH_SIZE, CORPUS"):
        gin_config.parse(
            [
                "models/tiny.gin",
                "objectives/causal.gin",
                "optimizers/adamw.gin",
                "mesh/data_parallel.gin",
                "runs/pretrain.gin",
            ],
            ["MODEL_DIR = '/unused'", "TRAIN_STEPS = 3", "SEQ_LEN = 64"],
        )
    gin_config.parse(["experiments/tiny_cpu.gin"], ["MODEL_DIR = '/unused'"])
