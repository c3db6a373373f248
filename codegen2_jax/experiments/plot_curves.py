"""Renders a run's loss curves (training, and held-out loss per task and objective) to a PNG
and prints the last value of each curve.

python -m codegen2_jax.experiments.plot_curves --model_dir=runs/demo \
    [--out=runs/demo/loss_curves.png]
"""

from __future__ import annotations

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")  # files only; no display on training hosts
from matplotlib import pyplot  # noqa: E402

from codegen2_jax import metrics  # noqa: E402
from codegen2_jax.experiments import tables  # noqa: E402


def loss_series(model_dir: str) -> dict[str, tuple[list[int], list[float]]]:
    """{curve name: (steps, values)} for train/loss and every eval/<task>/loss."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for step, scalars in sorted(metrics.read_metrics(model_dir).items()):
        for name, value in scalars.items():
            if name == "train/loss" or (name.startswith("eval/") and name.endswith("/loss")):
                steps, values = series.setdefault(name, ([], []))
                steps.append(step)
                values.append(value)
    if not series:
        raise ValueError(f"no loss values in {os.path.join(model_dir, metrics.METRICS_FILE)}")
    return series


def final_losses_table(series: dict[str, tuple[list[int], list[float]]]) -> str:
    """A Markdown table of each curve's last step and value."""
    rows = [
        (name, str(steps[-1]), f"{values[-1]:.4f}")
        for name, (steps, values) in sorted(series.items())
    ]
    return tables.markdown(("curve", "step", "loss"), rows)


def plot(model_dir: str, out: str) -> str:
    figure, axes = pyplot.subplots(figsize=(8, 5))
    for name, (steps, values) in sorted(loss_series(model_dir).items()):
        label = name.removeprefix("eval/").removesuffix("/loss") + (
            " (held out)" if name.startswith("eval/") else ""
        )
        axes.plot(steps, values, marker="o" if name.startswith("eval/") else None, label=label)
    axes.set(xlabel="step", ylabel="loss (nats/token)", title=os.path.basename(model_dir))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.savefig(out, dpi=120, bbox_inches="tight")
    pyplot.close(figure)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_dir", required=True, help="The run's MODEL_DIR.")
    parser.add_argument("--out", help="PNG path (default: MODEL_DIR/loss_curves.png).")
    parser.add_argument("--verbose", action="store_true", help="Every library's INFO lines too.")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    console.configure(args.verbose)
    out = plot(args.model_dir, args.out or os.path.join(args.model_dir, "loss_curves.png"))
    print(final_losses_table(loss_series(args.model_dir)))
    print(f"loss curves: {out}")


if __name__ == "__main__":
    main()
