"""The per-example objective features and their conversion to the decoder batch contract.

Every objective preprocessor (preprocessors.py) emits the same three int32 features per
example, so examples of all objectives mix in one packed stream:

| feature | meaning |
|---|---|
| targets | the token sequence, `<|endoftext|>` and any infill part included |
| loss_weights | 1 where the token is scored, else 0 |
| prefix_mask | 1 on the tokens of a bidirectional prefix (prefix-LM), else 0 |

ObjectiveFeatureConverter packs them with seqio's own packing (trim_and_pack_dataset via
the converter's `pack` flag) and emits exactly seqio's decoder features, with the semantics
of DecoderFeatureConverter (causal) and PrefixLMFeatureConverter (prefix-LM).
"""

from collections.abc import Mapping

import seqio
import tensorflow as tf

from codegen2_jax import batch_contract

TARGETS = "targets"
LOSS_WEIGHTS = "loss_weights"
PREFIX_MASK = "prefix_mask"
OBJECTIVE_FEATURES = (TARGETS, LOSS_WEIGHTS, PREFIX_MASK)


def output_features(vocabulary: seqio.Vocabulary) -> dict[str, seqio.Feature]:
    """The output_features of a task whose last preprocessor is an objective.

    The objectives append `<|endoftext|>` themselves, so no feature adds an EOS. The two
    per-token features are declared too because a seqio Mixture keeps only declared features.

    Args:
      vocabulary: the token vocabulary (CodeVocabulary in this project).
    """
    flag_vocabulary = seqio.PassThroughVocabulary(size=2)
    return {
        TARGETS: seqio.Feature(vocabulary, add_eos=False, dtype=tf.int32),
        LOSS_WEIGHTS: seqio.Feature(flag_vocabulary, add_eos=False, dtype=tf.int32),
        PREFIX_MASK: seqio.Feature(flag_vocabulary, add_eos=False, dtype=tf.int32),
    }


def task_feature_lengths(length: int) -> dict[str, int]:
    """The task feature lengths ObjectiveFeatureConverter takes, all equal to `length`."""
    return dict.fromkeys(OBJECTIVE_FEATURES, length)


class ObjectiveFeatureConverter(seqio.FeatureConverter):
    """Converts objective examples into the decoder features, packed or padded.

    Model features (batch_contract's names and dtypes, [length]): decoder_target_tokens,
    decoder_input_tokens (the targets shifted right within each packed segment, bos_id
    first), decoder_loss_weights, decoder_causal_attention and, when packing,
    decoder_segment_ids and decoder_positions.

    decoder_causal_attention follows PrefixLMFeatureConverter: it covers the prefix plus
    one position to the right, where the last prefix token is read and the first scored
    token predicted. An example without a prefix (causal LM, infill) gets zeros there, which
    is where PrefixLMFeatureConverter would put a lone 1 on the first position for empty
    "inputs"; both give the same attention mask, since every token attends to itself.
    """

    TASK_FEATURES = {
        name: seqio.FeatureConverter.FeatureSpec(dtype=tf.int32) for name in OBJECTIVE_FEATURES
    }
    MODEL_FEATURES = {
        name: seqio.FeatureConverter.FeatureSpec(dtype=tf.as_dtype(dtype))
        for name, dtype in batch_contract.FEATURE_DTYPES.items()
        if name not in batch_contract.PACKING_FEATURES
    }
    PACKING_FEATURE_DTYPES = {
        name: tf.as_dtype(batch_contract.FEATURE_DTYPES[name])
        for name in batch_contract.PACKING_FEATURES
    }

    def _convert_features(
        self, ds: tf.data.Dataset, task_feature_lengths: Mapping[str, int]
    ) -> tf.data.Dataset:
        # seqio's packing measures an example by its non-zero entries, so the 0/1 flags
        # travel as 1/2 and padding (0) decodes back to 0.
        ds = ds.map(_shift_flags(+1), num_parallel_calls=tf.data.AUTOTUNE)
        ds = self._pack_or_pad(ds, task_feature_lengths)
        ds = ds.map(_shift_flags(-1), num_parallel_calls=tf.data.AUTOTUNE)
        return ds.map(self._convert_example, num_parallel_calls=tf.data.AUTOTUNE)

    def _convert_example(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        segment_ids = features.get(f"{TARGETS}_segment_ids")
        prefix = features[PREFIX_MASK]
        # Shifting the prefix flags right within each segment marks the extra position.
        shifted_prefix = seqio.utils.make_autoregressive_inputs(prefix, sequence_id=segment_ids)
        converted = {
            "decoder_target_tokens": features[TARGETS],
            "decoder_input_tokens": seqio.utils.make_autoregressive_inputs(
                features[TARGETS], sequence_id=segment_ids, bos_id=self.bos_id
            ),
            "decoder_loss_weights": features[LOSS_WEIGHTS],
            "decoder_causal_attention": tf.maximum(prefix, shifted_prefix),
        }
        if self.pack:
            converted["decoder_segment_ids"] = segment_ids
            converted["decoder_positions"] = features[f"{TARGETS}_positions"]
        return converted

    def get_model_feature_lengths(self, task_feature_lengths: Mapping[str, int]) -> dict[str, int]:
        length = task_feature_lengths[TARGETS]
        names = list(self.MODEL_FEATURES) + (list(self.PACKING_FEATURE_DTYPES) if self.pack else [])
        return dict.fromkeys(names, length)


def _shift_flags(offset: int):
    """Adds `offset` to the flag features, keeping them >= 0."""

    def shift(example):
        example = dict(example)
        for name in (LOSS_WEIGHTS, PREFIX_MASK):
            example[name] = tf.maximum(example[name] + offset, 0)
        return example

    return shift
