"""Training throughput: the platform's trainer against a plain-PyTorch loop of the same math.

Section ``negatives`` (default): MF with SimpleX's cosine contrastive loss on a Gowalla-sized
catalogue (29,858 users x 40,981 items, dim 64), Adam on the tables (the papers' optimiser; on CPU
the trainer's replicated tables and torch's fused Adam), measured in one run for

* per-example negatives (``N`` per positive, the SimpleX/PSL protocol): the trainer (batch built
  on its second thread, a sampled-scores pattern, the whole item table as candidates) against
  the textbook loop: gather a ``[B, 1 + N, D]`` copy, normalise, ``bmm``, loss, backward, Adam;
* one shared pool of ``N`` negatives per batch: the trainer against gather + ``[B, D] x [D, N]``.

The trainer's number is a real epoch of ``Trainer.train_epoch`` on a synthetic log that covers
the catalogue (every item at least once); the twin draws the same shapes of ids each step. Both
use ``--threads`` torch threads (the trainer adds its batch-building thread); the table prints
both, their ratio and the machine.

Section ``two-tower``: the sharded TorchRec two-tower (DMP, FBGEMM fused row-wise Adagrad) against
a plain ``nn.EmbeddingBag`` model of the same shape on random batches.

    .venv/bin/python benchmarks/train_throughput.py [--negatives 1000] [--batch-size 256] [--threads 1]
    .venv/bin/python benchmarks/train_throughput.py --section two-tower
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn

from rankforge.features.feature_spec import ITEM_ID, USER_ID
from rankforge.features.pipeline import prepare
from rankforge.models.inputs import SparseFeature, padded_to_kjt
from rankforge.models.two_tower import TwoTower, side_tower
from rankforge.training.allocator import reuse_large_allocations
from rankforge.training.config import OptimizerConfig, ShardingConfig, parse_config
from rankforge.training.objectives import CosineContrastiveLoss, SampledSoftmaxLoss
from rankforge.training.sharding import build_optimizers, init_distributed, shard, shutdown_distributed
from rankforge.training.tasks import RetrievalTask
from rankforge.training.trainer import Trainer

GOWALLA_USERS, GOWALLA_ITEMS = 29_858, 40_981
CCL = {"margin": 0.9, "negative_weight": 150.0}


def synthetic_log(folder: Path, users: int, items: int, events: int, seed: int = 0) -> Path:
    """A random implicit log in which every user and every item occurs (so the prepared catalogue
    has exactly ``users`` x ``items``)."""
    rng = np.random.default_rng(seed)
    extra = max(events - users - items, 0)
    user = np.concatenate([np.arange(users), rng.integers(users, size=items + extra)])
    item = np.concatenate(
        [rng.integers(items, size=users), np.arange(items), rng.integers(items, size=extra)]
    )
    path = folder / "log.parquet"
    pl.DataFrame({"user_id": user, "item_id": item, "timestamp": np.arange(len(user))}).write_parquet(path)
    return path


def trainer_rate(log: Path, args: argparse.Namespace, shared: bool, out: Path) -> float:
    """Examples/s of one training epoch of the platform's trainer (the catalogue is the log's,
    less the few users/items whose only event fell into the 1% test split)."""
    config = parse_config(
        {
            "data": {
                "source": "file",
                "path": str(log),
                "layout": "parquet",
                "split": "random",
                "test_fraction": 0.01,
            },
            "model": {"kind": "mf", "embedding_dim": args.dim, "init_std": 0.0001},
            "objective": {"name": "ccl", "params": CCL},
            "optimizer": {"sparse": "adam", "sparse_lr": 0.0001},
            "training": {"epochs": 1, "batch_size": args.batch_size, "threads": args.threads},
            "negatives": {"count": args.negatives, "shared": shared},
            "checkpoint": {"resume": False},
            "output_dir": str(out),
        }
    )
    data = prepare(config.data)
    assert data.n_users > 0.98 * args.users and data.n_items > 0.98 * args.items
    env = init_distributed()
    try:
        trainer = Trainer(config, data, env)
        return trainer.train_epoch().examples_per_second
    finally:
        shutdown_distributed(env)


def plain_rate(args: argparse.Namespace, shared: bool) -> float:
    """Examples/s of the textbook loop of the same math (gather, normalise, score, loss, backward,
    Adam on both tables)."""
    torch.manual_seed(0)
    users, items = nn.Embedding(args.users, args.dim), nn.Embedding(args.items, args.dim)
    for table in (users, items):
        nn.init.normal_(table.weight, 0.0, 0.0001)
    optimizer = torch.optim.Adam([users.weight, items.weight], lr=0.0001, fused=True)
    loss = CosineContrastiveLoss(**CCL)
    g = torch.Generator().manual_seed(0)
    b, n = args.batch_size, args.negatives

    def step() -> None:
        u = torch.randint(args.users, (b,), generator=g)
        pos = torch.randint(args.items, (b,), generator=g)
        neg = torch.randint(args.items, (n,) if shared else (b, n), generator=g)
        mask = (neg.unsqueeze(0) if shared else neg) != pos.unsqueeze(1)
        query = F.normalize(users(u), dim=-1)
        positives = F.normalize(items(pos), dim=-1)
        negatives = F.normalize(items(neg), dim=-1)  # [N, D] or [B, N, D]
        pos_scores = (query * positives).sum(-1)
        neg_scores = query @ negatives.T if shared else torch.bmm(negatives, query.unsqueeze(-1)).squeeze(-1)
        value = loss.from_scores(pos_scores, neg_scores, mask)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()

    for _ in range(3):
        step()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < args.seconds:
        step()
        steps += 1
    return steps * b / (time.perf_counter() - start)


def negatives_section(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    reuse_large_allocations()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        log = synthetic_log(Path(tmp), args.users, args.items, args.events)
        for shared in (False, True):
            label = "shared pool" if shared else "per example"
            platform_rate = trainer_rate(log, args, shared, Path(tmp) / label.replace(" ", "_"))
            rows.append((label, platform_rate, plain_rate(args, shared)))
    print(
        f"MF-CCL: users={args.users} items={args.items} dim={args.dim} batch={args.batch_size} "
        f"negatives={args.negatives} torch threads={args.threads} (+1 batch thread in the trainer) "
        f"machine={platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"{'negatives':<14} {'trainer ex/s':>14} {'plain loop ex/s':>16} {'trainer / plain':>16}")
    for label, mine, plain in rows:
        print(f"{label:<14} {mine:>14,.0f} {plain:>16,.0f} {mine / plain:>15.2f}x")


# -- two-tower: TorchRec DMP against nn.EmbeddingBag ---------------------------------------------


class PlainTwoTower(nn.Module):
    """The same two-tower over ``nn.EmbeddingBag`` (row ``n`` of each table is the padding row)."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.bags = nn.ModuleDict()
        for feature in [*model.user_sparse, *model.item_sparse]:
            self.bags[feature.name] = nn.EmbeddingBag(
                feature.num_embeddings + 1,
                model.embedding_dim,
                mode=feature.pooling,
                padding_idx=feature.num_embeddings,
            )
        self.user_keys, self.item_keys = model.user_keys, model.item_keys
        sizes = [m.out_features for m in model.user_tower.mlp if isinstance(m, nn.Linear)]
        dim = model.embedding_dim
        self.user_tower = side_tower(model.user_sparse, USER_ID, sizes, dim)
        self.item_tower = side_tower(model.item_sparse, ITEM_ID, sizes, dim)

    def _pool(self, ids: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
        pooled = []
        for key in keys:
            bag = self.bags[key]
            pooled.append(bag(torch.where(ids[key] < 0, bag.padding_idx, ids[key])))
        return torch.cat(pooled, dim=1)

    def forward(self, users: dict, items: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return self.user_tower(self._pool(users, self.user_keys)), self.item_tower(
            self._pool(items, self.item_keys)
        )


USER_KEYS = ["user_id", "user_history"]
ITEM_KEYS = ["item_id", "item_genres"]


def random_batch(g: torch.Generator, args: argparse.Namespace) -> tuple[dict, dict]:
    b, n = args.batch_size, args.negatives
    history = torch.randint(args.items, (b, args.history), generator=g)
    history[torch.rand(b, args.history, generator=g) < 0.3] = -1
    genres = torch.randint(20, (b + n, 2), generator=g)
    genres[:, 1][torch.rand(b + n, generator=g) < 0.5] = -1
    users = {"user_id": torch.randint(args.users, (b, 1), generator=g), "user_history": history}
    items = {"item_id": torch.randint(args.items, (b + n, 1), generator=g), "item_genres": genres}
    return users, items


def timed(step, batches: list, seconds: float) -> float:
    for batch in batches[:3]:  # warm-up
        step(*batch)
    examples, start, i = 0, time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        users, _ = batches[i % len(batches)]
        step(*batches[i % len(batches)])
        examples += users["user_id"].shape[0]
        i += 1
    return examples / (time.perf_counter() - start)


def two_tower_section(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    batches = [random_batch(g, args) for _ in range(8)]
    mask = torch.ones(args.batch_size, args.negatives, dtype=torch.bool)
    shape = dict(embedding_dim=args.dim, tower_sizes=(128, 64))
    u_feats = [
        SparseFeature("user_id", args.users),
        SparseFeature("user_history", args.items, max_len=args.history, pooling="mean"),
    ]
    i_feats = [
        SparseFeature("item_id", args.items),
        SparseFeature("item_genres", 20, max_len=2, pooling="mean"),
    ]
    env = init_distributed()
    try:
        loss = SampledSoftmaxLoss(0.1)
        dmp = shard(
            RetrievalTask(TwoTower(u_feats, i_feats, device=torch.device("meta"), **shape), loss),
            ShardingConfig(sharding_types=["table_wise"]),
            OptimizerConfig(),
            env,
        )
        optimizer, _ = build_optimizers(dmp, OptimizerConfig())

        def torchrec_step(users: dict, items: dict) -> None:
            out = dmp(padded_to_kjt(users, USER_KEYS), padded_to_kjt(items, ITEM_KEYS), mask)
            optimizer.zero_grad()
            out.backward()
            optimizer.step()

        plain = PlainTwoTower(TwoTower(u_feats, i_feats, **shape))
        sparse_opt = torch.optim.Adagrad(plain.bags.parameters(), lr=0.05)
        dense_opt = torch.optim.Adam(
            [*plain.user_tower.parameters(), *plain.item_tower.parameters()], lr=3e-3
        )

        def plain_step(users: dict, items: dict) -> None:
            u, v = plain(users, items)
            out = loss(u, v[: args.batch_size], v[args.batch_size :], mask)
            sparse_opt.zero_grad()
            dense_opt.zero_grad()
            out.backward()
            sparse_opt.step()
            dense_opt.step()

        rows = [
            ("torchrec DMP, fused rowwise-adagrad (FBGEMM)", timed(torchrec_step, batches, args.seconds)),
            ("nn.EmbeddingBag + Adagrad/Adam", timed(plain_step, batches, args.seconds)),
        ]
    finally:
        shutdown_distributed(env)
    print(
        f"two-tower: users={args.users} items={args.items} dim={args.dim} history={args.history} "
        f"batch={args.batch_size} shared negatives={args.negatives} device={env.device} "
        f"threads={torch.get_num_threads()}"
    )
    print(f"{'model':<48} {'examples/s':>12}")
    for name, rate in rows:
        print(f"{name:<48} {rate:>12,.0f}")
    print(f"{'speed-up (torchrec / plain)':<48} {rows[0][1] / rows[1][1]:>12.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", choices=["negatives", "two-tower"], default="negatives")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed budget of the plain loop")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 256 (negatives), 1024")
    parser.add_argument("--negatives", type=int, default=None, help="default: 1000 (negatives), 128")
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--events", type=int, default=120_000, help="synthetic log size (negatives)")
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    two_tower = args.section == "two-tower"
    args.batch_size = args.batch_size or (1024 if two_tower else 256)
    args.negatives = args.negatives or (128 if two_tower else 1000)
    args.users = args.users or (50_000 if two_tower else GOWALLA_USERS)
    args.items = args.items or (100_000 if two_tower else GOWALLA_ITEMS)
    if two_tower:
        args.seconds = min(args.seconds, 3.0)
        two_tower_section(args)
    else:
        negatives_section(args)


if __name__ == "__main__":
    main()
