"""Speed figures: the train step, decoding, a simulated-mesh scale check, and
the report beside the references.
"""
