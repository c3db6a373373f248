"""All seqio registrations of the project: ``import tasks`` registers every task and mixture.

Modules: objectives (the gin-configurable objective preprocessors), registry
(register_corpus), corpora (one declaration per corpus), mixtures.
"""

from tasks import corpora, mixtures

__all__ = ["corpora", "mixtures"]
