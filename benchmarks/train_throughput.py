"""Training throughput: the sharded TorchRec two-tower against a plain ``nn.EmbeddingBag`` twin.

Both models have the same tables (sizes, pooling), the same towers and loss, and train on the same
random batches; the TorchRec one runs the production path (DMP, FBGEMM fused row-wise Adagrad on
the tables, Adam on the towers), the plain one uses ``nn.EmbeddingBag`` with Adagrad/Adam. Each
runs for a fixed wall-clock budget after warm-up, so the whole script takes a few seconds.

    .venv/bin/python benchmarks/train_throughput.py [--seconds 3] [--batch-size 1024]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from rankforge.models.inputs import SparseFeature, padded_to_kjt
from rankforge.models.two_tower import TwoTower, tower_mlp
from rankforge.pipelines.train_config import OptimizerConfig, ShardingConfig
from rankforge.training.objectives import SampledSoftmaxLoss
from rankforge.training.sharding import build_optimizers, init_distributed, shard, shutdown_distributed
from rankforge.training.tasks import RetrievalTask


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
        sizes = [m.out_features for m in model.user_tower if isinstance(m, nn.Linear)]
        self.user_tower = tower_mlp(model.embedding_dim * len(self.user_keys), sizes)
        self.item_tower = tower_mlp(model.embedding_dim * len(self.item_keys), sizes)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed budget per model")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--negatives", type=int, default=128, help="shared sampled negatives per batch")
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--history", type=int, default=20)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()

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
            RetrievalTask(TwoTower(u_feats, i_feats, device=torch.device("meta"), **shape), loss, True),
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


if __name__ == "__main__":
    main()
