"""Model bundles: the contract between training and serving, and what reads and writes it.

A bundle is the directory a trained model is served from (``bundle``: format, typed manifest,
file digests); ``export`` writes one from a trained model (``onnx_export``: the graphs; ``ann_index``
and ``candidate_index``: how its items are searched); ``runtime`` opens one for scoring (ONNX
Runtime sessions, ``id_lookup``); ``registry`` logs, registers and downloads them through MLflow,
whose pyfunc flavour is ``pyfunc_model``. Training, offline evaluation and serving all sit above
this package; nothing here imports them.
"""
