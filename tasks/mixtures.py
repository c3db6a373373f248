"""The mixtures: CodeGen2's programming-language mixture and the natural + programming mix.

Rates are gin-configurable and read when seqio samples (callable rates), so a run's gin
config sets them after registration:

- ``stdlib_v1_codegen2_mix``: the programming-language CodeGen2 mixture on the embedded
  corpus (Python only, so one task).
- ``stdlib_v1_nl_pl_mix``: natural and programming language 1:1 (the paper's Lesson 4),
  ``tasks.nl_pl_rates``.
- ``the_stack_v1_codegen2_mix``: The Stack's languages at ``tasks.the_stack_rates``.
- ``pile_the_stack_v1_nl_pl_mix``: The Pile and The Stack at ``tasks.nl_pl_rates``, The
  Stack's share split by ``tasks.the_stack_rates``.

All use the codegen2_mix objective, whose rate and span parameters are in tasks.objectives.
"""

import gin
import seqio

from tasks.corpora import THE_STACK_LANGUAGES
from tasks.registry import task_name

OBJECTIVE = "codegen2_mix"


@gin.configurable(module="tasks")
def nl_pl_rates(*, natural: float = 1.0, programming: float = 1.0) -> dict[str, float]:
    """Natural vs programming language sampling rates (default 1:1, CodeGen2's Lesson 4)."""
    return {"natural": natural, "programming": programming}


@gin.configurable(module="tasks")
def the_stack_rates(rates: dict[str, float] | None = None) -> dict[str, float]:
    """Per-language rates for The Stack; languages not bound keep rate 1.0.

    Bind e.g. ``tasks.the_stack_rates.rates = {"python": 4.0, "sql": 0.5}``; rates
    proportional to each language's bytes reproduce natural frequencies.
    """
    unknown = set(rates or {}) - set(THE_STACK_LANGUAGES)
    if unknown:
        raise ValueError(f"Unknown The Stack languages {sorted(unknown)}")
    return {language: 1.0 for language in THE_STACK_LANGUAGES} | dict(rates or {})


def _stack_share(language: str, scale: str | None = None):
    def rate(task) -> float:
        del task
        rates = the_stack_rates()
        share = rates[language] / sum(rates.values())
        return share * nl_pl_rates()[scale] if scale else rates[language]

    return rate


def _nl_pl_rate(kind: str):
    return lambda task: nl_pl_rates()[kind]


def _stack_task(language: str) -> str:
    return task_name(f"the_stack_{language}", "v1", OBJECTIVE)


seqio.MixtureRegistry.add(
    "stdlib_v1_codegen2_mix", [(task_name("stdlib_py", "v1", OBJECTIVE), 1.0)]
)
seqio.MixtureRegistry.add(
    "stdlib_v1_nl_pl_mix",
    [
        (task_name("stdlib_nl", "v1", OBJECTIVE), _nl_pl_rate("natural")),
        (task_name("stdlib_py", "v1", OBJECTIVE), _nl_pl_rate("programming")),
    ],
)
seqio.MixtureRegistry.add(
    "the_stack_v1_codegen2_mix",
    [(_stack_task(language), _stack_share(language)) for language in THE_STACK_LANGUAGES],
)
seqio.MixtureRegistry.add(
    "pile_the_stack_v1_nl_pl_mix",
    [(task_name("pile", "v1", OBJECTIVE), _nl_pl_rate("natural"))]
    + [(_stack_task(lang), _stack_share(lang, "programming")) for lang in THE_STACK_LANGUAGES],
)
