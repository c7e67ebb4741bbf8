"""rankforge: interaction logs to a live retrieval-then-rank service."""

__version__ = "0.1.0"
