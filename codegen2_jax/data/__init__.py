"""Data: the code vocabulary, corpora and sources, the CodeGen2 objectives, the input pipeline."""
