"""Gin parsing for every entry point: the repo's gin/ search path, fresh state, operative config."""

from __future__ import annotations

import argparse
import ast
import difflib
import inspect
import logging
import pathlib
import re
import sys
from collections.abc import Sequence

import gin

GIN_DIR = pathlib.Path(__file__).resolve().parent.parent / "gin"
_MACRO = re.compile(r"([A-Z][A-Z0-9_]*)\s*=\s*(.+)", re.DOTALL)


class _GinPackageProbeFilter(logging.Filter):
    """Drops gin's ERROR for every include that is not a Python-package resource.

    gin tries each include as a package resource before its search path; the miss it logs is
    expected here, since our files live on the search path.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.module == "resource_reader" and record.levelno == logging.ERROR)


_PROBE_FILTER = _GinPackageProbeFilter()


def _search_gin_dir_first() -> None:
    """Puts gin/ ahead of the working directory on gin's include search path.

    Otherwise an include such as 'runs/pretrain.gin' is looked up in the working directory
    first, where a user's own runs/ folder either shadows it or, as a Python namespace
    package, crashes gin's package-resource probe. gin only appends search paths, so the
    order is set on its (private) prefix list.
    """
    prefixes = gin.config._LOCATION_PREFIXES  # noqa: SLF001
    if str(GIN_DIR) in prefixes:
        prefixes.remove(str(GIN_DIR))
    prefixes.insert(0, str(GIN_DIR))


def parse(files: Sequence[str], bindings: Sequence[str] = ()) -> None:
    """Clears gin and parses files (relative to gin/ or absolute) plus binding strings.

    A binding of a macro that the files neither set nor use (a typo such as TRAIN_STEP for
    TRAIN_STEPS, which gin would take as a new macro) or of a parameter the configurable does
    not have is refused, naming the nearest known one; so is a macro declared
    `NAME = %gin.REQUIRED` that nothing sets.
    """
    logging.getLogger().addFilter(_PROBE_FILTER)  # idempotent: a filter is added once
    gin.clear_config(clear_constants=True)
    _search_gin_dir_first()
    files = [str(GIN_DIR / f) if (GIN_DIR / f).is_file() else f for f in files]
    gin.parse_config_files_and_bindings(files, [], finalize_config=False)
    _check_macro_bindings(bindings)
    try:
        gin.parse_config(list(bindings))
    except ValueError as error:
        first, newline, rest = str(error).partition("\n")
        raise ValueError(f"{first}{_nearest_parameter(first)}{newline}{rest}") from None
    if missing := _unset_required_macros():
        raise ValueError(
            f"required gin macro{'s' if len(missing) > 1 else ''} not set: {', '.join(missing)}"
            f" (set {'them' if len(missing) > 1 else 'it'} in the experiment's gin file or with"
            f" --gin.{missing[0]}=VALUE)"
        )


def _unset_required_macros() -> list[str]:
    """Macros whose value is still %gin.REQUIRED after every file and binding."""
    # gin passes a macro's %gin.REQUIRED on as a plain sentinel object instead of failing.
    return sorted(
        scope
        for (scope, selector), parameters in gin.config._CONFIG.items()  # noqa: SLF001
        if selector == "gin.macro" and _is_required(parameters.get("value"))
    )


def _is_required(value) -> bool:
    return isinstance(value, gin.config.ConfigurableReference) and value.scopes == ["gin.REQUIRED"]


def _check_macro_bindings(bindings: Sequence[str]) -> None:
    known = _config_macros() | {m for b in bindings for m in re.findall(r"%([A-Z]\w*)", b)}
    for binding in bindings:
        macro = macro_assignment(binding.strip())
        if macro and macro[0] not in known:
            raise ValueError(
                f"gin binding {binding.strip()!r}: no gin file sets or uses macro {macro[0]}"
                f"{_did_you_mean(macro[0], known)}"
            )


def _config_macros() -> set[str]:
    """Macros the parsed config sets (NAME = ...) or refers to (%NAME)."""
    names = set()

    def visit(value):
        if isinstance(value, gin.config.ConfigurableReference):
            if value.selector == "gin.macro":
                names.add(value.scopes[-1])
        elif isinstance(value, list | tuple | set):
            for item in value:
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    for (scope, selector), parameters in gin.config._CONFIG.items():  # noqa: SLF001
        if selector == "gin.macro":
            names.add(scope)
        visit(parameters)
    return names


def _nearest_parameter(message: str) -> str:
    """ " (did you mean ...?)" for gin's unknown-parameter error, when one is close."""
    match = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", message)
    if not match:
        return ""
    configurable = gin.config._REGISTRY.get_match(match.group(1))  # noqa: SLF001
    if configurable is None:
        return ""
    parameters = inspect.signature(configurable.wrapped).parameters
    return _did_you_mean(match.group(2), parameters)


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def configured(fn):
    """The gin-configured version of a plain library function or class (dynamic registration)."""
    return gin.get_configurable(fn)


def model_files() -> list[str]:
    """Every shipped model size, as paths relative to gin/."""
    return sorted(str(p.relative_to(GIN_DIR)) for p in (GIN_DIR / "models").glob("*.gin"))


def mesh_files() -> list[str]:
    """Every shipped mesh rule table, as paths relative to gin/."""
    return sorted(str(p.relative_to(GIN_DIR)) for p in (GIN_DIR / "mesh").glob("*.gin"))


def parse_tool_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    model: str,
    mesh: str | None = None,
) -> argparse.Namespace:
    """The command line of a standalone tool (benchmarks, AOT), its gin parsed.

    Adds --gin_file (repeatable; default `model`), --verbose (for console.configure) and, for
    tools that shard, --mesh (default `mesh`) to the tool's own parser; `--gin.NAME=VALUE`
    arguments become bindings. Parses the flags, then gin: the files, the mesh, the bindings.

    Args:
      parser: the tool's parser with its own flags.
      argv: the arguments (None: sys.argv[1:]).
      model: the gin file used when no --gin_file is given, relative to gin/.
      mesh: the default mesh rule table, relative to gin/ (None: the tool has no --mesh).
    """
    parser.add_argument(
        "--gin_file", action="append", help=f"Gin files (relative to gin/). Default: {model}."
    )
    parser.add_argument("--verbose", action="store_true", help="Every library's INFO lines too.")
    if mesh:
        parser.add_argument("--mesh", default=mesh, help="Mesh rule table (relative to gin/).")
    rest, bindings = split_gin_args(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(rest)
    parse([*(args.gin_file or [model]), *([args.mesh] if mesh else [])], bindings)
    return args


def split_gin_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Separates t5x-style `--gin.NAME=VALUE` arguments (as bindings) from the other flags."""
    rest, bindings = [], []
    for arg in argv:
        if arg.startswith("--gin."):
            name, sep, value = arg[len("--gin.") :].partition("=")
            if not sep:
                raise ValueError(f"gin binding {arg!r} needs the form --gin.NAME=VALUE")
            bindings.append(f"{name} = {value}")
        else:
            rest.append(arg)
    return rest, bindings


def saved_statements(text: str) -> list[str]:
    """A saved gin config text as statements (continuation lines joined, comments dropped).

    Reading a saved config this way imports none of the modules it binds (trained_model reads
    checkpoints saved before their run record so).
    """
    statements, current, depth = [], [], 0
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current.append(line)
        depth += sum(line.count(c) for c in "([{") - sum(line.count(c) for c in ")]}")
        if depth <= 0:
            statements.append("\n".join(current))
            current, depth = [], 0
    return statements


def macro_assignment(statement: str) -> tuple[str, str] | None:
    """(NAME, value text) of a macro statement `NAME = value`; None for any other statement."""
    match = _MACRO.fullmatch(statement)
    return (match.group(1), match.group(2).strip()) if match else None


def saved_macro(text: str, name: str):
    """The literal value a saved gin config text gives macro `name` (None: not a literal)."""
    for statement in saved_statements(text):
        macro = macro_assignment(statement)
        if macro and macro[0] == name:
            try:
                return ast.literal_eval(macro[1])
            except (ValueError, SyntaxError):
                return None
    return None
