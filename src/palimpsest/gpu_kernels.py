"""Triton kernels for the product-key memory on a GPU (optional; torch ops stay the reference).

Part of the spine, beside :mod:`palimpsest.kernels` (the compiled CPU loops) and for the same
users: the memory layer's value read (:class:`palimpsest.memory.autograd.ValueRead`) and the
lazy AdamW's row update (:class:`palimpsest.optim.LazyAdamW`).

On a GPU a memory step is bound by memory traffic, not arithmetic: each token reads
``heads * k`` random value rows. With torch ops the read is one ``embedding_bag`` call, but
its backward needs a gather of the same rows for the weights' gradient, a scaled copy of the
output gradient per read and an ``index_add_`` — three passes and two temporaries as large as
the rows read; the lazy update gathers parameter and both moments, updates them and scatters
them back (six passes over the rows). The kernels here do each in one pass:

* :func:`value_read`: per token, the weighted sum of its rows (fp32 accumulation);
* :func:`value_read_backward`: per token, each row read once — its dot product with the
  output gradient (the weight's gradient) and its weighted output gradient added atomically
  into the dense fp32 gradient;
* :func:`lazy_adamw_rows`: per row read, AdamW's update of the row and its moments in place.

They compile the first time they run on a CUDA device (a few seconds). On a machine without
one they run only under Triton's interpreter (``TRITON_INTERPRET=1`` set before the first
call), which is how the tests check them against torch ops on a CPU. Whether a GPU path takes
them is the caller's choice (:func:`use_triton`); ``benchmarks/gpu.sh`` measures both paths.
"""

from __future__ import annotations

import functools
import logging
import os
from types import SimpleNamespace
from typing import Literal

import torch

logger = logging.getLogger(__name__)

#: Which implementation a GPU memory uses: ``"triton"`` (these kernels), ``"torch"`` (torch ops,
#: the reference), or ``"auto"`` (:func:`use_triton` decides).
GpuKernels = Literal["auto", "triton", "torch"]
GPU_KERNEL_CHOICES = ("auto", "triton", "torch")

#: What ``"auto"`` takes on a CUDA device. Torch ops until ``benchmarks/gpu.sh`` has measured these
#: kernels beating them on a real card (results/gpu/); the kernels are opt-in until then.
AUTO_TAKES_TRITON = False


def interpreting() -> bool:
    """Whether Triton's CPU interpreter is on (the kernels then run on CPU tensors, slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_kernels() -> SimpleNamespace | None:
    """The jitted kernels, or None (said once in the log) where Triton is not installed."""
    try:
        import triton

        from palimpsest import triton_kernels as source
    except ImportError as error:
        logger.info("Triton kernels unavailable (%s); the memory uses torch ops", error)
        return None
    return SimpleNamespace(
        next_power_of_2=triton.next_power_of_2,
        read=source.value_read,
        backward=source.value_read_backward,
        adamw_rows=source.lazy_adamw_rows,
    )


def use_triton(tensor: torch.Tensor, choice: GpuKernels = "auto") -> bool:
    """Whether the memory's GPU kernels handle ``tensor`` (the value table): on a CUDA device, or
    under the interpreter, in fp32, bf16 or fp16, when Triton is installed and ``choice`` (or, for
    ``"auto"``, :data:`AUTO_TAKES_TRITON`) asks for them."""
    if choice == "torch" or (choice == "auto" and not AUTO_TAKES_TRITON):
        return False
    if tensor.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    if tensor.device.type != "cuda" and not (tensor.device.type == "cpu" and interpreting()):
        return False
    return triton_kernels() is not None


#: Columns of the value width one program handles (a tile of them by every read of a token).
_BLOCK_WIDTH = 64


def value_read(values: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``embedding_bag(indices, values, per_sample_weights=weights, mode="sum")`` for 2-D ``indices``
    (one bag of ``reads`` slots per token): ``(tokens, width)`` in the values' dtype."""
    kernels = triton_kernels()
    tokens, reads = indices.shape
    width = values.shape[1]
    output = values.new_empty((tokens, width))
    if tokens == 0:
        return output
    grid = (tokens, -(-width // _BLOCK_WIDTH))
    kernels.read[grid](
        values.contiguous(), indices.contiguous(), weights.contiguous(), output, reads, width,
        BLOCK_READS=kernels.next_power_of_2(reads), BLOCK_WIDTH=_BLOCK_WIDTH,
    )  # fmt: skip
    return output


def value_read_backward(
    values: torch.Tensor,
    indices: torch.Tensor,
    weights: torch.Tensor,
    grad_output: torch.Tensor,
    grad_weights: torch.Tensor | None,
    grad_values: torch.Tensor | None,
) -> None:
    """The read's backward in one pass over the rows read: ``grad_weights`` (``(tokens, reads)``)
    gets each row's dot product with its token's output gradient, and ``grad_values`` (a dense
    fp32 table, zeroed by the caller) each read's weight times that gradient, added atomically.
    Either may be None (not wanted)."""
    kernels = triton_kernels()
    tokens, reads = indices.shape
    if tokens == 0 or (grad_weights is None and grad_values is None):
        return
    if grad_values is not None and grad_values.dtype != torch.float32:
        raise ValueError(f"the value gradient is summed in float32, got {grad_values.dtype}")
    width = values.shape[1]
    placeholder = weights  # an unused pointer argument for a gradient not wanted
    kernels.backward[(tokens,)](
        values.contiguous(), indices.contiguous(), weights.contiguous(), grad_output.contiguous(),
        grad_weights if grad_weights is not None else placeholder,
        grad_values if grad_values is not None else placeholder,
        reads, WIDTH=width,
        WANT_WEIGHTS=grad_weights is not None, WANT_VALUES=grad_values is not None,
        BLOCK_READS=kernels.next_power_of_2(reads), BLOCK_WIDTH=_BLOCK_WIDTH,
    )  # fmt: skip


def lazy_adamw_rows(
    parameter: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_sq: torch.Tensor,
    rows: torch.Tensor,
    grad_rows: torch.Tensor,
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    decay: float,
    step_size: float,
    root_correction: float,
) -> None:
    """AdamW's update of the listed ``rows`` (distinct) of a 2-D ``parameter`` and its moments, in
    place, from their gradient rows ``grad_rows`` (``(len(rows), width)``): the same arithmetic as
    :class:`palimpsest.optim.LazyAdamW`'s torch-op path, in fp32, one pass per row."""
    kernels = triton_kernels()
    if rows.numel() == 0:
        return
    width = parameter.shape[1]
    grid = (rows.numel(), -(-width // _BLOCK_WIDTH))
    kernels.adamw_rows[grid](
        parameter, exp_avg, exp_avg_sq, rows.contiguous(), grad_rows.contiguous(), width,
        lr, beta1, beta2, eps, decay, step_size, root_correction,
        BLOCK_WIDTH=_BLOCK_WIDTH,
    )  # fmt: skip
