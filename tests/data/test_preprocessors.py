"""Objective preprocessors: literal outputs per objective and properties over many seeds."""

import functools

import numpy as np
import pytest
import seqio
import tensorflow as tf
from seqio import test_utils

from codegen2_jax.data import preprocessors
from codegen2_jax.data.spans import max_document_length
from tests.data import fake_vocab
from tests.data.fake_vocab import EOM, EOS, SEP, mask

OUTPUT_FEATURES = fake_vocab.output_features()
DOCS = [list(range(10, 22)), list(range(30, 37)), [40]]
MASKS = {mask(n) for n in range(1, fake_vocab.NUM_MASKS + 1)}
SMALL_SPANS = dict(
    min_mask_ratio=0.2,
    max_mask_ratio=0.4,
    span_lengths="composition",
    mean_span_length=2.0,
    max_spans=4,
)


def _dataset(docs):
    return tf.data.Dataset.from_tensor_slices(
        {"targets": tf.ragged.constant(docs, dtype=tf.int32)}
    ).map(lambda ex: {"targets": tf.ensure_shape(ex["targets"], [None])})


def _run(preprocessor, docs, length, seed=0):
    with seqio.utils.map_seed_manager(seed):
        return preprocessor(_dataset(docs), {"targets": length}, OUTPUT_FEATURES)


def _example(targets, loss_weights=None, prefix_mask=None):
    return {
        "targets": targets,
        "loss_weights": [1] * len(targets) if loss_weights is None else loss_weights,
        "prefix_mask": prefix_mask or [0] * len(targets),
    }


def test_chunk_documents_splits_without_loss():
    docs = [list(range(10, 20)), [], [20, 21, 22, 23]]
    chunked = preprocessors.chunk_documents(_dataset(docs), max_tokens=4)
    test_utils.assert_dataset(
        chunked,
        [
            {"targets": [10, 11, 12, 13], "last_piece": False},
            {"targets": [14, 15, 16, 17], "last_piece": False},
            {"targets": [18, 19], "last_piece": True},
            {"targets": [20, 21, 22, 23], "last_piece": True},
        ],
    )


def test_causal_lm():
    test_utils.assert_dataset(
        _run(preprocessors.causal_lm, [[10, 11, 12], list(range(20, 30))], length=8),
        [
            _example([10, 11, 12, EOS]),
            # A document cut in two: only its last piece ends the text.
            _example([20, 21, 22, 23, 24, 25, 26]),
            _example([27, 28, 29, EOS]),
        ],
    )


@pytest.mark.parametrize(
    "objective",
    [
        preprocessors.causal_lm,
        preprocessors.prefix_lm,
        functools.partial(preprocessors.codegen2_mixture, causal_rate=1.0),
    ],
    ids=["causal_lm", "prefix_lm", "codegen2_mixture"],
)
def test_a_long_document_ends_with_eos_only_in_its_last_piece(objective):
    docs = [list(range(10, 160)), list(range(200, 264)), [300]]  # 150, 64 and 1 tokens
    examples = [
        ex["targets"].tolist() for ex in _run(objective, docs, length=64).as_numpy_iterator()
    ]
    assert len(examples) > len(docs)  # the long documents were cut
    last_tokens = {doc[-1] for doc in docs}
    for targets in examples:
        assert targets.count(EOS) == (targets[-1] == EOS)
        assert (targets[-1] == EOS) == bool(last_tokens & set(targets))
    tokens = [t for targets in examples for t in targets if t != EOS]
    assert tokens == sum(docs, [])  # nothing dropped or repeated


def test_prefix_lm():
    test_utils.assert_dataset(
        _run(preprocessors.prefix_lm, DOCS, length=16, seed=3),
        [
            _example(DOCS[0] + [EOS], [0, 0] + [1] * 11, [1, 1] + [0] * 11),
            _example(DOCS[1] + [EOS], [0, 0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0]),
            # A one-token document is all prefix; only <|endoftext|> is scored.
            _example([40, EOS], [0, 1], [1, 0]),
        ],
    )


def test_span_corruption_infill():
    m1, m2 = mask(1), mask(2)
    test_utils.assert_dataset(
        _run(
            functools.partial(preprocessors.span_corruption_infill, **SMALL_SPANS),
            DOCS,
            length=24,
            seed=1,
        ),
        [
            _example(
                [10, 11, 12, m1, 15, 16, m2, 18, 19, 20, 21, EOS, SEP]
                + [m1, 13, 14, EOM, m2, 17, EOM]
            ),
            _example([m1, 32, 33, 34, 35, 36, EOS, SEP, m1, 30, 31, EOM]),
            _example([m1, EOS, SEP, m1, 40, EOM]),
        ],
    )


def test_span_corruption_infill_only_loss():
    def run(loss_policy):
        preprocessor = functools.partial(
            preprocessors.span_corruption_infill, loss_policy=loss_policy, **SMALL_SPANS
        )
        return list(_run(preprocessor, DOCS, length=24, seed=1).as_numpy_iterator())

    # The same tokens as with loss on all; only the tokens after <sep> are scored.
    for every, infill_only in zip(run("all"), run("infill_only"), strict=True):
        np.testing.assert_array_equal(every["targets"], infill_only["targets"])
        after_sep = np.arange(len(every["targets"])) > list(every["targets"]).index(SEP)
        np.testing.assert_array_equal(infill_only["loss_weights"], after_sep.astype(int))


def test_fim():
    m1 = mask(1)
    test_utils.assert_dataset(
        _run(preprocessors.fim, DOCS, length=24, seed=2),
        [
            # The middle lies between two cut points; about half the examples are causal.
            _example([10, 11, 12, m1, 19, 20, 21, EOS, SEP, m1, *range(13, 19), EOM]),
            _example(DOCS[1] + [EOS]),
            _example([m1, EOS, SEP, m1, 40, EOM]),  # prefix and suffix may both be empty
        ],
    )


def test_codegen2_mixture():
    m1, m2 = mask(1), mask(2)
    test_utils.assert_dataset(
        _run(
            functools.partial(preprocessors.codegen2_mixture, **SMALL_SPANS),
            DOCS + [list(range(50, 58))],
            length=24,
            seed=5,
        ),
        [
            _example(
                [10, 11, m1, 15, 16, m2, 18, 19, 20, 21, EOS, SEP]
                + [m1, 12, 13, 14, EOM, m2, 17, EOM]
            ),
            _example(DOCS[1] + [EOS]),
            _example([40, EOS]),
            _example(list(range(50, 58)) + [EOS]),
        ],
    )


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="loss_policy"):
        _run(functools.partial(preprocessors.span_corruption_infill, loss_policy="some"), DOCS, 24)
    with pytest.raises(ValueError, match="mask ratio"):
        _run(functools.partial(preprocessors.span_corruption_infill, max_mask_ratio=1.5), DOCS, 24)
    with pytest.raises(ValueError, match="fim_rate must be a probability"):
        _run(functools.partial(preprocessors.fim, fim_rate=1.5), DOCS, 24)
    with pytest.raises(ValueError, match="causal_rate must be a probability"):
        _run(functools.partial(preprocessors.codegen2_mixture, causal_rate=-0.1), DOCS, 24)
    with pytest.raises(ValueError, match="sequence_length"):
        preprocessors.causal_lm(_dataset(DOCS), None, OUTPUT_FEATURES)
    with pytest.raises(ValueError, match="span_lengths must be one of"):
        _run(functools.partial(preprocessors.codegen2_mixture, span_lengths="poisson"), DOCS, 24)
    with pytest.raises(ValueError, match="max_span_length must be at least 1"):
        _run(functools.partial(preprocessors.span_corruption_infill, max_span_length=0), DOCS, 24)


def _reassemble(targets):
    """The document an infill example encodes, and its spans in order."""
    targets = list(targets)
    separator = targets.index(EOS)
    assert targets[separator + 1] == SEP
    body, infill = targets[:separator], targets[separator + 2 :]
    found, i = [], 0
    while i < len(infill):
        end = infill.index(EOM, i)
        found.append((infill[i], infill[i + 1 : end]))
        i = end + 1
    sentinels = [token for token in body if token in MASKS]
    # Masks are numbered from 1 in order, once each in the body and in the infill part.
    assert sentinels == [mask(n) for n in range(1, len(found) + 1)]
    assert [sentinel for sentinel, _ in found] == sentinels
    filled = dict(found)
    document = []
    for token in body:
        document.extend(filled[token] if token in MASKS else [token])
    return document, [tokens for _, tokens in found], body


def _random_docs(count, seed, longest):
    rng = np.random.default_rng(seed)
    return [rng.integers(10, 90, size=rng.integers(0, longest)).tolist() for _ in range(count)]


@pytest.mark.parametrize("law", ["composition", "uniform"])
@pytest.mark.parametrize("length,max_spans", [(24, 4), (64, 10)])
def test_infill_properties_over_many_seeds(length, max_spans, law):
    params = dict(min_mask_ratio=0.1, max_mask_ratio=0.6)
    docs = _random_docs(150, seed=length, longest=3 * length)
    preprocessor = functools.partial(
        preprocessors.span_corruption_infill,
        max_spans=max_spans,
        span_lengths=law,
        mean_span_length=3.0,
        max_span_length=5,
        **params,
    )
    examples = list(_run(preprocessor, docs, length, seed=11).as_numpy_iterator())
    rebuilt = []
    for example in examples:
        targets = example["targets"].tolist()
        assert len(targets) <= length
        document, spans, body = _reassemble(targets)
        rebuilt.append(document)
        n = len(document)
        masked = sum(len(span) for span in spans)
        # Spans are non-empty, separated by kept tokens (else they would be one span).
        assert all(spans) and 1 <= len(spans) <= max_spans
        assert not any(a in MASKS and b in MASKS for a, b in zip(body, body[1:], strict=False))
        # The masked fraction lies in the drawn range, up to rounding and the 1-token floor;
        # uniform spans stop short of it by less than one span, or at the span cap.
        if n >= 2:
            assert masked <= params["max_mask_ratio"] * n + 0.5
            if law == "composition":
                assert params["min_mask_ratio"] * n - 0.5 <= masked
            else:
                assert all(len(span) <= 5 for span in spans)
        assert (example["loss_weights"] == 1).all() and (example["prefix_mask"] == 0).all()
    # Every example is one piece of one document; in order, the pieces are the corpus.
    worst_case_mean = 3.0 if law == "composition" else 1.0  # uniform: up to max_spans spans
    piece = max_document_length(
        length, max_mask_ratio=0.6, mean_span_length=worst_case_mean, max_spans=max_spans
    )
    assert rebuilt == [doc[i : i + piece] for doc in docs for i in range(0, len(doc), piece)]


def test_fim_has_one_span_and_reassembles():
    docs = _random_docs(100, seed=1, longest=40)
    preprocessor = functools.partial(preprocessors.fim, fim_rate=1.0)
    examples = _run(preprocessor, docs, 32, seed=4).as_numpy_iterator()
    rebuilt = []
    for example in examples:
        document, spans, _ = _reassemble(example["targets"].tolist())
        assert len(spans) == 1
        rebuilt.append(document)
    assert sum(rebuilt, []) == sum(docs, [])


def test_fim_mixes_per_example_and_cuts_at_two_uniform_points():
    n, count = 12, 3000
    docs = [list(range(10, 10 + n))] * count
    examples = list(_run(preprocessors.fim, docs, 32, seed=7).as_numpy_iterator())
    infill = [ex["targets"].tolist() for ex in examples if SEP in ex["targets"]]
    assert abs(len(infill) / count - 0.5) < 0.04  # fim_rate 0.5; binomial sd 0.009
    middles = np.array([len(_reassemble(t)[1][0]) for t in infill])
    # Two distinct cut points among n + 1 boundaries: P(middle = m) = 2 (n + 1 - m) / (n (n + 1)).
    law = np.array([2 * (n + 1 - m) / (n * (n + 1)) for m in range(1, n + 1)])
    histogram = np.bincount(middles, minlength=n + 1)[1:] / len(middles)
    assert 0.5 * np.abs(histogram - law).sum() < 0.05


def test_prefix_split_inside_document():
    docs = _random_docs(100, seed=2, longest=30)
    for example in _run(preprocessors.prefix_lm, docs, 32, seed=5).as_numpy_iterator():
        prefix = int(example["prefix_mask"].sum())
        n = len(example["targets"]) - 1
        assert 1 <= prefix <= max(n - 1, 1)
        np.testing.assert_array_equal(example["prefix_mask"][:prefix], 1)
        np.testing.assert_array_equal(example["loss_weights"], 1 - example["prefix_mask"])


@pytest.mark.parametrize("causal_rate", [0.0, 0.3, 1.0])
def test_mixture_rate(causal_rate):
    docs = _random_docs(400, seed=3, longest=12)
    preprocessor = functools.partial(preprocessors.codegen2_mixture, causal_rate=causal_rate)
    examples = list(_run(preprocessor, docs, 64, seed=6).as_numpy_iterator())
    causal = np.mean([SEP not in ex["targets"] for ex in examples])
    # Binomial standard deviation is at most 0.025 for 400 examples.
    assert abs(causal - causal_rate) < 0.08


def test_deterministic_given_seed():
    docs = _random_docs(30, seed=4, longest=40)

    def targets(seed):
        ds = _run(preprocessors.codegen2_mixture, docs, 48, seed=seed)
        return [ex["targets"].tolist() for ex in ds.as_numpy_iterator()]

    assert targets(1) == targets(1)
    assert targets(1) != targets(2)
