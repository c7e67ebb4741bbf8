"""Process group, sharding plan, DMP wrapping, optimizers and gathering of the unsharded model.

Everything that depends on how many processes there are lives here, so the trainer reads the same
on one process as on N. Where a table's optimizer is fused into FBGEMM's backward (row-wise Adagrad
everywhere, Adam on GPUs), TorchRec's planner places each embedding table (table-wise or
column-wise on CPU, row-wise too on GPUs) and DistributedModelParallel shards the tables and wraps
the dense layers in DDP. Where it is not (Adam on CPU: FBGEMM 1.8 has none there), the tables are
replicated anyway, and TorchRec's data-parallel CPU path (FBGEMM's dense lookup kernel behind a
Python autograd function, plus DDP even on one process) measured 2-3x slower than torch's own
``embedding_bag`` kernels on the same tables: those models train as plain torch modules, wrapped in
DDP only when there are several processes (:func:`shard`). :func:`unsharded_state_dict`
reassembles one plain state dict on rank 0 for export either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from fbgemm_gpu.split_embedding_configs import EmbOptimType
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.model_parallel import DistributedModelParallel
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.distributed.planner.proposers import GreedyProposer, GridSearchProposer, UniformProposer
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_modules import EmbeddingBagCollection
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from rankforge.errors import ConfigError
from rankforge.training.config import CPU_SHARDING_TYPES, OptimizerConfig, ShardingConfig

PROPOSERS = {"greedy": GreedyProposer, "grid_search": GridSearchProposer, "uniform": UniformProposer}
SPARSE_OPTIMIZERS = {"exact_rowwise_adagrad": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "adam": EmbOptimType.ADAM}
#: Fused table optimizers FBGEMM 1.8 implements on CPU; any other runs unfused (see `tables_fused`).
CPU_FUSED_OPTIMIZERS = ("exact_rowwise_adagrad",)


def tables_fused(optimizer: OptimizerConfig, device: torch.device) -> bool:
    """Whether the tables' optimizer is fused into FBGEMM's backward on this device.

    FBGEMM 1.8's CPU kernels have no Adam. There the tables are replicated plain torch tables
    (gradients all-reduced by DDP across processes) and stepped by torch's fused Adam together
    with the dense layers: exactly the ``nn.Embedding`` + ``torch.optim.Adam`` of the papers'
    reference code.
    """
    return device.type != "cpu" or optimizer.sparse in CPU_FUSED_OPTIMIZERS


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, world, its device and whether it created the group."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _wants_cuda() -> bool:
    # RANKFORGE_DEVICE=cpu keeps a GPU host on the CPU path (e.g. to compare with CPU runs).
    return torch.cuda.is_available() and os.environ.get("RANKFORGE_DEVICE", "").lower() != "cpu"


def init_distributed() -> DistEnv:
    """Join (or create) the default process group: nccl on GPUs, gloo on CPU.

    Under ``torchrun`` the rendezvous comes from the environment (``env://``); a plain single
    process gets a private in-memory store, so the same code path (DMP included) runs everywhere.
    An already initialised group (a caller's, a test's) is reused and left for its owner to close.
    """
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if dist.is_initialized():
        backend = str(dist.get_backend())
        device = torch.device(f"cuda:{local_rank}") if backend == "nccl" else torch.device("cpu")
        return DistEnv(dist.get_rank(), dist.get_world_size(), local_rank, device, backend, False)
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    use_cuda = _wants_cuda()
    backend = "nccl" if use_cuda else "gloo"
    device = torch.device(f"cuda:{local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if "MASTER_ADDR" in os.environ:
        dist.init_process_group(
            backend, rank=rank, world_size=world_size, device_id=device if use_cuda else None
        )
    elif world_size == 1:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    else:
        raise ConfigError(
            f"WORLD_SIZE={world_size} but no MASTER_ADDR: launch multi-process jobs with torchrun"
        )
    return DistEnv(rank, world_size, local_rank, device, backend, True)


def shutdown_distributed(env: DistEnv) -> None:
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def embedding_tables(module: nn.Module) -> list[str]:
    return [
        config.name
        for sub in module.modules()
        if isinstance(sub, EmbeddingBagCollection)
        for config in sub.embedding_bag_configs()
    ]


def allowed_sharding_types(config: ShardingConfig, device: torch.device) -> list[str]:
    """The configured types this device can run; an empty choice or a GPU-only kernel is an error
    here rather than an opaque planner failure."""
    if device.type != "cpu":
        return list(config.sharding_types)
    if config.compute_kernel != "fused":
        raise ConfigError(
            f"sharding.compute_kernel {config.compute_kernel!r} needs a GPU; use 'fused' on CPU"
        )
    allowed: list[str] = [t for t in config.sharding_types if t in CPU_SHARDING_TYPES]
    if not allowed:
        raise ConfigError(
            f"sharding.sharding_types {list(config.sharding_types)}: none runs on CPU; "
            f"use some of {list(CPU_SHARDING_TYPES)}"
        )
    return allowed


def plan_sharding(
    module: nn.Module,
    sharder: EmbeddingBagCollectionSharder,
    config: ShardingConfig,
    env: DistEnv,
) -> ShardingPlan:
    """One plan agreed by every rank (rank 0 plans, the others receive it)."""
    types, kernels = allowed_sharding_types(config, env.device), [config.compute_kernel]
    constraints = {
        name: ParameterConstraints(sharding_types=types, compute_kernels=kernels)
        for name in embedding_tables(module)
    }
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=env.world_size, compute_device=env.device.type),
        constraints=constraints,
        proposer=PROPOSERS[config.planner](),
    )
    return planner.collective_plan(module, [sharder], dist.GroupMember.WORLD)


def model_device(optimizer: OptimizerConfig, env: DistEnv) -> torch.device:
    """Where the trainer builds the model: the meta device when DMP will shard and materialise
    the tables, the process's device when they are replicated plain torch modules."""
    return torch.device("meta") if tables_fused(optimizer, env.device) else env.device


def shard(module: nn.Module, sharding: ShardingConfig, optimizer: OptimizerConfig, env: DistEnv) -> nn.Module:
    """Shard ``module`` (built on :func:`model_device`) with its tables' optimizer fused into
    backward where FBGEMM has it on this device; otherwise it stays a plain module with
    replicated tables (DDP across processes), stepped by torch's fused Adam."""
    if not tables_fused(optimizer, env.device):
        if env.world_size == 1:
            return module
        return DistributedDataParallel(module, device_ids=[env.device] if env.device.type == "cuda" else None)
    sharder = EmbeddingBagCollectionSharder(
        fused_params={
            "optimizer": SPARSE_OPTIMIZERS[optimizer.sparse],
            "learning_rate": optimizer.sparse_lr,
            "eps": optimizer.sparse_eps,
        }
    )
    plan = plan_sharding(module, sharder, sharding, env)
    return DistributedModelParallel(module, device=env.device, plan=plan, sharders=[sharder])


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose parameter and state-dict names are the model's own: DDP's wrapper (which
    prefixes ``module.``) removed; DMP already names them so."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def build_optimizers(model: nn.Module, config: OptimizerConfig) -> tuple[CombinedOptimizer, KeyedOptimizer]:
    """(combined, dense): the fused table optimizer (sharded models) plus Adam/AdamW over the
    remaining parameters.

    Unfused (replicated) tables are among the remaining parameters: they get their own group with
    ``sparse_lr``/``sparse_eps`` and ``embedding_weight_decay`` (coupled L2, the SimpleX authors'
    ``embedding_regularizer``: ``lambda / 2 * ||W||^2`` over the whole table); the batch regulariser
    ``embedding_l2`` is the task's. The dense one is returned too because only it has lazy state
    that needs ``init_state`` before a checkpoint can be loaded into it.
    """
    dense_params = dict(in_backward_optimizer_filter(unwrap(model).named_parameters()))
    cls = torch.optim.AdamW if config.dense == "adamw" else torch.optim.Adam
    tables = {id(p) for name, p in dense_params.items() if "embedding_bags" in name}

    def factory(params: list[torch.Tensor]) -> torch.optim.Optimizer:
        groups: list[dict[str, Any]] = [
            {"params": [p for p in params if id(p) not in tables]},
            {
                "params": [p for p in params if id(p) in tables],
                "lr": config.sparse_lr,
                "eps": config.sparse_eps,
                "weight_decay": config.embedding_weight_decay,
            },
        ]
        groups = [g for g in groups if g["params"]]
        # torch's fused kernel: one pass over all parameters (6x faster than foreach on CPU tables)
        return cls(groups, lr=config.dense_lr, weight_decay=config.weight_decay, fused=True)

    fused = [("sparse", model.fused_optimizer)] if isinstance(model, DistributedModelParallel) else []
    if not dense_params:  # every parameter is a fused table (e.g. matrix factorisation)
        return CombinedOptimizer(fused), KeyedOptimizer({}, {}, [])
    dense = KeyedOptimizerWrapper(dense_params, factory)
    return CombinedOptimizer([*fused, ("dense", dense)]), dense


@torch.no_grad()
def local_embedding_bytes(model: nn.Module) -> int:
    """Bytes of embedding-table weights this rank holds: its local shards of a sharded table, the
    whole table where tables are replicated (data-parallel). Optimizer state is not counted."""
    total = 0
    for key, value in unwrap(model).state_dict().items():
        if isinstance(value, ShardedTensor):
            total += sum(s.tensor.numel() * s.tensor.element_size() for s in value.local_shards())
        elif "embedding_bags" in key and key.endswith(".weight"):
            total += value.numel() * value.element_size()
    return total


def embedding_bytes_per_rank(model: nn.Module, env: DistEnv) -> list[int]:
    """Every rank's :func:`local_embedding_bytes`, in rank order, on every rank; a collective."""
    mine = local_embedding_bytes(model)
    if env.world_size == 1:
        return [mine]
    gathered = [0] * env.world_size
    dist.all_gather_object(gathered, mine)
    return [int(b) for b in gathered]


def unsharded_state_dict(model: nn.Module, env: DistEnv) -> dict[str, torch.Tensor] | None:
    """The full state dict on rank 0 (``None`` elsewhere); a collective: every rank must call it.

    Sharded tables are gathered shard by shard into one tensor; dense tensors are identical on
    every rank (DDP) and taken as they are.
    """
    full: dict[str, torch.Tensor] = {}
    for key, value in unwrap(model).state_dict().items():
        if isinstance(value, ShardedTensor):
            out = torch.empty(value.size(), dtype=value.dtype, device=env.device) if env.is_main else None
            value.gather(dst=0, out=out)
            if out is not None:
                full[key] = out.cpu()
        elif env.is_main:
            full[key] = value.detach().cpu().clone()
    return full if env.is_main else None
