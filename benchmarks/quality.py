"""Retrieval quality on the papers' own benchmarks against the published numbers.

    .venv/bin/python benchmarks/quality.py --dataset gowalla [--models mf_ccl simplex_ccl]
    .venv/bin/python benchmarks/quality.py --dataset psl-electronic --search-epochs 30 --seeds 3
    rankforge benchmark-quality ...            (the same)

Data sets: gowalla (LightGCN split: MF-BPR, MF-CCL, SimpleX), amazon-cds (BARS AmazonCDs_m1:
SimpleX), psl-gowalla and psl-electronic (the PSL paper's splits: MF with BPR, SL and PSL-tanh,
-atan, -relu, temperatures searched on validation). Each model trains from its config in
``configs/<data set>/``, with the authors' protocol, tracked in MLflow; the table gives Recall@20,
NDCG@20, the paper's numbers, best epoch, epochs/s, examples/s, wall minutes, minutes to the
paper's number and peak RSS. Run it alone on the machine: two jobs on two cores slow each other.
"""

from __future__ import annotations

import sys

from rankforge.pipelines.quality_cli import main

if __name__ == "__main__":
    sys.exit(main())
