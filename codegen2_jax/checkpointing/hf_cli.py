"""The codegen2-hf command: Hugging Face CodeGen directories from training checkpoints, and back.

    codegen2-hf export --checkpoint_dir=MODEL_DIR/checkpoints [--step=N] --out_dir=D
    codegen2-hf export --params=F.msgpack --out_dir=D [--mp_num=4]
    codegen2-hf import --hf_dir=D --out=F.msgpack [--mp_num=8] [--no-scan_layers]

Exporting a training checkpoint (the newest valid step, or --step) writes a directory that
transformers loads offline: AutoTokenizer.from_pretrained(D) and
CodeGenForCausalLM.from_pretrained(D). It holds config.json and generation_config.json (bos, eos
and pad ids of the vocabulary the run trained with), the weights (sharded safetensors with an
index above --max_shard_size) and the tokenizer files (codegen2_jax.data.tokenizer_files). The
parameters are verified against the step's digests before anything is written.

import writes F.msgpack (flax.serialization of the Decoder parameter tree) and beside it F.json,
the TransformerConfig fields, for tools; export --params reads that pair back (weights and
config only: no tokenizer). Training starts from a Hugging Face directory with INIT_FROM_HF, not
through these files. See hf.py for what mp_num means.
"""

from __future__ import annotations

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import argparse
import dataclasses
import json
import logging
import pathlib
from collections.abc import Sequence

import jax
from flax import serialization

from codegen2_jax.checkpointing import hf
from codegen2_jax.model.config import TransformerConfig

logger = logging.getLogger(__name__)


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
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--verbose", action="store_true", help="every library's INFO lines too")
    imp = commands.add_parser(
        "import", parents=[common], help="HF checkpoint directory -> msgpack params + json"
    )
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
    exp = commands.add_parser(
        "export", parents=[common], help="training checkpoint -> HF checkpoint directory"
    )
    source = exp.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint_dir", help="a training Checkpointer directory")
    source.add_argument("--params", help="params file written by import (.msgpack)")
    exp.add_argument("--step", type=int, help="step of --checkpoint_dir (default: newest valid)")
    exp.add_argument("--out_dir", required=True, help="directory to write")
    exp.add_argument("--mp_num", type=int, default=hf.HF_MP_NUM, help="qkv grouping to write")
    exp.add_argument(
        "--max_shard_size", default=hf.MAX_SHARD_SIZE, help="largest weights file, e.g. 5GB"
    )
    args = parser.parse_args(argv)
    if args.command == "export" and args.step is not None and not args.checkpoint_dir:
        parser.error("--step selects a step of --checkpoint_dir")
    return args


def export_trained(args: argparse.Namespace) -> str:
    """Exports a step of a training checkpoint directory; returns what was written."""
    from codegen2_jax.data import tokenizer_files
    from codegen2_jax.sampling import trained_model  # imports TensorFlow (saved vocabulary)

    trained = trained_model.load(args.checkpoint_dir, args.step)
    if trained.prefix_prompt:
        logger.warning(
            "step %d was trained as a prefix-LM; transformers runs the export causally",
            trained.step,
        )
    files = hf.export_checkpoint(
        jax.device_get(trained.params),
        trained.config,
        args.out_dir,
        mp_num=args.mp_num,
        token_ids=tokenizer_files.token_ids(trained.vocabulary),
        max_shard_size=args.max_shard_size,
    )
    files += tokenizer_files.write_tokenizer(
        trained.vocabulary, args.out_dir, model_max_length=trained.config.max_len
    )
    return (
        f"exported step {trained.step} of {args.checkpoint_dir} "
        f"({trained.config.num_params():,} parameters) to {args.out_dir}: {', '.join(files)}"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the codegen2-hf console script."""
    args = parse_args(argv)
    console.configure(args.verbose)
    if args.command == "import":
        params, config = hf.import_checkpoint(
            args.hf_dir, mp_num=args.mp_num, scan_layers=args.scan_layers
        )
        save_params(params, config, args.out)
        print(f"wrote {args.out} ({config.num_params():,} parameters)")
    elif args.checkpoint_dir:
        print(export_trained(args))
    else:
        params, config = load_params(args.params)
        hf.export_checkpoint(
            params, config, args.out_dir, mp_num=args.mp_num, max_shard_size=args.max_shard_size
        )
        print(f"wrote {args.out_dir} (mp_num {args.mp_num})")


if __name__ == "__main__":
    main()
