"""HumanEval and HumanEval-Infilling by execution while a model trains.

Every `every` steps the training loop hands the current parameters to ExecutionEvaluator:
greedy completions of a fixed, evenly spread subset of HumanEval's problems and greedy fills
of a fixed subset of HumanEval-Infilling single-line are decoded on the training mesh (every
process feeds the same whole batch, the decode is sharded like training, and every process
receives all of it). Each process then runs its share of the programs in the sandbox and the
pass counts are summed over processes, so every process logs the same figures.

A program that misbehaves only fails its test. A sandbox that breaks costs that evaluation
(a warning on every process, no figures), never the run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from codegen2_jax.evaluation import humaneval, infilling
from codegen2_jax.evaluation import sandbox as sandbox_lib
from codegen2_jax.model import TransformerConfig
from codegen2_jax.partitioning import Partitioner
from codegen2_jax.sampling import decoding

logger = logging.getLogger(__name__)

INFILL_BENCHMARK = "single-line"
COMPLETION = "humaneval/pass@1"
INFILL = f"humaneval_infill/{INFILL_BENCHMARK}/pass@1"


@dataclasses.dataclass(frozen=True)
class ExecutionEvalSettings:
    """What the in-training execution evaluation decodes and scores.

    Attributes:
      every: steps between evaluations (0: none); the last step is evaluated too.
      problems: HumanEval problems (an even spread of the 164; 0: none).
      infill_tasks: HumanEval-Infilling single-line tasks (an even spread of the 1033; 0: none).
      completion_tokens: the longest completion.
      infill_tokens: the longest middle.
      batch_size: prompts per decode call (rounded up to the data-parallel size).
      truncation: how a fill becomes the middle (infilling.TRUNCATIONS).
    """

    every: int = 0
    problems: int = 16
    infill_tasks: int = 32
    completion_tokens: int = 128
    infill_tokens: int = 64
    batch_size: int = 32
    truncation: str = infilling.EOM

    def __post_init__(self):
        for name in ("every", "problems", "infill_tasks"):
            if getattr(self, name) < 0:
                raise ValueError(f"execution evaluation: {name} must be >= 0")
        for name in ("completion_tokens", "infill_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"execution evaluation: {name} must be >= 1")
        if self.every and not (self.problems or self.infill_tasks):
            raise ValueError(
                f"execution evaluation every {self.every} steps has nothing to score: "
                "problems and infill_tasks are both 0"
            )
        if self.truncation not in infilling.TRUNCATIONS:
            raise ValueError(
                f"execution evaluation: truncation {self.truncation!r} is not one of "
                f"{infilling.TRUNCATIONS}"
            )


class ExecutionEvaluator:
    """Greedy HumanEval pass@1 and HumanEval-Infilling single-line pass@1 of parameters.

    Args:
      config: the model being trained.
      partitioner: the training mesh; parameters arrive sharded as training holds them.
      vocabulary: the run's tokenizer (decoding.InfillVocabulary plus decoder_start_id).
      settings: subsets and token limits.
      prefix_prompt: whether the model is trained as a prefix-LM (prompts are prefixes).
    """

    def __init__(
        self,
        config: TransformerConfig,
        partitioner: Partitioner,
        vocabulary,
        settings: ExecutionEvalSettings,
        *,
        prefix_prompt: bool,
    ):
        self.settings = settings
        self._vocab = vocabulary
        self._start = [vocabulary.decoder_start_id]
        if settings.infill_tasks:
            _require_infill_tokens(vocabulary)
        problems = humaneval.load_problems()
        ids = humaneval.spread(sorted(problems, key=_problem_number), settings.problems)
        self._problems = {t: problems[t] for t in ids}
        tasks = infilling.load_tasks(INFILL_BENCHMARK)
        self._tasks = humaneval.spread(tasks, settings.infill_tasks)
        self._tested = {**self._problems, **infilling.problems_of(self._tasks)}
        self._parallel = partitioner.data_parallel_size
        generate = dict(config=config, prefix_prompt=prefix_prompt, partitioner=partitioner)
        self._complete = decoding.make_generate(
            max_new_tokens=settings.completion_tokens, **generate
        )
        self._infill = decoding.make_generate(max_new_tokens=settings.infill_tokens, **generate)
        self._box = sandbox_lib.Sandbox(humaneval.LIMITS)
        inactive = {k: v for k, v in self._box.protections.items() if v != sandbox_lib.ACTIVE}
        if inactive:
            logger.warning("execution evaluation: sandbox protections not active: %s", inactive)

    def __call__(self, params) -> dict[str, float]:
        """{COMPLETION: pass rate, INFILL: pass rate} for the subsets that are not empty."""
        start = time.perf_counter()
        samples = {}
        if self._problems:
            samples[COMPLETION] = self._completion_samples(params)
        if self._tasks:
            samples[INFILL] = self._infill_samples(params)
        decoded = time.perf_counter()
        passed, broken = self._score_share(samples)
        totals = multihost_utils.process_allgather(np.array([*passed, broken]))
        totals = np.asarray(totals).reshape(jax.process_count(), -1).sum(axis=0)
        logger.info(
            "execution evaluation: %s decoded in %.1f s, scored in %.1f s",
            ", ".join(f"{name} ({len(s)})" for name, s in samples.items()),
            decoded - start,
            time.perf_counter() - decoded,
        )
        if totals[-1]:
            logger.warning(
                "execution evaluation skipped: the sandbox failed on %d process(es)", totals[-1]
            )
            return {}
        return {
            name: float(count) / len(s)
            for (name, s), count in zip(samples.items(), totals[:-1], strict=True)
        }

    def _score_share(self, samples: dict[str, list]) -> tuple[list[int], int]:
        """Passes among this process's share of each benchmark's samples; 1 if the sandbox broke."""
        index, count = jax.process_index(), jax.process_count()
        try:
            return [
                sum(r.passed for r in humaneval.run_tests(s[index::count], self._tested, self._box))
                for s in samples.values()
            ], 0
        except sandbox_lib.SandboxError as error:
            logger.warning("execution evaluation: the sandbox failed: %s", error)
            return [0] * len(samples), 1

    def _completion_samples(self, params) -> list[humaneval.Sample]:
        prompts = [p["prompt"] for p in self._problems.values()]
        width = max(len(self._start) + len(self._vocab.encode(p)) for p in prompts)
        texts = self._batched(
            prompts,
            lambda batch: decoding.complete(
                self._complete,
                params,
                self._vocab,
                batch,
                rng=jax.random.key(0),  # greedy: unused
                max_new_tokens=self.settings.completion_tokens,
                start_id=self._start[0],
                pad_multiple=width,
            ),
        )
        return humaneval.completion_samples(self._problems, zip(self._problems, texts, strict=True))

    def _infill_samples(self, params) -> list[humaneval.Sample]:
        pairs = [[t["prompt"], t["suffix"]] for t in self._tasks]
        encoded = [[self._vocab.encode(s) for s in pair] for pair in pairs]
        width = max(len(self._start) + len(decoding.infill_prompt(e, self._vocab)) for e in encoded)
        fills = self._batched(
            pairs,
            lambda batch: [
                middles[0]
                for middles in decoding.infill(
                    self._infill,
                    params,
                    self._vocab,
                    batch,
                    rng=jax.random.key(0),
                    max_new_tokens=self.settings.infill_tokens,
                    start_id=self._start[0],
                    pad_multiple=width,
                )
            ],
        )
        return humaneval.infill_samples(self._tasks, fills, self.settings.truncation)

    def _batched(self, items: Sequence, decode) -> list:
        """decode() over batches of one size, a multiple of the data-parallel size (the last
        padded by repeating its last item, whose outputs are dropped): one compiled shape."""
        rows = min(self.settings.batch_size, len(items))
        rows = -(-rows // self._parallel) * self._parallel
        out = []
        for start in range(0, len(items), rows):
            batch = list(items[start : start + rows])
            real = len(batch)
            out += decode(batch + batch[-1:] * (rows - real))[:real]
        return out


def _problem_number(task_id: str) -> int:
    return int(task_id.rsplit("/", 1)[1])


def _require_infill_tokens(vocabulary) -> None:
    try:
        vocabulary.mask_id(1), vocabulary.sep_id, vocabulary.eom_id  # noqa: B018
    except ValueError as error:
        raise ValueError(
            f"execution evaluation: the tokenizer has no infill tokens ({error}); "
            "set infill_tasks = 0 to score completions only"
        ) from None
