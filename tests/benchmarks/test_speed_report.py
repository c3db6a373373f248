"""The one-call speed report runs every measurement in its own process and compares them."""

import json
import sys

import pytest

from codegen2_jax.benchmarks import speed_report
from tests import training_runs

# Stand-ins for the reference scripts (which live outside the repository): their output format.
JAX_REFERENCE = """import json, sys
tokens = 2000.0 if "--prefix-lm" in sys.argv else 2500.0
print(json.dumps({"what": "jax reference train step", "tokens_per_s": tokens}))
"""
HF_REFERENCE = """import json
print(json.dumps({"what": "bf16 matmul 8192^3", "tflops": 1.0}))
print(json.dumps({"what": "hf codegen train step", "tokens_per_s": 100.0}))
for batch, tokens in ((1, 10.0), (4, 20.0)):
    print(json.dumps({"what": "hf codegen greedy decode", "batch": batch, "tokens_per_s": tokens}))
"""


@pytest.mark.slow
def test_tiny_report_measures_the_project_beside_its_references(tmp_path, capsys, monkeypatch):
    training_runs.set_subprocess_env(monkeypatch)  # the measurements see one device, not 8
    (tmp_path / speed_report.JAX_REFERENCE).write_text(JAX_REFERENCE)
    (tmp_path / speed_report.HF_REFERENCE).write_text(HF_REFERENCE)
    out = tmp_path / "report.json"
    assert speed_report.main([f"--anchors={tmp_path}", "--tiny", f"--out={out}"]) == 0
    report = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == report
    train, decode = report["train_tokens_per_s"], report["decode_tokens_per_s"]
    assert report["device"] == "cpu" and all(train[k] > 0 for k in speed_report.LAYOUTS)
    assert [line["layout"] for line in report["runs"]["train_prefix_lm"]] == ["prefix_lm"]
    pallas = report["runs"]["train_prefix_lm_pallas"]
    assert [(line["layout"], line["attention"]) for line in pallas] == [("prefix_lm", "pallas")]
    assert report["runs"]["train_packed"][0]["attention"] == "xla"  # the tiny shape's default
    ratios = report["ratios"]
    assert ratios["train_causal_vs_jax_reference"] == pytest.approx(train["causal"] / 2500.0)
    assert ratios["train_prefix_lm_vs_causal"] == pytest.approx(
        train["prefix_lm"] / train["causal"]
    )
    assert ratios["train_packed_pallas_vs_causal"] == pytest.approx(
        train["packed_pallas"] / train["causal"]
    )
    assert ratios["decode_batch_4_vs_hf"] == pytest.approx(decode["batch_4"] / 20.0)
    assert report["runs"]["decode"][1]["new_tokens"] == speed_report.TINY.new_tokens


def test_a_failing_measurement_stops_the_report_naming_it(tmp_path):
    (tmp_path / speed_report.JAX_REFERENCE).write_text("raise SystemExit('no device')")
    with pytest.raises(RuntimeError, match="jax_ref_bench.py --tiny exited with 1:\nno device"):
        speed_report._run([sys.executable, str(tmp_path / speed_report.JAX_REFERENCE), "--tiny"])
