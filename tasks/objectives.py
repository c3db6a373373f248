"""The objectives a task can end with, each reading its rates and span parameters from gin.

seqio calls these preprocessors when it builds a dataset, after gin has parsed the run's
config, so a binding such as ``tasks.span_params.max_spans = 8`` reaches every registered
task. Defaults are the library's, documented in codegen2_jax.data.preprocessors.

| objective | library preprocessor | gin parameters |
|---|---|---|
| causal | causal_lm | none |
| prefix_lm | prefix_lm | none |
| span_infill | span_corruption_infill | span_params |
| fim | fim | fim_params |
| codegen2_mix | codegen2_mixture | mixture_params, span_params |
"""

import gin

from codegen2_jax.data import preprocessors


@gin.configurable(module="tasks")
def span_params(
    *,
    min_mask_ratio: float = preprocessors.DEFAULT_MIN_MASK_RATIO,
    max_mask_ratio: float = preprocessors.DEFAULT_MAX_MASK_RATIO,
    span_lengths: str = preprocessors.DEFAULT_SPAN_LENGTHS,
    max_span_length: int = preprocessors.DEFAULT_MAX_SPAN_LENGTH,
    mean_span_length: float = preprocessors.DEFAULT_MEAN_SPAN_LENGTH,
    max_spans: int = preprocessors.DEFAULT_MAX_SPANS,
    loss_policy: str = preprocessors.LOSS_ALL,
) -> dict:
    """Span corruption parameters (span_infill and codegen2_mix); see span_corruption_infill."""
    return dict(
        min_mask_ratio=min_mask_ratio,
        max_mask_ratio=max_mask_ratio,
        span_lengths=span_lengths,
        max_span_length=max_span_length,
        mean_span_length=mean_span_length,
        max_spans=max_spans,
        loss_policy=loss_policy,
    )


@gin.configurable(module="tasks")
def fim_params(
    *,
    fim_rate: float = preprocessors.DEFAULT_FIM_RATE,
    loss_policy: str = preprocessors.LOSS_ALL,
) -> dict:
    """Fill-in-the-middle parameters: the share of FIM examples (the rest causal LM)."""
    return dict(fim_rate=fim_rate, loss_policy=loss_policy)


@gin.configurable(module="tasks")
def mixture_params(*, causal_rate: float = preprocessors.DEFAULT_CAUSAL_RATE) -> dict:
    """The CodeGen2 per-example mixture: probability of causal LM (default 0.5)."""
    return dict(causal_rate=causal_rate)


def causal(dataset, sequence_length, output_features):
    """Causal LM (``<|endoftext|>`` appended, every token scored)."""
    return preprocessors.causal_lm(dataset, sequence_length, output_features)


def prefix_lm(dataset, sequence_length, output_features):
    """Prefix-LM with a sampled split point."""
    return preprocessors.prefix_lm(dataset, sequence_length, output_features)


def span_infill(dataset, sequence_length, output_features):
    """Span corruption rendered as infill, parameters from span_params."""
    return preprocessors.span_corruption_infill(
        dataset, sequence_length, output_features, **span_params()
    )


def fim(dataset, sequence_length, output_features):
    """Fill-in-the-middle mixed with causal LM per example, parameters from fim_params."""
    return preprocessors.fim(dataset, sequence_length, output_features, **fim_params())


def codegen2_mix(dataset, sequence_length, output_features):
    """CodeGen2's causal / span-corruption mixture, from mixture_params and span_params."""
    return preprocessors.codegen2_mixture(
        dataset, sequence_length, output_features, **mixture_params(), **span_params()
    )


OBJECTIVES = {
    "causal": causal,
    "prefix_lm": prefix_lm,
    "span_infill": span_infill,
    "fim": fim,
    "codegen2_mix": codegen2_mix,
}
