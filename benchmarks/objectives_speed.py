"""Forward+backward time of every training objective at production-like sizes, per device.

Prints one table row per (objective, device). On a machine with CUDA it also checks that the GPU
loss equals the CPU loss on the same inputs (the ``max |gpu-cpu|`` column), since the losses are
pure torch and must not depend on the device.

    python benchmarks/objectives_speed.py [--repeats 20]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from rankforge.training.objectives import build_objective

B, N, D = 1024, 500, 64  # users per batch, negatives per positive (SimpleX-style), embedding dim
A, M = 256, 20  # auctions per batch, ads per auction
L, K1, K2 = 200, 50, 10  # cascade list length, retrieval top-k, ranking top-k


def cases(gen: torch.Generator) -> dict[str, tuple[torch.nn.Module, Callable[[], tuple]]]:
    """(loss, inputs) per objective; inputs are created once on the CPU."""

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    user, pos, neg = randn(B, D), randn(B, D), randn(N, D)
    logits, ref = randn(B * 8), randn(B * 8)
    labels = (torch.rand(B * 8, generator=gen) < 0.3).float()
    a_logits, bids = randn(A, M), torch.rand(A, M, generator=gen) + 0.1
    a_labels = (torch.rand(A, M, generator=gen) < 0.2).float()
    mask = torch.ones(A, M, dtype=torch.bool)
    ret, rank = randn(64, L), randn(64, L)
    truth = (torch.rand(64, L, generator=gen) < 0.05).float()
    return {
        "ccl": (build_objective("ccl", margin=0.8, negative_weight=150.0), lambda: (user, pos, neg)),
        "psl": (build_objective("psl", activation="tanh", temperature=0.2), lambda: (user, pos, neg)),
        "confidence_ranking": (build_objective("confidence_ranking"), lambda: (logits, labels, ref)),
        "welfare_rankloss": (build_objective("welfare_rankloss"), lambda: (a_logits, a_labels, bids, mask)),
        "lcron": (build_objective("lcron", retrieval_k=K1, ranking_k=K2), lambda: (ret, rank, truth)),
    }


def time_case(
    loss: torch.nn.Module, inputs: tuple, device: torch.device, repeats: int
) -> tuple[float, float]:
    """Median ms of forward+backward, and the loss value."""
    moved = [
        x.to(device).requires_grad_(x.is_floating_point() and x.dim() > 0 and i == 0)
        for i, x in enumerate(inputs)
    ]
    loss = loss.to(device)
    value = 0.0
    times = []
    for _ in range(repeats + 3):
        for x in moved:
            x.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = loss(*moved)
        out.backward()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        value = float(out.detach().cpu())
    times = sorted(times[3:])
    return 1000 * times[len(times) // 2], value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}; devices: {', '.join(str(d) for d in devices)}")
    print(f"{'objective':<20}{'device':<8}{'fwd+bwd ms':>12}{'loss':>14}{'max |gpu-cpu|':>16}")
    for name, (loss, make) in cases(gen).items():
        cpu_value = None
        for device in devices:
            ms, value = time_case(loss, make(), device, args.repeats)
            diff = "" if cpu_value is None else f"{abs(value - cpu_value):.2e}"
            cpu_value = value if cpu_value is None else cpu_value
            print(f"{name:<20}{device.type:<8}{ms:>12.2f}{value:>14.6f}{diff:>16}")


if __name__ == "__main__":
    main()
