"""The codegen2-hf command: moves parameters between Hugging Face CodeGen directories and msgpack.

    codegen2-hf import --hf_dir=D --out=F.msgpack [--mp_num=8] [--no-scan_layers]
    codegen2-hf export --params=F.msgpack --out_dir=D [--mp_num=4]

import writes F.msgpack (flax.serialization of the Decoder parameter tree) and beside it F.json,
the TransformerConfig fields; export reads that pair. Training checkpoints (orbax) will plug in
here as a second source of parameters beside the msgpack file. See hf.py for what mp_num means.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
from collections.abc import Sequence

from flax import serialization

from codegen2_jax import hf
from codegen2_jax.model.config import TransformerConfig


def save_params(params: dict, config: TransformerConfig, path: str | pathlib.Path) -> None:
    """Writes params to path (msgpack) and config to the same name with suffix .json."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(serialization.msgpack_serialize(params))
    config_json = json.dumps(dataclasses.asdict(config), indent=2) + "\n"
    path.with_suffix(".json").write_text(config_json)


def load_params(path: str | pathlib.Path) -> tuple[dict, TransformerConfig]:
    """Reads what save_params wrote: (params as numpy arrays, config)."""
    path = pathlib.Path(path)
    params = serialization.msgpack_restore(path.read_bytes())
    config = TransformerConfig(**json.loads(path.with_suffix(".json").read_text()))
    return params, config


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="codegen2-hf", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="HF checkpoint directory -> msgpack params + json")
    imp.add_argument("--hf_dir", required=True, help="directory with config.json and weights")
    imp.add_argument("--out", required=True, help="params file to write (.msgpack)")
    imp.add_argument(
        "--mp_num", type=int, default=None, help="qkv grouping (4 or 8); default: inferred"
    )
    imp.add_argument(
        "--scan_layers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="stacked layer parameters (nn.scan layout)",
    )
    exp = commands.add_parser("export", help="msgpack params + json -> HF checkpoint directory")
    exp.add_argument("--params", required=True, help="params file written by import (.msgpack)")
    exp.add_argument("--out_dir", required=True, help="directory to write")
    exp.add_argument("--mp_num", type=int, default=hf.HF_MP_NUM, help="qkv grouping to write")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the codegen2-hf console script."""
    args = parse_args(argv)
    if args.command == "import":
        params, config = hf.import_checkpoint(
            args.hf_dir, mp_num=args.mp_num, scan_layers=args.scan_layers
        )
        save_params(params, config, args.out)
        print(f"wrote {args.out} ({config.num_params():,} parameters)")
    else:
        params, config = load_params(args.params)
        hf.export_checkpoint(params, config, args.out_dir, mp_num=args.mp_num)
        print(f"wrote {args.out_dir} (mp_num {args.mp_num})")


if __name__ == "__main__":
    main()
