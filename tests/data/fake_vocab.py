"""A small stand-in for CodeVocabulary that keeps literal expected outputs readable."""

import seqio

from codegen2_jax.data import features

SIZE = 100
PAD, EOS, SEP, EOM = 0, 1, 2, 3
NUM_MASKS = 10


class FakeCodeVocabulary(seqio.PassThroughVocabulary):
    """Ids pass through; specials: pad 0, eos 1, sep 2, eom 3, <mask_n> = 100 - n (90..99)."""

    def __init__(self):
        super().__init__(size=SIZE, eos_id=EOS)

    pad_id = PAD
    decoder_start_id = PAD
    sep_id = SEP
    eom_id = EOM
    num_masks = NUM_MASKS

    def mask_id(self, n: int) -> int:
        if not 1 <= n <= NUM_MASKS:
            raise ValueError(f"no <mask_{n}>")
        return SIZE - n


def mask(n: int) -> int:
    """The id of <mask_n>."""
    return SIZE - n


def output_features():
    """Objective output features over the fake vocabulary."""
    return features.output_features(FakeCodeVocabulary())
