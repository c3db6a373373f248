"""The research harness on top of training: sweeps, the paper's lessons, their
tables and plots. Nothing in the library imports it.
"""
