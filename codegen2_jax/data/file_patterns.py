"""File patterns of a corpus: listing them, recursively, and naming files relative to a root.

A pattern is a glob over any tf.io.gfile path (local, gs://, ...). ``*``, ``?`` and ``[...]``
match within one path component, as in tf.io.gfile.glob; ``**`` as a whole component matches
any number of directories, zero included (``src/**/*.py`` also lists ``src/setup.py``).

A pattern's root is its directory part before the first wildcard. Sources name a file by its
path below that root, so a corpus keeps its names, and the validation split drawn from them,
when it moves (a local copy uploaded to gs://).
"""

import re
from collections.abc import Callable, Sequence

import tensorflow as tf

Pattern = str | Sequence[str] | Callable[[], str | Sequence[str]]
_WILDCARDS = "*?["


def patterns_of(pattern: Pattern) -> list[str]:
    """The glob strings of a pattern (a callable is called: roots bound after registration)."""
    pattern = pattern() if callable(pattern) else pattern
    return [pattern] if isinstance(pattern, str) else list(pattern)


def root_of(pattern: str) -> str:
    """The directory part of a glob before its first wildcard."""
    parts = pattern.split("/")
    for index, part in enumerate(parts):
        if any(c in part for c in _WILDCARDS):
            return "/".join(parts[:index])
    return "/".join(parts[:-1])


def relative_to_roots(path: str, roots: Sequence[str]) -> str:
    """``path`` below the longest root that holds it (unchanged when none does)."""
    holding = [root for root in roots if path.startswith(root.rstrip("/") + "/")]
    if not holding:
        return path
    return path[len(max(holding, key=len).rstrip("/")) + 1 :]


def expand(pattern: Pattern) -> list[str]:
    """The files (not directories) a pattern matches, sorted."""
    files = {f for p in patterns_of(pattern) for f in _glob(p)}
    return sorted(f for f in files if not tf.io.gfile.isdir(f))


def _glob(pattern: str) -> list[str]:
    if "**" not in pattern:
        return tf.io.gfile.glob(pattern)
    root = root_of(pattern)
    matches = _component_regex(pattern[len(root) + 1 :]).fullmatch
    if not tf.io.gfile.isdir(root):
        return []
    found = []
    for directory, _, names in tf.io.gfile.walk(root):
        for name in names:
            path = f"{directory.rstrip('/')}/{name}"
            if matches(path[len(root) + 1 :]):
                found.append(path)
    return found


def _component_regex(pattern: str) -> re.Pattern:
    """A relative glob as a regex: ``**/`` any directories, ``*`` ``?`` within a component."""
    pieces, index = [], 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            pieces.append("(?:[^/]*/)*")
            index += 3
        elif pattern.startswith("**", index):
            pieces.append(".*")
            index += 2
        elif pattern[index] == "*":
            pieces.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            pieces.append("[^/]")
            index += 1
        elif pattern[index] == "[" and "]" in pattern[index + 2 :]:
            end = pattern.index("]", index + 2)
            body = pattern[index + 1 : end]
            pieces.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            index = end + 1
        else:
            pieces.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(pieces))
