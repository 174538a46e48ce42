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
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch


class LazyAdamW(torch.optim.AdamW):
    """AdamW that updates only the rows present in a parameter's sparse gradient.

    A drop-in replacement for ``torch.optim.AdamW`` (same arguments, same state names, so
    checkpoints interchange): parameters whose gradient is dense go through AdamW's own
    step; parameters whose gradient is sparse (e.g. memory values with
    ``sparse_updates=True``) get the lazy update. Weight decay of a sparse parameter is
    applied only to the rows read (usual for embeddings; memory values take none anyway).
    """

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
        grad = grad.coalesce()
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
        lr = float(group["lr"])
        if group["weight_decay"]:
            decayed = parameter.index_select(0, rows).mul_(1 - lr * group["weight_decay"])
            parameter.index_copy_(0, rows, decayed)
        exp_avg = state["exp_avg"].index_select(0, rows).mul_(beta1).add_(values, alpha=1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2)
        exp_avg_sq.addcmul_(values, values, value=1 - beta2)
        state["exp_avg"].index_copy_(0, rows, exp_avg)
        state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        denominator = exp_avg_sq.div_(bias_correction2).sqrt_().add_(group["eps"])
        parameter.index_add_(0, rows, exp_avg.div_(denominator), alpha=-lr / bias_correction1)


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
            parameter.grad = parameter.grad.coalesce()
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
