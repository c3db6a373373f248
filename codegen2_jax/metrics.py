"""Training metrics: throughput and MFU, the console progress line, TensorBoard writers."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Mapping

import jax

from codegen2_jax.model import TransformerConfig

PEAK_FLOPS = {"gpu": 989e12}  # H100 / H200 bf16 dense (the MFU definition in README.md)


def model_flops_utilization(
    config: TransformerConfig, seq_len: int, tokens_per_s: float, *, causal: bool = False
) -> float | None:
    """tokens/s x (6 N + 12 L d T) / peak; causal=True counts half the attention FLOPs.

    None where no peak is defined for the backend (CPU).
    """
    peak = PEAK_FLOPS.get(jax.default_backend())
    if peak is None:
        return None
    flops = config.flops_per_token(seq_len)
    if causal:
        flops -= 6 * config.num_layers * config.embed_dim * seq_len
    return tokens_per_s * flops / peak


METRICS_FILE = "metrics.jsonl"


def make_writer(model_dir: str):
    """A clu MetricWriter: TensorBoard events and metrics.jsonl under model_dir on process 0.

    metrics.jsonl holds one {"step": ..., name: value} line per write, exact to the bit
    (repr of the float), for scripts, plots and resume checks. A resumed run appends; read it
    with read_metrics, where the last line for a step wins.
    """
    # Imported here: clu's writers need TensorFlow, which GPU benchmark images lack.
    from clu import metric_writers

    writer = metric_writers.create_default_writer(
        model_dir, just_logging=jax.process_index() > 0, asynchronous=True
    )
    if jax.process_index() > 0:
        return writer
    jsonl = JsonlWriter(os.path.join(model_dir, METRICS_FILE))
    return metric_writers.MultiWriter([writer, jsonl])


class JsonlWriter:
    """Scalars as JSON lines (the clu MetricWriter methods the training loop uses)."""

    def __init__(self, path: str):
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # one line per log interval; a killed run keeps what it logged

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    def __getattr__(self, name):
        # Images, histograms, texts and the like have no JSON form: accept and drop them.
        if name.startswith("write_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def read_metrics(model_dir: str) -> dict[int, dict[str, float]]:
    """{step: {name: value}} from metrics.jsonl; later lines (a resumed run) override."""
    by_step: dict[int, dict[str, float]] = {}
    with open(os.path.join(model_dir, METRICS_FILE), encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            by_step.setdefault(record.pop("step"), {}).update(record)
    return by_step


@dataclasses.dataclass
class Progress:
    """Turns step timestamps into tokens/s, MFU and ETA, and prints the progress line."""

    config: TransformerConfig
    seq_len: int
    tokens_per_step: int
    total_steps: int
    _last_step: int = -1
    _last_time: float = 0.0

    def start(self, step: int) -> None:
        self._last_step, self._last_time = step, time.perf_counter()

    def update(self, step: int, scalars: Mapping[str, float]) -> dict[str, float]:
        """Adds throughput figures for the steps since the last update and logs the line."""
        now = time.perf_counter()
        steps_done = max(step - self._last_step, 1)
        seconds_per_step = (now - self._last_time) / steps_done
        self._last_step, self._last_time = step, now
        tokens_per_s = self.tokens_per_step / seconds_per_step
        mfu = model_flops_utilization(self.config, self.seq_len, tokens_per_s)
        out = dict(scalars, tokens_per_s=tokens_per_s, seconds_per_step=seconds_per_step)
        if mfu is not None:
            out["mfu"] = mfu
        logging.info(self.line(step, out, (self.total_steps - step) * seconds_per_step))
        return out

    def line(self, step: int, scalars: Mapping[str, float], eta_s: float) -> str:
        mfu = f"{100 * scalars['mfu']:.1f}%" if "mfu" in scalars else "n/a"
        return (
            f"step {step}/{self.total_steps} | loss {scalars['loss']:.4f} | "
            f"{scalars['tokens_per_s']:,.0f} tok/s | MFU {mfu} | ETA {format_duration(eta_s)}"
        )


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
