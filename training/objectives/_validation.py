"""Input checks shared by the training objectives.

Every loss validates its tensors at the boundary so that a trainer feeding the wrong layout gets a
``ValueError`` naming the tensor and the expected versus actual shape, instead of a broadcasting
accident that silently trains on the wrong pairs.
"""

from collections.abc import Sequence

import torch

# A dimension is either a fixed size, or a symbol ("B", "N", ...) bound on first use.
Dim = int | str


def require_float(name: str, tensor: torch.Tensor) -> None:
    """Raise unless ``tensor`` is a floating-point tensor (losses need gradients)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if not tensor.is_floating_point():
        raise ValueError(f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}")


def require_bool(name: str, tensor: torch.Tensor) -> None:
    """Raise unless ``tensor`` is a boolean mask."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype != torch.bool:
        raise ValueError(f"{name}: expected a bool mask (True = valid), got dtype {tensor.dtype}")


def require_binary(name: str, tensor: torch.Tensor) -> None:
    """Raise unless every entry of ``tensor`` is 0 or 1 (bool, integer or float dtype)."""
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype == torch.bool:
        return
    if tensor.is_complex() or not bool(((tensor == 0) | (tensor == 1)).all()):
        raise ValueError(f"{name}: expected binary labels in {{0, 1}}")


def require_shape(
    name: str,
    tensor: torch.Tensor,
    expected: Sequence[Dim],
    sizes: dict[str, int],
) -> None:
    """Check ``tensor.shape`` against ``expected``, binding symbolic dims in ``sizes``.

    ``sizes`` is shared between calls, so ``["B", "D"]`` for one tensor and ``["B", "N", "D"]``
    for the next enforces the same ``B`` and ``D`` for both.
    """
    shown = "[" + ", ".join(_show(d, sizes) for d in expected) + "]"
    if tensor.dim() != len(expected):
        raise ValueError(f"{name}: expected shape {shown}, got {tuple(tensor.shape)}")
    for dim, actual in zip(expected, tensor.shape, strict=True):
        want = sizes.get(dim) if isinstance(dim, str) else dim
        if want is not None and want != actual:
            raise ValueError(f"{name}: expected shape {shown}, got {tuple(tensor.shape)}")
    for dim, actual in zip(expected, tensor.shape, strict=True):
        if isinstance(dim, str):
            sizes.setdefault(dim, actual)


def _show(dim: Dim, sizes: dict[str, int]) -> str:
    if isinstance(dim, int):
        return str(dim)
    return f"{dim}={sizes[dim]}" if dim in sizes else dim


def require_positive(name: str, value: float) -> None:
    """Raise unless the hyper-parameter ``value`` is a finite number > 0."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if value == float("inf"):
        raise ValueError(f"{name} must be finite, got {value!r}")


def require_non_negative(name: str, value: float) -> None:
    """Raise unless the hyper-parameter ``value`` is a finite number >= 0."""
    if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    if value == float("inf"):
        raise ValueError(f"{name} must be finite, got {value!r}")


def require_choice(name: str, value: str, choices: Sequence[str]) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
