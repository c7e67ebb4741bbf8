"""Retrieval quality on Gowalla (the LightGCN split) against the published numbers.

    .venv/bin/python benchmarks/quality_gowalla.py [--models mf_ccl simplex_ccl] [--budget 30]
    rankforge benchmark-quality ...            (the same)

Trains MF-BPR, MF with sampled softmax, MF-CCL, SimpleX-CCL and PSL (tanh, atan, relu) from
``configs/gowalla/``, one after another, each within the wall-clock budget, every run tracked in
MLflow; prints one table (model, objective, Recall@20, NDCG@20, best epoch, wall minutes, paper).
Run it alone on the machine: two jobs on two cores slow each other down several-fold.
"""

from __future__ import annotations

import sys

from rankforge.pipelines.quality_cli import main

if __name__ == "__main__":
    sys.exit(main())
