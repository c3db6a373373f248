"""Training metrics: throughput and MFU, the console progress line, TensorBoard writers."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping

import jax
from etils import epath

from codegen2_jax.model import TransformerConfig

logger = logging.getLogger(__name__)

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
FINAL_METRICS_FILE = "final_metrics.json"  # the finished run's summary (main writes it)


def make_writer(model_dir: str):
    """A clu MetricWriter: TensorBoard events and metrics.jsonl under model_dir on process 0.

    metrics.jsonl holds one {"step": ..., name: value} line per write, exact to the bit
    (repr of the float), for scripts, plots and resume checks. Read it with read_metrics.
    """
    # Imported here: clu's writers need TensorFlow, which GPU benchmark images lack.
    from clu import metric_writers

    writer = metric_writers.create_default_writer(
        model_dir, just_logging=jax.process_index() > 0, asynchronous=True
    )
    if jax.process_index() > 0:
        return writer
    return metric_writers.MultiWriter([writer, JsonlWriter(model_dir)])


class JsonlWriter:
    """Scalars as JSON lines (the clu MetricWriter methods the training loop uses).

    A local model_dir gets one metrics.jsonl, appended to by each (resumed) session. Object
    stores (gs://) cannot append, so there each session writes its own
    metrics.jsonl.<first step> object, rewritten at most once a minute and on close.
    """

    REMOTE_FLUSH_SECONDS = 60.0

    def __init__(self, model_dir: str):
        self._dir = epath.Path(model_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._remote = "://" in str(model_dir)
        self._lines: list[str] = []
        self._path: epath.Path | None = None
        self._last_flush = time.monotonic()

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        record = {"step": int(step), **{k: float(v) for k, v in scalars.items()}}
        if self._path is None:
            name = f"{METRICS_FILE}.{int(step)}" if self._remote else METRICS_FILE
            self._path = self._dir / name
        self._lines.append(json.dumps(record) + "\n")
        if not self._remote or time.monotonic() - self._last_flush > self.REMOTE_FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self._path is None:
            return
        if self._remote:
            self._path.write_text("".join(self._lines))
        elif self._lines:
            torn = self._path.exists() and not self._path.read_bytes().endswith(b"\n")
            with self._path.open("a") as f:  # a killed run keeps every line it logged
                f.writelines(["\n"] * torn + self._lines)
            self._lines = []
        self._last_flush = time.monotonic()

    def close(self) -> None:
        self.flush()

    def __getattr__(self, name):
        # Images, histograms, texts and the like have no JSON form: accept and drop them.
        if name.startswith("write_"):
            return lambda *args, **kwargs: None
        raise AttributeError(name)


def read_metrics(model_dir: str) -> dict[int, dict[str, float]]:
    """{step: {name: value}} from a run's metrics files; later lines (a resumed run) win."""
    directory = epath.Path(model_dir)
    sessions = sorted(directory.glob(f"{METRICS_FILE}.*"), key=lambda p: int(p.suffix[1:]))
    by_step: dict[int, dict[str, float]] = {}
    for path in [directory / METRICS_FILE, *sessions]:
        if not path.exists():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                # A process killed mid-write leaves a torn line; its resumed run logs it again.
                logger.warning("%s:%d: skipping a torn line", path, number)
                continue
            by_step.setdefault(record.pop("step"), {}).update(record)
    return by_step


@dataclasses.dataclass
class Progress:
    """Turns step timestamps into tokens/s, MFU and ETA, and prints the progress line.

    The figures of an update cover the steps since the clock last started or updated; the
    training loop restarts it after what it leaves out (compilation, evaluations).
    """

    config: TransformerConfig
    seq_len: int
    tokens_per_step: int
    total_steps: int
    clock: Callable[[], float] = time.perf_counter
    _last_step: int = -1
    _last_time: float = 0.0

    def start(self, step: int) -> float:
        """(Re)starts the clock at step; returns the seconds since it last started or updated."""
        now = self.clock()
        elapsed = now - self._last_time
        self._last_step, self._last_time = step, now
        return elapsed

    def update(self, step: int, scalars: Mapping[str, float]) -> dict[str, float]:
        """Adds throughput figures for the steps since the last start or update; logs the line.

        At the step the clock started at, no step is timed: the line has the loss only.
        """
        now = self.clock()
        steps_done = step - self._last_step
        out = dict(scalars)
        if steps_done <= 0:
            logger.info(self.line(step, out, None))
            return out
        seconds_per_step = (now - self._last_time) / steps_done
        self._last_step, self._last_time = step, now
        tokens_per_s = self.tokens_per_step / max(seconds_per_step, 1e-9)
        mfu = model_flops_utilization(self.config, self.seq_len, tokens_per_s)
        out.update(tokens_per_s=tokens_per_s, seconds_per_step=seconds_per_step)
        if mfu is not None:
            out["mfu"] = mfu
        logger.info(self.line(step, out, (self.total_steps - step) * seconds_per_step))
        return out

    def line(self, step: int, scalars: Mapping[str, float], eta_s: float | None) -> str:
        head = f"step {step}/{self.total_steps} | loss {scalars['loss']:.4f}"
        if eta_s is None:
            return head
        mfu = f"{100 * scalars['mfu']:.1f}%" if "mfu" in scalars else "n/a"
        return (
            f"{head} | {scalars['tokens_per_s']:,.0f} tok/s | MFU {mfu} | "
            f"ETA {format_duration(eta_s)}"
        )


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"
