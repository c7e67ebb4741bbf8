"""Research benchmarks: each module is a script (``python benchmarks/NAME.py``) that prints the
table recorded in ``benchmarks/README.md``, with its logic beside its entry point. They sit above
every other package and are never imported by them (``rankforge benchmark-quality`` is the
command form of ``quality``)."""
