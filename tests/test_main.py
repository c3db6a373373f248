"""The training command line: README's invocations parse, mistakes exit 2 with one clear line."""

import pathlib
import shlex

import pytest

from codegen2_jax import main

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
COMMANDS = ("python -m codegen2_jax.main ", "bin/codegen2-train ")


def readme_invocations() -> list[list[str]]:
    """The arguments of every training command README.md shows (continuation lines joined)."""
    text = README.read_text(encoding="utf-8").replace("\\\n", " ")
    invocations = []
    for line in text.splitlines():
        for command in COMMANDS:
            if command in line:
                arguments = line.split(command, 1)[1].partition("  #")[0]
                invocations.append(shlex.split(arguments))
    return invocations


def _parse(argv):
    return main.parse_args(main.make_parser(), argv)


def test_readme_shows_the_training_commands():
    assert len(readme_invocations()) >= 3


@pytest.mark.parametrize("argv", readme_invocations())
def test_readme_invocations_parse(argv):
    args = _parse(argv)
    assert args.gin_file and args.gin_bindings[0].startswith("MODEL_DIR = '")
    assert not args.verbose and args.coordinator_address is None


def test_flags_keep_their_defaults_and_binding_order():
    args = _parse(
        [
            "--gin_file=a.gin",
            "--gin.X=1",
            "--gin_file",
            "b.gin",
            "--gin_bindings=Y = 2",
            "--verbose",
            "--coordinator_address=127.0.0.1:1234",
            "--num_processes=2",
            "--process_id=1",
        ]
    )
    assert args.gin_file == ["a.gin", "b.gin"]
    assert args.gin_bindings == ["Y = 2", "X = 1"]  # --gin.NAME=VALUE after --gin_bindings
    assert args.verbose and (args.num_processes, args.process_id) == (2, 1)
    timeouts = (args.initialization_timeout_s, args.heartbeat_timeout_s, args.shutdown_timeout_s)
    assert timeouts == (300, 60, 60)


@pytest.mark.parametrize(
    "argv, message",
    [
        ([], "--gin_file is required"),
        (["--gin_file=a.gin", "extra"], "unrecognized arguments: extra"),
        (["--gin_file=a.gin", "--gin.TRAIN_STEPS"], "needs the form --gin.NAME=VALUE"),
    ],
)
def test_usage_mistakes_exit_2_naming_the_mistake(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.splitlines()[-1]


def test_a_binding_typo_exits_2_before_any_work(monkeypatch, capsys):
    monkeypatch.setattr(main.console, "configure", lambda verbose: None)  # leave logging be
    with pytest.raises(SystemExit) as exit_info:
        main.main(["--gin_file=experiments/tiny_cpu.gin", "--gin.TRAIN_STEP=5"])
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert last_line.endswith(
        "no gin file sets or uses macro TRAIN_STEP (did you mean TRAIN_STEPS?)"
    )
