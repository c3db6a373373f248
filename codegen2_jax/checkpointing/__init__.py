"""Checkpoints: orbax steps with fingerprints and data positions, and the
Hugging Face format.
"""
