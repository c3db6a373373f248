"""metrics.jsonl survives resumed and killed sessions; MFU follows the README definition."""

import jax
import pytest

from codegen2_jax import metrics
from codegen2_jax.model import TransformerConfig


def test_resumed_sessions_append_and_later_lines_win(tmp_path):
    first = metrics.JsonlWriter(str(tmp_path))
    first.write_scalars(1, {"train/loss": 2.5})
    first.write_scalars(2, {"train/loss": 0.1 + 0.2})
    with open(tmp_path / metrics.METRICS_FILE, "a") as f:
        f.write('{"step": 3, "train/lo')  # killed mid-write
    second = metrics.JsonlWriter(str(tmp_path))
    second.write_scalars(2, {"train/loss": 2.25, "eval/x/loss": 3.0})
    second.close()
    by_step = metrics.read_metrics(str(tmp_path))
    assert by_step == {1: {"train/loss": 2.5}, 2: {"train/loss": 2.25, "eval/x/loss": 3.0}}


def test_floats_round_trip_exactly(tmp_path):
    writer = metrics.JsonlWriter(str(tmp_path))
    writer.write_scalars(7, {"loss": 0.1 + 0.2})
    assert metrics.read_metrics(str(tmp_path))[7]["loss"] == 0.1 + 0.2


def test_mfu_is_undefined_on_cpu_and_formula_elsewhere(monkeypatch):
    config = TransformerConfig(num_layers=16, embed_dim=2048, num_heads=16)
    assert metrics.model_flops_utilization(config, 2048, 1000.0) is None
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    flops = 6 * (config.num_params() - 51200 * 2048) + 12 * 16 * 2048 * 2048
    assert metrics.model_flops_utilization(config, 2048, 1000.0) == pytest.approx(
        1000.0 * flops / 989e12
    )
