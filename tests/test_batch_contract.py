"""The batch contract is what the pipeline delivers; its abstract and synthetic batches agree."""

import numpy as np
import pytest
import tensorflow as tf

from codegen2_jax import batch_contract
from codegen2_jax.data import features


def _objective_dataset():
    examples = [([5, 6, 1], [1, 1, 1], [0, 0, 0]), ([7, 8, 9, 1], [0, 0, 1, 1], [1, 1, 0, 0])]
    return tf.data.Dataset.from_generator(
        lambda: (
            dict(zip(features.OBJECTIVE_FEATURES, example, strict=True)) for example in examples
        ),
        output_signature={
            name: tf.TensorSpec([None], tf.int32) for name in features.OBJECTIVE_FEATURES
        },
    )


@pytest.mark.parametrize("pack", [True, False])
def test_converter_output_has_the_contracts_names_and_dtypes(pack):
    converter = features.ObjectiveFeatureConverter(pack=pack)
    spec = converter(_objective_dataset(), features.task_feature_lengths(8)).element_spec
    expected = {
        name: dtype
        for name, dtype in batch_contract.FEATURE_DTYPES.items()
        if pack or name not in batch_contract.PACKING_FEATURES
    }
    assert {name: s.dtype.as_numpy_dtype for name, s in spec.items()} == expected


def test_abstract_batch_matches_a_packed_prefix_lm_synthetic_batch():
    synthetic = batch_contract.synthetic_batch(2, 16, 64, "prefix_lm")
    abstract = batch_contract.abstract_batch(2, 16)
    assert {k: (v.shape, v.dtype) for k, v in abstract.items()} == {
        k: (v.shape, v.dtype) for k, v in synthetic.items()
    }


@pytest.mark.parametrize("layout", batch_contract.LAYOUTS)
def test_synthetic_batches_hold_contract_features_only(layout):
    batch = batch_contract.synthetic_batch(2, 16, 64, layout)
    assert {k: v.dtype for k, v in batch.items()} == {
        k: batch_contract.FEATURE_DTYPES[k] for k in batch
    }


def test_packed_batches_have_the_objectives_structure():
    """Several documents per row; in prefix-LM rows each has an unscored prefix, flagged with
    the position after it (ObjectiveFeatureConverter's layout), and scored tokens after it."""
    batch = batch_contract.synthetic_batch(4, 256, 64, "prefix_lm")
    for row in range(4):
        segments = batch["decoder_segment_ids"][row]
        assert segments.max() >= 2 and (np.diff(segments) >= 0).all()
        for segment in np.unique(segments):
            at = segments == segment
            flags = batch["decoder_causal_attention"][row][at]
            weights = batch["decoder_loss_weights"][row][at]
            cut = int((weights == 0).sum())
            assert np.array_equal(batch["decoder_positions"][row][at], np.arange(at.sum()))
            assert cut >= 1 and np.array_equal(weights, [0] * cut + [1] * (at.sum() - cut))
            extra = min(cut + 1, at.sum())
            assert np.array_equal(flags, [1] * extra + [0] * (at.sum() - extra))
    assert "decoder_causal_attention" not in batch_contract.synthetic_batch(2, 64, 64, "packed")


def test_unknown_layout_is_refused():
    with pytest.raises(ValueError, match="layout"):
        batch_contract.synthetic_batch(2, 16, 64, "unpacked")
