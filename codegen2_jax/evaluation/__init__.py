"""Evaluation: held-out loss and perplexity per task."""
