"""Markdown tables for the reports the tools write (sweep summaries, lessons, loss curves)."""

from __future__ import annotations

from collections.abc import Sequence


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table; a "|" inside a cell is escaped so it cannot split the cell."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(_cell(str(c)) for c in line) + " |" for line in lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
