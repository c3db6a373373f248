"""The package's layout: stages as folders, a short top level, and the README's Layout section
naming exactly what is there."""

import fnmatch
import importlib
import pathlib
import pkgutil
import re

import codegen2_jax

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "codegen2_jax"
MAX_TOP_LEVEL_MODULES = 15


def _layout_entries() -> dict[str, list[str]]:
    """{folder: [names]} from the README's Layout block: "" is codegen2_jax/ itself."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"## Layout\n\n```\n(.*?)```", readme, re.S).group(1)
    entries, folder = {}, None
    for line in block.splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2
        names = []
        for word in line.split():
            if not word.endswith((".py", "/")):
                break
            names.append(word)
        if depth == 0:
            folder = "" if names == ["codegen2_jax/"] else None
            if folder == "":
                entries[""] = []
        elif folder is not None and names:
            if depth == 1:
                entries[""].extend(names)
                if names[0].endswith("/"):
                    entries[names[0].rstrip("/")] = []
            elif depth == 2:
                sub = [n for n in entries[""] if n.endswith("/")][-1].rstrip("/")
                entries[sub].extend(names)
    return entries


def _covered(files: list[str], patterns: list[str]) -> tuple[set[str], set[str]]:
    """(files no pattern names, patterns naming no file)."""
    unnamed = {f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)}
    unused = {p for p in patterns if not fnmatch.filter(files, p)}
    return unnamed, unused


def test_top_level_is_short_and_the_stages_are_folders():
    modules = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= MAX_TOP_LEVEL_MODULES, modules
    for stage in ("model", "data", "checkpointing", "sampling", "evaluation", "experiments"):
        assert (PACKAGE / stage / "__init__.py").is_file(), stage


def test_readme_layout_names_every_module_and_nothing_else():
    entries = _layout_entries()
    top_files = sorted(p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir())
    top_files = [f + "/" if (PACKAGE / f).is_dir() else f for f in top_files]
    top_files = [f for f in top_files if f not in ("__init__.py", "__pycache__/")]
    assert _covered(top_files, entries[""]) == (set(), set())
    for folder, names in entries.items():
        if folder and names:  # folders whose modules the README lists one by one
            files = [p.name for p in (PACKAGE / folder).glob("*.py") if p.name != "__init__.py"]
            assert _covered(files, names) == (set(), set()), folder


def test_nothing_in_the_library_imports_the_experiments():
    importers = [
        str(path.relative_to(ROOT))
        for path in PACKAGE.rglob("*.py")
        if "experiments" not in path.parts
        and re.search(
            r"codegen2_jax\.experiments|from codegen2_jax import .*\bexperiments\b",
            path.read_text(),
        )
    ]
    assert importers == []


def test_every_module_imports():
    # A command line no other test runs still fails here when a move breaks its imports.
    modules = [m.name for m in pkgutil.walk_packages(codegen2_jax.__path__, "codegen2_jax.")]
    for name in modules:
        importlib.import_module(name)
    assert "codegen2_jax.experiments.plot_curves" in modules
