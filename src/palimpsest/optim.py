"""Optimisation with sparse gradients: lazy AdamW and gradient clipping that accept them.

A product-key memory reads k rows of a large value table per token; with
``sparse_updates=True`` its value gradient is a sparse tensor over the rows read.
Torch's dense AdamW rejects sparse gradients, and its ``SparseAdam`` and
``clip_grad_norm_`` either cannot be mixed with dense parameters or fail on them. So:

* :class:`LazyAdamW` is ``torch.optim.AdamW`` for dense gradients (fused / foreach
  kernels untouched) and a *lazy* AdamW for sparse ones: only the rows present in the
  gradient have their moments, decay and weights updated; rows not read keep their state
  (TensorFlow's "LazyAdam"). On the first step both give the same weights as dense AdamW
  (rows not read have zero moments, so dense AdamW leaves them in place too); later the
  untouched rows differ only in that dense AdamW keeps decaying their moments and moving
  them by their momentum.
* :func:`clip_grad_norm_` is ``torch.nn.utils.clip_grad_norm_`` that also counts and
  scales sparse gradients.
* :class:`SparseGradientModule` is how a module that *may* produce sparse gradients learns
  that the optimizer accepts them: the trainer that builds a :class:`LazyAdamW` tells every
  such module so (``allow_sparse_gradients(True)``), and a module never told stays dense,
  which every optimizer and every distributed wrapper accepts. The spine declares the
  interface; a pillar's module implements it, so the trainer needs no pillar's names.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Protocol, runtime_checkable

import torch

from palimpsest.gpu_kernels import GPU_KERNEL_CHOICES, GpuKernels, lazy_adamw_rows, use_triton


@runtime_checkable
class SparseGradientModule(Protocol):
    """A module whose gradients may be sparse once the optimizer accepts them."""

    def allow_sparse_gradients(self, allowed: bool) -> None:
        """Whether this module's gradients may from now on be sparse (``False`` keeps them dense)."""


def allow_sparse_gradients(model: torch.nn.Module, allowed: bool) -> int:
    """Tell every :class:`SparseGradientModule` in ``model`` whether sparse gradients are
    accepted; returns how many were told."""
    told = 0
    for module in model.modules():
        if isinstance(module, SparseGradientModule):
            module.allow_sparse_gradients(allowed)
            told += 1
    return told


class LazyAdamW(torch.optim.AdamW):
    """AdamW that updates only the rows present in a parameter's sparse gradient.

    A drop-in replacement for ``torch.optim.AdamW`` (same arguments, same state names, so
    checkpoints interchange): parameters whose gradient is dense go through AdamW's own
    step; parameters whose gradient is sparse (e.g. memory values with
    ``sparse_updates=True``) get the lazy update. Weight decay of a sparse parameter is
    applied only to the rows read (usual for embeddings; memory values take none anyway).
    """

    def __init__(self, *args: Any, gpu_kernels: GpuKernels = "auto", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if gpu_kernels not in GPU_KERNEL_CHOICES:
            raise ValueError(f"gpu_kernels must be one of {GPU_KERNEL_CHOICES}, got {gpu_kernels!r}")
        #: The lazy row update's implementation on a GPU (:mod:`palimpsest.gpu_kernels`), for groups
        #: that do not name their own (``"gpu_kernels"`` in a group).
        self.gpu_kernels: GpuKernels = gpu_kernels
        self._row_workspaces: dict[int, tuple[torch.Tensor, ...]] = {}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        sparse = {
            id(p): p.grad
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None and p.grad.is_sparse
        }
        if not sparse:
            super().step()
            return loss
        hidden = [p for group in self.param_groups for p in group["params"] if id(p) in sparse]
        for parameter in hidden:
            parameter.grad = None  # AdamW's step skips parameters without a gradient
        try:
            super().step()
        finally:
            for parameter in hidden:
                parameter.grad = sparse[id(parameter)]
        for group in self.param_groups:
            for parameter in group["params"]:
                if id(parameter) in sparse:
                    self._lazy_update(parameter, sparse[id(parameter)], group)
        return loss

    def _lazy_update(self, parameter: torch.Tensor, grad: torch.Tensor, group: dict) -> None:
        if group["amsgrad"]:
            raise ValueError("LazyAdamW does not support amsgrad for sparse gradients")
        grad = coalesced(grad)
        rows, values = grad.indices()[0], grad.values()
        if group["maximize"]:
            values = -values
        state = self.state[parameter]
        if not state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(parameter, memory_format=torch.preserve_format)
        state["step"] += 1
        step = float(state["step"])
        beta1, beta2 = group["betas"]
        lr, decay, eps = float(group["lr"]), group["weight_decay"], group["eps"]
        step_size = lr / (1 - beta1**step)
        root_correction = math.sqrt(1 - beta2**step)
        kernels = _compiled_rows(parameter, state, values)
        if kernels is not None:  # one pass over each row read, in place
            kernels.lazy_adamw_rows(
                parameter, state["exp_avg"], state["exp_avg_sq"], rows.contiguous(), values.contiguous(),
                lr, beta1, beta2, eps, decay, step_size, root_correction,
            )  # fmt: skip
            return
        choice = group.get("gpu_kernels", self.gpu_kernels)  # a group may name its own
        if parameter.dim() == 2 and use_triton(parameter, choice):  # one pass per row, in place
            moments = (state["exp_avg"], state["exp_avg_sq"])
            if parameter.is_contiguous() and all(m.is_contiguous() for m in moments):
                lazy_adamw_rows(
                    parameter, *moments, rows, values, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                    decay=decay, step_size=step_size, root_correction=root_correction,
                )  # fmt: skip
                return
        # In chunks of rows gathered into three reused workspaces: a fresh allocation per gather
        # is page-faulted in and unmapped again every time, which took half of the update.
        spaces = self._workspaces(parameter)
        for start in range(0, rows.numel(), self.rows_per_chunk):
            chunk = rows[start : start + self.rows_per_chunk]
            grad_rows = values[start : start + self.rows_per_chunk]
            weight, exp_avg, exp_avg_sq = (space[: chunk.numel()] for space in spaces)
            torch.index_select(parameter, 0, chunk, out=weight)
            if decay:
                weight.mul_(1 - lr * decay)
            torch.index_select(state["exp_avg"], 0, chunk, out=exp_avg).lerp_(grad_rows, 1 - beta1)
            torch.index_select(state["exp_avg_sq"], 0, chunk, out=exp_avg_sq).mul_(beta2)
            exp_avg_sq.addcmul_(grad_rows, grad_rows, value=1 - beta2)
            state["exp_avg"].index_copy_(0, chunk, exp_avg)
            state["exp_avg_sq"].index_copy_(0, chunk, exp_avg_sq)
            denominator = exp_avg_sq.sqrt_().div_(root_correction).add_(eps)
            weight.addcdiv_(exp_avg, denominator, value=-step_size)
            parameter.index_copy_(0, chunk, weight)

    #: Rows updated together by the lazy step: a chunk of a 256-wide fp32 table is 8 MiB, small
    #: enough to stay in cache while it is read and written (its measured choice: README, "Benchmarks").
    rows_per_chunk = 8192

    def _workspaces(self, parameter: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Three chunks of rows shaped like ``parameter``'s, kept across steps (never saved)."""
        cache = self._row_workspaces
        shape = (self.rows_per_chunk, *parameter.shape[1:])
        spaces = cache.get(id(parameter))
        if (
            spaces is None
            or spaces[0].shape != shape
            or spaces[0].dtype != parameter.dtype
            or (spaces[0].device != parameter.device)
        ):
            spaces = cache[id(parameter)] = tuple(parameter.new_empty(shape) for _ in range(3))
        return spaces  # type: ignore[return-value]


def _compiled_rows(parameter: torch.Tensor, state: dict, grad_rows: torch.Tensor):
    """The compiled lazy update (:mod:`palimpsest.kernels`, built for the memory's values) where
    it applies: a 2-D fp32 CPU table with its moments, all contiguous; else None."""
    tensors = (parameter, state["exp_avg"], state["exp_avg_sq"], grad_rows)
    if parameter.dim() != 2 or any(t.device.type != "cpu" or t.dtype != torch.float32 for t in tensors):
        return None
    if not all(t.is_contiguous() for t in tensors[:3]):
        return None
    from palimpsest.kernels import cpu_kernels

    return cpu_kernels()


def coalesced(grad: torch.Tensor) -> torch.Tensor:
    """``grad.coalesce()``, without the sort when its rows are already sorted and unique.

    Autograd drops the "coalesced" flag when it stores a sparse gradient, and a real
    coalesce sorts every row again; a check of the row order is far cheaper.
    """
    if grad.is_coalesced():
        return grad
    rows = grad._indices()[0]
    if grad._indices().shape[0] == 1 and bool((rows[1:] > rows[:-1]).all()):
        return torch.sparse_coo_tensor(
            grad._indices(), grad._values(), grad.shape, is_coalesced=True, check_invariants=False
        )
    return grad.coalesce()


def has_sparse_gradients(parameters: Iterable[torch.Tensor]) -> bool:
    return any(p.grad is not None and p.grad.is_sparse for p in parameters)


@torch.no_grad()
def clip_grad_norm_(
    parameters: Iterable[torch.Tensor], max_norm: float, norm_type: float = 2.0
) -> torch.Tensor:
    """Clip the gradients' total norm to ``max_norm``, counting sparse gradients too.

    Sparse gradients are coalesced first (accumulated sparse gradients repeat rows, whose
    values must be summed before they are measured). Returns the norm before clipping.
    """
    parameters = [p for p in parameters if p.grad is not None]
    for parameter in parameters:
        if parameter.grad.is_sparse and not parameter.grad.is_coalesced():
            parameter.grad = coalesced(parameter.grad)
    pieces = [p.grad._values() if p.grad.is_sparse else p.grad for p in parameters]
    if not pieces:
        return torch.tensor(0.0)
    norms = torch.stack([torch.linalg.vector_norm(piece, norm_type) for piece in pieces])
    total = torch.linalg.vector_norm(norms, norm_type)
    coefficient = max_norm / (float(total) + 1e-6)
    if coefficient < 1.0:
        for piece in pieces:
            piece.mul_(coefficient)
    return total
