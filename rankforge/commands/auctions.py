"""``rankforge simulate-auctions``: write a simulated auction log with its true CTRs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    sim = subparsers.add_parser(
        "simulate-auctions",
        help="write a simulated ad auction log (with true CTRs) over the synthetic users and items",
        description="Simulate ad auctions over the synthetic log's users and items (same seed, same "
        "hidden tastes): bids, clicks drawn from known true CTRs, written as parquet or CSV in the "
        "auction log schema (see rankforge.features.auctions).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    sim.add_argument("--out", type=Path, required=True, help="the log to write (.parquet or .csv)")
    sim.add_argument("--auctions", type=int, default=20_000, help="number of auctions")
    sim.add_argument("--ads", type=int, default=8, help="ads per auction")
    sim.add_argument(
        "--misspecification", type=float, default=1.0, help="std of the per-pair hidden CTR term"
    )
    sim.add_argument("--bid-sigma", type=float, default=0.8, help="std of the log bids across ads")
    sim.add_argument("--bid-ctr-correlation", type=float, default=0.0, help="correlation of log bid and CTR")
    sim.add_argument("--seed", type=int, default=0, help="auction draws")
    sim.add_argument("--users", type=int, default=300, help="synthetic users (as data.synthetic.n_users)")
    sim.add_argument("--items", type=int, default=400, help="synthetic items = ads (data.synthetic.n_items)")
    sim.add_argument(
        "--world-seed", type=int, default=0, help="the synthetic log's seed (data.synthetic.seed)"
    )
    sim.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from rankforge.config_errors import describe
    from rankforge.errors import ConfigError
    from rankforge.features.auction_simulator import AuctionSimulation, simulate_auctions

    if args.out.suffix not in (".parquet", ".csv"):
        raise ConfigError(f"--out must end in .parquet or .csv, got {str(args.out)[:80]!r}")
    try:
        sim = AuctionSimulation(
            n_auctions=args.auctions,
            ads_per_auction=args.ads,
            misspecification=args.misspecification,
            bid_sigma=args.bid_sigma,
            bid_ctr_correlation=args.bid_ctr_correlation,
            seed=args.seed,
        )
    except ValidationError as exc:
        raise ConfigError(describe(exc, AuctionSimulation)) from exc
    log = simulate_auctions(sim, args.users, args.items, world_seed=args.world_seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    partial = args.out.with_name(f".{args.out.name}.partial")  # never a half-written log
    log.write_parquet(partial) if args.out.suffix == ".parquet" else log.write_csv(partial)
    os.replace(partial, args.out)
    print(f"wrote {log['auction_id'].n_unique()} auctions ({log.height} ads) to {args.out}")
    return 0
