"""The lessons' sampling metrics for one trained arm: held-out infill and HumanEval.

- Held-out single-line infill: short functions from the validation split of the embedded
  corpus (standard-library modules whose path hashes into validation, so no training file
  holds them); one body line is masked and the truncated fill must equal it (exact match,
  surrounding whitespace ignored).
- HumanEval-Infilling single-line, the official benchmark (infilling.load_tasks, an even
  spread of the 1033 tasks at smaller scales): exact match with the true middle, and pass rate
  with the truncated fill put in the program and run against the tests.
- HumanEval pass@k from completions, where a scale asks for samples.

Fills are truncated as EvalSettings.truncation says (infilling.TRUNCATIONS: to `<eom>`, the
paper's scoring, by default; or their first non-blank line).

Everything decodes with codegen2_jax.sampling.decoding from the job's newest checkpoint.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from collections.abc import Sequence

import jax

from codegen2_jax.evaluation import humaneval, infilling
from codegen2_jax.sampling import decoding, sample_cli

EVAL_FILE = "lessons_eval.json"  # in the job's MODEL_DIR; a rerun reuses it
BATCH = 64  # rows per decode call: bounds the KV cache of the larger scales
MIN_LINE_CHARS = 8  # masked lines shorter than this (`pass`, `return`) say too little


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How much to sample for one scale.

    Attributes:
      stdlib_infill: held-out standard-library functions to infill.
      humaneval_infill: HumanEval-Infilling single-line tasks (None: all 1033; 0: skip).
      humaneval_samples: completions per HumanEval problem (0: skip pass@k).
      temperature: sampling temperature of the completions (0: greedy); infill is greedy.
      infill_tokens: the longest middle.
      completion_tokens: the longest completion.
      max_function_lines: held-out functions longer than this are not used.
      truncation: how a fill becomes the middle (infilling.TRUNCATIONS).
    """

    stdlib_infill: int
    humaneval_infill: int | None
    humaneval_samples: int
    temperature: float = 0.0
    infill_tokens: int = 32
    completion_tokens: int = 256
    max_function_lines: int = 12
    truncation: str = infilling.EOM


def _masked_line(node: ast.AST) -> ast.stmt | None:
    """The middle single-line statement of a function body, after its docstring."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    candidates = [s for s in body if s.lineno == s.end_lineno]
    return candidates[len(candidates) // 2] if candidates else None


def function_problems(name: str, source: str, max_lines: int) -> list[dict]:
    """Single-line infill problems, one per short function of a module's source."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    lines = source.splitlines(keepends=True)
    problems = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        if not 3 <= node.end_lineno - node.lineno + 1 <= max_lines:
            continue
        target = _masked_line(node)
        if target is None or len(lines[target.lineno - 1].strip()) < MIN_LINE_CHARS:
            continue
        i, start = target.lineno - 1, node.lineno - 1
        problems.append(
            {
                "task_id": f"{name}:{target.lineno}",
                "prefix": "".join(lines[start:i]),
                "suffix": "".join(lines[i + 1 : node.end_lineno]),
                "line": lines[i],
            }
        )
    return problems


def heldout_problems(limit: int, max_lines: int) -> list[dict]:
    """The first `limit` problems from validation-split modules, in the corpus's hash order."""
    from codegen2_jax.data import corpus  # imports TensorFlow

    percent = corpus.CodegenStdlib.BUILDER_CONFIGS[0].validation_percent
    problems: list[dict] = []
    for rel, path in corpus.stdlib_files():
        if len(problems) >= limit:
            break
        if corpus.split_of(rel, percent) == "validation":
            source = path.read_text(encoding="utf-8", errors="replace")
            problems += function_problems(rel, source, max_lines)
    return problems[:limit]


def exact_match(fill: str, middle: str, truncation: str) -> bool:
    """Whether a truncated fill is the true middle, surrounding whitespace ignored."""
    return infilling.truncate(fill, truncation).strip() == middle.strip()


class ArmSampler:
    """Greedy infill and sampled completions from one checkpoint, batched.

    Args:
      model_dir: the job's MODEL_DIR (its checkpoints/ is read, read-only).
      settings: token limits and temperature.
      seed: seeds sampling.
    """

    def __init__(self, model_dir: str, settings: EvalSettings, seed: int):
        model = sample_cli.load_checkpoint(os.path.join(model_dir, "checkpoints"))
        self.params, self.start_id = model.params, model.start_id
        self.vocab = model.vocabulary
        self.settings = settings
        self.rng = jax.random.key(seed)
        self._infill = decoding.make_generate(
            model.config,
            max_new_tokens=settings.infill_tokens,
            prefix_prompt=model.prefix_prompt,
        )
        self._complete = decoding.make_generate(
            model.config,
            max_new_tokens=settings.completion_tokens,
            temperature=settings.temperature,
            prefix_prompt=model.prefix_prompt,
        )
        self._calls = 0

    def _key(self) -> jax.Array:
        self._calls += 1
        return jax.random.fold_in(self.rng, self._calls)

    def infill(self, pairs: Sequence[tuple[str, str]]) -> list[str]:
        """The middle for each (prefix, suffix)."""
        fills = []
        for start in range(0, len(pairs), BATCH):
            problems = [list(pair) for pair in pairs[start : start + BATCH]]
            out = decoding.infill(
                self._infill,
                self.params,
                self.vocab,
                problems,
                rng=self._key(),
                max_new_tokens=self.settings.infill_tokens,
                start_id=self.start_id,
            )
            fills += [middles[0] for middles in out]
        return fills

    def generate(self, prompts: list[str], n: int) -> list[list[str]]:
        """n completions per prompt (humaneval.Generate)."""
        flat = [prompt for prompt in prompts for _ in range(n)]
        texts = []
        for start in range(0, len(flat), BATCH):
            texts += decoding.complete(
                self._complete,
                self.params,
                self.vocab,
                flat[start : start + BATCH],
                rng=self._key(),
                max_new_tokens=self.settings.completion_tokens,
                start_id=self.start_id,
            )
        return [texts[i * n : (i + 1) * n] for i in range(len(prompts))]


def stdlib_infill(sampler: ArmSampler, problems: Sequence[dict]) -> dict[str, float]:
    """Exact match on held-out standard-library functions."""
    fills = sampler.infill([(p["prefix"], p["suffix"]) for p in problems])
    truncation = sampler.settings.truncation
    hits = [exact_match(f, p["line"], truncation) for f, p in zip(fills, problems, strict=True)]
    return {"stdlib_infill_em": sum(hits) / len(hits)}


def humaneval_infill(sampler: ArmSampler, limit: int | None) -> dict[str, float]:
    """Exact match and test pass rate on HumanEval-Infilling single-line."""
    tasks = humaneval.spread(infilling.load_tasks("single-line"), limit)
    fills = sampler.infill([(t["prompt"], t["suffix"]) for t in tasks])
    truncation = sampler.settings.truncation
    report = humaneval.score_infilling("single-line", tasks, fills, truncation=truncation)
    hits = [
        exact_match(f, t["canonical_solution"], truncation)
        for f, t in zip(fills, tasks, strict=True)
    ]
    return {
        "humaneval_infill_em": sum(hits) / len(hits),
        "humaneval_infill_pass": report.pass_at_k["pass@1"],
    }


def humaneval_pass(sampler: ArmSampler, samples: int) -> dict[str, float]:
    """HumanEval pass@k for every k in humaneval.KS up to the samples drawn."""
    (report,) = humaneval.evaluate(sampler.generate, n=samples)
    return {f"humaneval_{k}": v for k, v in report.pass_at_k.items()}


def evaluate_job(model_dir: str, settings: EvalSettings, seed: int) -> dict[str, float]:
    """The sampling metrics of one job, computed once and kept in MODEL_DIR/EVAL_FILE."""
    path = os.path.join(model_dir, EVAL_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    sampler = ArmSampler(model_dir, settings, seed)
    results: dict[str, float] = {}
    if settings.stdlib_infill:
        problems = heldout_problems(settings.stdlib_infill, settings.max_function_lines)
        results |= stdlib_infill(sampler, problems)
    if settings.humaneval_infill != 0:
        results |= humaneval_infill(sampler, settings.humaneval_infill)
    if settings.humaneval_samples:
        results |= humaneval_pass(sampler, settings.humaneval_samples)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    return results
