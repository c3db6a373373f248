"""seqio's offline cache: a task's deterministic steps run once on Apache Beam, read back by runs.

    python -m codegen2_jax.data.cache --tasks=my_code_v1_codegen2_mix --output_cache_dir=DIR \\
        [--gin.tasks.the_stack_root.path="'gs://bucket/the-stack-dedup/data'"] \\
        [--pipeline_options=--runner=DataflowRunner,--project=P,--region=R,...]

Every registered task marks ``seqio.CacheDatasetPlaceholder`` after read, clean and tokenize
(tasks/registry.py), so the cache holds tokenized documents and the objectives (span masks,
mixture draws) and packing still run per epoch when a run reads it. The command is seqio's
``cache_tasks_main`` (its flags: ``--min_shards``, ``--overwrite``, ``--pipeline_options``,
...; DirectRunner by default) with two additions: ``--tasks`` also takes mixture names (their
tasks are cached), and ``--gin.NAME=VALUE`` / ``--gin_bindings`` bind data roots before the
tasks are read. Beam workers on other machines import ``tasks`` (``--module_import``) but do
not see gin bindings, so the command refuses bindings with another runner: a corpus cached on
Dataflow names its files and tokenizer in its declaration.

Each task's cache keeps the tokenizer it was made with (``vocabulary/``, as checkpoints do). A
run reads the cache with ``USE_CACHED = True`` and ``CACHE_DIR = "DIR"``; ``require_cached``
stops it before any work when a task has no finished cache there, or one made with another
tokenizer than the run's.
"""

from codegen2_jax import console  # first: native libraries read their log levels at load

# isort: split
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence

import seqio

from codegen2_jax.data import pipeline, vocab

logger = logging.getLogger(__name__)


def cached_tasks(names: Iterable[str]) -> list[str]:
    """The tasks behind task and mixture names, each once, in order."""
    tasks: dict[str, None] = {}
    for name in names:
        subtasks = seqio.dataset_providers.get_subtasks(seqio.get_mixture_or_task(name))
        tasks.update((task.name, None) for task in subtasks)
    return list(tasks)


def command(names: Sequence[str], cache_dir: str) -> str:
    """The command that builds the cache of `names` in `cache_dir`."""
    return (
        f"python -m codegen2_jax.data.cache --tasks={','.join(names)} "
        f"--output_cache_dir={cache_dir}"
    )


def require_cached(names: Sequence[str], cache_dir: str | None) -> None:
    """Adds `cache_dir` to seqio's cache directories; raises unless every task is cached there.

    Raises:
      ValueError: naming the tasks without a finished cache and the command that builds it.
    """
    if not cache_dir:
        raise ValueError("USE_CACHED = True needs CACHE_DIR, the --output_cache_dir of the cache")
    seqio.add_global_cache_dirs([cache_dir])
    tasks = cached_tasks(names)
    missing = [name for name in tasks if not seqio.TaskRegistry.get(name).cache_dir]
    if missing:
        raise ValueError(
            f"no finished cache of {', '.join(missing)} in {cache_dir}; build it with "
            f"`{command(names, cache_dir)}` (plus the run's data bindings), "
            "or train with USE_CACHED = False"
        )
    for name in tasks:
        _keep_tokenizer(name, seqio.TaskRegistry.get(name).cache_dir, save=False)


def _vocabulary_dir(task_cache_dir: str) -> str:
    return os.path.join(task_cache_dir, vocab.SAVED_VOCABULARY_DIR)


def _keep_tokenizer(name: str, task_cache_dir: str, *, save: bool) -> None:
    """Checks a task's cache against the run's tokenizer; keeps it with a new cache (save)."""
    directory = _vocabulary_dir(task_cache_dir)
    if not save and vocab.load_saved_vocabulary(directory) is None:
        logger.warning("%s keeps no tokenizer (not cached by this command): unchecked", name)
    vocab.keep_vocabulary(
        pipeline.task_vocabulary(name),
        directory,
        made=f"the cache of {name}",
        remedy="cache it again into another directory",
        save=save,
    )


def _seqio_argv(argv: Sequence[str], tasks: Sequence[str]) -> list[str]:
    """seqio's arguments: --tasks spelled as the tasks to cache (escaped regexes)."""
    spelled = "--tasks=" + ",".join(re.escape(name) for name in tasks)
    return [spelled if arg.startswith("--tasks=") else arg for arg in argv]


def _finish(names: Sequence[str], cache_dir: str) -> None:
    """Keeps each new cache's tokenizer; one line per task and split (seqio's stats.json)."""
    seqio.add_global_cache_dirs([cache_dir])
    for name in names:
        task = seqio.TaskRegistry.get(name)
        _keep_tokenizer(name, task.cache_dir, save=True)
        for split in task.splits:
            stats = task.get_cached_stats(split)
            print(
                f"{name} {split}: {stats['examples']} documents, {stats['targets_tokens']} tokens"
            )
    print(f"cached in {cache_dir}")


def main() -> None:
    # seqio's script defines its absl flags when it is imported and reads them as it runs:
    # this command is that script's command line, so it alone stays on absl's flags.
    import gin
    from absl import app, flags
    from seqio.scripts import cache_tasks_main

    from codegen2_jax import gin_config

    flags.DEFINE_bool("verbose", False, "Every library's INFO lines too (Beam, seqio, ...).")
    argv, bindings = gin_config.split_gin_args(sys.argv)
    bindings += [a.split("=", 1)[1] for a in argv if a.startswith("--gin_bindings=")]
    argv = [a for a in argv if not a.startswith("--gin_bindings=")]
    import tasks  # noqa: F401  (registers the tasks; Beam workers import it too)

    gin.parse_config(bindings)
    names = cached_tasks(
        n for a in argv if a.startswith("--tasks=") for n in a.split("=", 1)[1].split(",")
    )
    argv = _seqio_argv(argv, names)
    if not any(a.startswith("--module_import=") for a in argv):
        argv.append("--module_import=tasks")
    if not any(a.startswith(("--verbosity", "-v")) for a in argv):
        argv.append("--verbosity=-1")  # Beam's and seqio's INFO lines only with --verbose

    def run(unused_argv):
        console.configure(flags.FLAGS.verbose)
        options = flags.FLAGS.pipeline_options
        if bindings and any(o.startswith("--runner") and "DirectRunner" not in o for o in options):
            raise app.UsageError(
                "gin bindings do not reach Beam workers on other machines: declare the "
                "corpus's files and tokenizer in tasks/ instead of binding them"
            )
        print(f"caching {', '.join(names)} (Beam: {options})")
        cache_tasks_main.main(unused_argv)
        _finish(names, flags.FLAGS.output_cache_dir)

    app.run(run, argv=argv)


if __name__ == "__main__":
    main()
