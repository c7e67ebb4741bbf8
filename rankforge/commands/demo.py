"""``rankforge demo``: the main job end to end on the embedded defaults (see pipelines/demo.py)."""

from __future__ import annotations

import argparse
import logging
import os
import warnings


def _quiet_libraries() -> None:
    """The demo is read by a person: keep library chatter (export notes, progress bars) out of it."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for module in (
        "torch",
        "torchrec",
        "fbgemm_gpu",
        "onnxscript",
        "copyreg",
        "mlflow",
        "rankforge.training",
    ):
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
    logging.basicConfig(level=logging.WARNING)
    for name in ("torchrec", "mlflow", "torch", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _run(args: argparse.Namespace) -> int:
    _quiet_libraries()
    from rankforge.pipelines.demo import run_demo  # heavy imports only when the job runs

    ads = None if args.ads_config.lower() == "none" else args.ads_config
    run_demo(args.retrieval_config, args.ranking_config, n_users=args.users, k=args.k, ads_config=ads)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train, register, materialise features, serve and query: the whole platform in one run",
        description="Run the main job end to end on the embedded defaults (synthetic log, MLflow SQLite "
        "store under RANKFORGE_HOME, Redis on localhost, a gRPC server on a free loopback port).",
    )
    parser.add_argument("--retrieval-config", default="configs/retrieval.toml")
    parser.add_argument("--ranking-config", default="configs/ranking.toml")
    parser.add_argument(
        "--ads-config", default="configs/ads.toml", help="the ads path's config ('none' skips the ads path)"
    )
    parser.add_argument("--users", type=int, default=3, help="how many held-out users to query")
    parser.add_argument("--k", type=int, default=5, help="items per answer")
    parser.set_defaults(func=_run)
