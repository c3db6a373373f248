"""What counts as a training document: the rules for bad input, and their counters.

Every source (the embedded corpus, files, jsonl, parquet) turns raw input into document text
through these rules, so a bad file is handled the same way wherever it comes from:

- Empty input (no bytes, or only whitespace after cleaning) is skipped: ``skipped_empty``.
- Binary input, i.e. raw bytes with a NUL byte in the first ``BINARY_SNIFF_BYTES`` (git's
  heuristic), is skipped: ``skipped_binary``. Text that is already decoded (a jsonl or parquet
  field) is never sniffed: its declared type says it is text.
- Input longer than ``max_bytes`` is truncated to at most ``max_bytes`` UTF-8 bytes, cut on a
  character boundary and read no further than that from disk: ``truncated``.
- Bytes that are not valid UTF-8 become U+FFFD: ``replaced_invalid_utf8`` (documents touched).
- NUL characters left in text are deleted, because downstream C-string consumers and editors
  treat them as terminators: ``stripped_nul`` (documents touched).
- A record that is not what its format promises (a jsonl line that is not a JSON object with
  a string text field) is skipped: ``skipped_malformed``.
- Every document kept is counted in ``documents``; nothing here raises on bad content.
"""

import codecs
import collections
import logging
import threading

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 20  # 1 MiB: far above real source files, far below a data dump.
BINARY_SNIFF_BYTES = 8000

COUNTER_NAMES = (
    "documents",
    "skipped_empty",
    "skipped_binary",
    "truncated",
    "replaced_invalid_utf8",
    "stripped_nul",
    "skipped_malformed",
)


class DocumentStats:
    """Thread-safe counters of the rules applied (tf.data runs readers on several threads)."""

    def __init__(self):
        self._counts = collections.Counter({name: 0 for name in COUNTER_NAMES})
        self._lock = threading.Lock()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def log(self, what: str) -> None:
        logger.info("%s: %s", what, self.as_dict())


def _decode_utf8(raw: bytes, *, final: bool, stats: DocumentStats) -> str:
    # Without final=True an incremental decoder holds back a multi-byte character that the
    # truncation cut, instead of turning it into U+FFFD.
    try:
        return codecs.getincrementaldecoder("utf-8")().decode(raw, final=final)
    except UnicodeDecodeError:
        stats.add("replaced_invalid_utf8")
        return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(raw, final=final)


def _finish(text: str, stats: DocumentStats) -> str | None:
    if "\x00" in text:
        text = text.replace("\x00", "")
        stats.add("stripped_nul")
    if not text.strip():
        stats.add("skipped_empty")
        return None
    stats.add("documents")
    return text


def text_from_bytes(raw: bytes, *, max_bytes: int, stats: DocumentStats) -> str | None:
    """Applies the module's rules to raw file bytes.

    Args:
      raw: the file's bytes; at most ``max_bytes + 1`` are needed (see ``read_head``).
      max_bytes: truncation limit in UTF-8 bytes.
      stats: counters to update.

    Returns:
      The document text, or None when the input is skipped.
    """
    if b"\x00" in raw[:BINARY_SNIFF_BYTES]:
        stats.add("skipped_binary")
        return None
    truncated = len(raw) > max_bytes
    if truncated:
        raw = raw[:max_bytes]
        stats.add("truncated")
    return _finish(_decode_utf8(raw, final=not truncated, stats=stats), stats)


def text_from_str(text: str, *, max_bytes: int, stats: DocumentStats) -> str | None:
    """Applies the module's rules to already decoded text (a jsonl or parquet field)."""
    if text is None:
        stats.add("skipped_empty")
        return None
    if len(text) > max_bytes // 4 and len(text.encode("utf-8")) > max_bytes:
        raw = text.encode("utf-8")[:max_bytes]
        text = raw.decode("utf-8", errors="ignore")
        stats.add("truncated")
    return _finish(text, stats)


def read_head(fileobj, max_bytes: int) -> bytes:
    """Reads at most ``max_bytes + 1`` bytes: enough to detect truncation, never the whole file."""
    return fileobj.read(max_bytes + 1)
