"""A tiny byte-level BPE tokenizer.json in CodeGen2's layout, learnt here (no download)."""

import pathlib
import sysconfig

from codegen2_jax.data import bpe

VOCAB_SIZE = 1024
NUM_MASKS = 16


def write(directory: pathlib.Path) -> pathlib.Path:
    """Learns the tokenizer from 60 standard-library modules; writes directory/tokenizer.json."""
    root = pathlib.Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8") for p in sorted(root.glob("*.py"))[:60]]
    tokenizer = bpe.train(texts, vocab_size=VOCAB_SIZE, num_masks=NUM_MASKS)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / bpe.TOKENIZER_FILE).write_text(tokenizer.tokenizer_json, encoding="utf-8")
    return directory
