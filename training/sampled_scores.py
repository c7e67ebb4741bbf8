"""Per-example negatives at hardware speed: the scores of a sparse (example, candidate) pattern.

With per-example negatives every training row scores its positive and its own ``N`` negatives:
``M = 1 + N`` candidates per row, ``B * M`` scores per batch, while the *distinct* candidates of
a batch number at most ``min(B * M, catalogue)``. The textbook step gathers a ``[B, M, D]`` copy
of candidate vectors, normalises it, multiplies, and sends a ``[B, M, D]`` gradient back through
the same copies: three passes over ``B * M * D`` floats (65 MB at 256 x 1000 x 64) that dominate
the step (about 330 examples/s on one core).

Here a batch's distinct candidates are looked up once (``[U, D]``, normalised once), and the
scores are a sampled dense-dense product (SDDMM) at the pattern's positions::

    scores[b, m] = query[b] . candidates[cols[b, m]]

* forward: :func:`torch.sparse.sampled_addmm` over a CSR pattern (row ``b`` holds its ``M``
  columns), never materialising ``[B, M, D]``;
* backward: with ``G`` the sparse matrix of the incoming score gradients, ``grad_query = G @
  candidates`` and ``grad_candidates = G^T @ query``, both as weighted bag sums
  (``embedding_bag``, FBGEMM's SpMDM kernels); ``G^T``'s layout (the pattern's entries grouped by
  candidate) is computed once per batch with the batch itself (:meth:`SampledPattern.of`), off the
  autograd path.

At 256 x 1001 x 64 on one core: about 3.7 ms forward (MKL's SDDMM) and 2.1 + 2.4 ms backward,
against about 50 ms for the gather/bmm forward alone (MKL's CSR products took 2.7 + 4.5 ms for
the backward). TorchRec and FBGEMM have no SDDMM; the candidates themselves still come from the
model's tables (one lookup of distinct ids, or the whole item table), so sharding and fused
optimizers are unchanged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SampledPattern:
    """Which candidate each score belongs to, for a ``[B, M]`` matrix of item ids.

    ``unique`` are the distinct ids (sorted, ``[U]``); ``cols`` ``[B * M]`` indexes ``unique``
    row by row (``cols.view(B, M)[b, m]`` is the candidate of score ``(b, m)``). The transposed
    layout lists the same entries grouped by candidate: ``order`` ``[B * M]`` are their flat
    positions, ``rows`` their example row, ``crow`` ``[U + 1]`` the group boundaries.
    """

    unique: torch.Tensor
    cols: torch.Tensor
    order: torch.Tensor
    rows: torch.Tensor
    crow: torch.Tensor
    batch: int
    width: int

    @classmethod
    def of(cls, ids: torch.Tensor) -> SampledPattern:
        """The pattern of ``ids`` ``[B, M]`` (int64, non-negative): one stable sort."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be [B, M], got {tuple(ids.shape)}")
        b, m = ids.shape
        flat = ids.reshape(-1)
        # int32 keys sort about twice as fast; item indices always fit
        key = flat.to(torch.int32) if flat.numel() and int(flat.max()) < 2**31 else flat
        sorted_ids, order = torch.sort(key, stable=True)
        first = torch.ones(flat.numel(), dtype=torch.bool)
        first[1:] = sorted_ids[1:] != sorted_ids[:-1]
        group = torch.cumsum(first, 0) - 1  # each sorted entry's candidate index
        cols = torch.empty_like(group)
        cols[order] = group
        starts = first.nonzero().squeeze(1)
        crow = torch.cat([starts, torch.tensor([flat.numel()])])
        return cls(
            unique=sorted_ids[first].to(torch.int64),
            cols=cols,
            order=order,
            rows=order // m,
            crow=crow,
            batch=b,
            width=m,
        )

    @classmethod
    def over_catalogue(cls, ids: torch.Tensor, n_items: int) -> SampledPattern:
        """The pattern of ``ids`` ``[B, M]`` over the whole catalogue: candidate ``u`` is item
        ``u`` (``unique = arange(n_items)``), so the model's item table itself is the candidate
        matrix and no distinct ids are gathered. Worth it when a batch touches most items anyway
        (``B * M`` comparable to the catalogue)."""
        if ids.dim() != 2:
            raise ValueError(f"ids must be [B, M], got {tuple(ids.shape)}")
        b, m = ids.shape
        flat = ids.reshape(-1)
        order = _grouping(flat, n_items)
        crow = torch.zeros(n_items + 1, dtype=torch.int64)
        torch.cumsum(torch.bincount(flat, minlength=n_items), 0, out=crow[1:])
        rows = torch.div(order.to(torch.int32), m, rounding_mode="floor").to(torch.int64)
        return cls(
            unique=torch.arange(n_items), cols=flat, order=order, rows=rows, crow=crow, batch=b, width=m
        )

    @property
    def counts(self) -> torch.Tensor:
        """``[U]``: how many scores each distinct candidate has in the batch."""
        return self.crow[1:] - self.crow[:-1]

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """CSR ``[B, U]`` with ``values`` ``[B * M]`` (row-major) at the pattern's positions."""
        crow = torch.arange(0, self.batch * self.width + 1, self.width, device=values.device)
        with warnings.catch_warnings():  # CSR is "beta" in torch; this layout is valid by construction
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                crow, self.cols, values, size=(self.batch, len(self.unique)), check_invariants=False
            )

    def to(self, device: torch.device) -> SampledPattern:
        return SampledPattern(
            unique=self.unique.to(device),
            cols=self.cols.to(device),
            order=self.order.to(device),
            rows=self.rows.to(device),
            crow=self.crow.to(device),
            batch=self.batch,
            width=self.width,
        )


def _grouping(flat: torch.Tensor, n_values: int) -> torch.Tensor:
    """The positions of ``flat`` (values in ``[0, n_values)``) sorted by value, stably. Below
    2**16 values numpy's stable sort of uint16 keys is a radix sort, about twice torch's sort."""
    if n_values <= 2**16 and flat.device.type == "cpu" and flat.numel() > 0:
        return torch.from_numpy(np.argsort(flat.numpy().astype(np.uint16), kind="stable"))
    key = flat.to(torch.int32) if n_values < 2**31 else flat
    return torch.sort(key, stable=True).indices


class _SampledScores(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query: torch.Tensor, candidates: torch.Tensor, pattern: SampledPattern) -> torch.Tensor:
        ctx.save_for_backward(query, candidates)
        ctx.pattern = pattern
        shape = pattern.matrix(query.new_zeros(pattern.batch * pattern.width))
        scores = torch.sparse.sampled_addmm(shape, query, candidates.T, beta=0.0)
        return scores.values().view(pattern.batch, pattern.width)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        query, candidates = ctx.saved_tensors
        pattern: SampledPattern = ctx.pattern
        values = grad.contiguous().reshape(-1)
        grad_query = grad_candidates = None
        # G @ candidates and G^T @ query as weighted bag sums (torch's embedding_bag, FBGEMM's
        # SpMDM kernels on x86): row b sums its M candidates weighted by its score gradients;
        # candidate u sums the queries of its scores. Faster than MKL's CSR products here.
        if ctx.needs_input_grad[0]:
            offsets = torch.arange(0, values.numel(), pattern.width, device=values.device)
            grad_query = F.embedding_bag(
                pattern.cols, candidates, offsets, mode="sum", per_sample_weights=values
            )
        if ctx.needs_input_grad[1]:
            grad_candidates = F.embedding_bag(
                pattern.rows, query, pattern.crow[:-1], mode="sum", per_sample_weights=values[pattern.order]
            )
        return grad_query, grad_candidates, None


def sampled_scores(query: torch.Tensor, candidates: torch.Tensor, pattern: SampledPattern) -> torch.Tensor:
    """``[B, M]`` scores ``query[b] . candidates[pattern.cols[b, m]]``, differentiable in both.

    ``query`` ``[B, D]`` and ``candidates`` ``[U, D]`` (row ``u`` is ``pattern.unique[u]``'s
    vector) are float tensors on the same device.
    """
    if query.shape[0] != pattern.batch or candidates.shape[0] != len(pattern.unique):
        raise ValueError(
            f"query {tuple(query.shape)} / candidates {tuple(candidates.shape)} do not fit a pattern of "
            f"{pattern.batch} rows over {len(pattern.unique)} candidates"
        )
    return _SampledScores.apply(query.contiguous(), candidates.contiguous(), pattern)


class _UnitRows(torch.autograd.Function):
    """``x / max(||x||, eps)`` row-wise with a hand-written backward: the same values and
    gradients as :func:`torch.nn.functional.normalize`, in about a third of its passes over
    memory (autograd's chain of div/mul/neg/norm backward dominated a step that normalises a
    whole item table)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:
        inverse = 1.0 / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(eps)
        y = x * inverse
        ctx.save_for_backward(y, inverse)
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        y, inverse = ctx.saved_tensors
        # (grad - y (grad . y)) / ||x||; rows whose norm was clamped are x / eps, a plain scaling
        along = torch.einsum("...d,...d->...", grad, y).unsqueeze(-1)
        along.masked_fill_(inverse >= 1.0 / ctx.eps, 0.0)
        return torch.addcmul(grad, y, along, value=-1.0).mul_(inverse), None


def unit_rows(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Row-wise L2 normalisation of ``x`` ``[..., d]`` (what ``F.normalize(x, dim=-1)`` computes),
    for training steps; export and serving keep ``F.normalize`` (a traceable op)."""
    return _UnitRows.apply(x, eps)
