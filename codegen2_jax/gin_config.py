"""Gin parsing for every entry point: the repo's gin/ search path, fresh state, operative config."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import gin

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"


def parse(files: Sequence[str], bindings: Sequence[str] = ()) -> None:
    """Clears gin and parses files (relative to gin/ or absolute) plus binding strings."""
    gin.clear_config(clear_constants=True)
    gin.add_config_file_search_path(str(GIN_DIR))
    gin.parse_config_files_and_bindings(list(files), list(bindings), finalize_config=False)


def configured(fn):
    """The gin-configured version of a plain library function or class (dynamic registration)."""
    return gin.get_configurable(fn)


def model_files() -> list[str]:
    """Every shipped model size, as paths relative to gin/."""
    return sorted(str(p.relative_to(GIN_DIR)) for p in (GIN_DIR / "models").glob("*.gin"))


def mesh_files() -> list[str]:
    """Every shipped mesh rule table, as paths relative to gin/."""
    return sorted(str(p.relative_to(GIN_DIR)) for p in (GIN_DIR / "mesh").glob("*.gin"))
