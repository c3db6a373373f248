"""Evaluation: held-out loss and perplexity per task; HumanEval pass@k and single-line infill.

perplexity.py (loss per task), humaneval.py (programs, pass@k, infill, reports, CLI),
sandbox.py with sandbox_init.py and processes.py (the execution sandbox for untrusted code).
"""
