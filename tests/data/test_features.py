"""ObjectiveFeatureConverter against seqio's own decoder feature converters."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from codegen2_jax.data import features

EOS = 1
DOCS = [[7, 8, 5, 3, 9], [8, 4, 9, 3, 6, 2, 4], [4], [5, 6, 7, 8, 9, 4, 3]]
PREFIX_LENGTHS = [3, 5, 1, 2]


def _dataset(examples):
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.ragged.constant([ex[k] for ex in examples]) for k in examples[0]}
    ).map(lambda ex: {k: v for k, v in ex.items()})


def _objective_examples(prefix_lengths):
    examples = []
    for doc, prefix in zip(DOCS, prefix_lengths, strict=True):
        targets = doc + [EOS]
        mask = [int(i < prefix) for i in range(len(targets))]
        examples.append(
            {"targets": targets, "loss_weights": [1 - m for m in mask], "prefix_mask": mask}
        )
    return examples


def _convert(converter, examples, lengths):
    ds = converter(_dataset(examples), lengths)
    return list(ds.as_numpy_iterator())


def _assert_equal(ours, theirs, keys):
    assert len(ours) == len(theirs)
    for a, b in zip(ours, theirs, strict=True):
        for key in keys:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize("pack", [True, False])
def test_causal_matches_decoder_feature_converter(pack):
    ours = _convert(
        features.ObjectiveFeatureConverter(pack=pack),
        _objective_examples([0] * len(DOCS)),
        features.task_feature_lengths(12),
    )
    theirs = _convert(
        seqio.DecoderFeatureConverter(pack=pack),
        [{"targets": doc + [EOS]} for doc in DOCS],
        {"targets": 12},
    )
    _assert_equal(ours, theirs, theirs[0].keys())
    for batch in ours:
        assert not batch["decoder_causal_attention"].any()


@pytest.mark.parametrize("pack", [True, False])
def test_prefix_matches_prefix_lm_feature_converter(pack):
    ours = _convert(
        features.ObjectiveFeatureConverter(pack=pack),
        _objective_examples(PREFIX_LENGTHS),
        features.task_feature_lengths(12),
    )
    theirs = _convert(
        seqio.DecoderFeatureConverter(pack=pack),
        [
            {"inputs": doc[:p], "targets": doc[p:] + [EOS]}
            for doc, p in zip(DOCS, PREFIX_LENGTHS, strict=True)
        ],
        {"inputs": 6, "targets": 6},
    )
    assert "decoder_causal_attention" in theirs[0]
    _assert_equal(ours, theirs, theirs[0].keys())


def test_packed_literal_mixed_objectives():
    causal = {"targets": [5, 6, EOS], "loss_weights": [1, 1, 1], "prefix_mask": [0, 0, 0]}
    prefix = {"targets": [7, 8, 9, EOS], "loss_weights": [0, 0, 1, 1], "prefix_mask": [1, 1, 0, 0]}
    infill = {
        "targets": [99, EOS, 2, 99, 4, 3],
        "loss_weights": [0, 0, 0, 1, 1, 1],
        "prefix_mask": [0] * 6,
    }
    ds = features.ObjectiveFeatureConverter(pack=True)(
        _dataset([causal, prefix, infill]), features.task_feature_lengths(8)
    )
    seqio.test_utils.assert_dataset(
        ds,
        [
            {
                "decoder_target_tokens": [5, 6, 1, 7, 8, 9, 1, 0],
                "decoder_input_tokens": [0, 5, 6, 0, 7, 8, 9, 0],
                "decoder_loss_weights": [1, 1, 1, 0, 0, 1, 1, 0],
                "decoder_causal_attention": [0, 0, 0, 1, 1, 1, 0, 0],
                "decoder_segment_ids": [1, 1, 1, 2, 2, 2, 2, 0],
                "decoder_positions": [0, 1, 2, 0, 1, 2, 3, 0],
            },
            {
                "decoder_target_tokens": [99, 1, 2, 99, 4, 3, 0, 0],
                "decoder_input_tokens": [0, 99, 1, 2, 99, 4, 0, 0],
                "decoder_loss_weights": [0, 0, 0, 1, 1, 1, 0, 0],
                "decoder_causal_attention": [0, 0, 0, 0, 0, 0, 0, 0],
                "decoder_segment_ids": [1, 1, 1, 1, 1, 1, 0, 0],
                "decoder_positions": [0, 1, 2, 3, 4, 5, 0, 0],
            },
        ],
    )


def test_output_features_keep_objective_features():
    vocabulary = seqio.PassThroughVocabulary(size=100, eos_id=EOS)
    declared = features.output_features(vocabulary)
    assert set(declared) == set(features.OBJECTIVE_FEATURES)
    assert not any(feature.add_eos for feature in declared.values())
