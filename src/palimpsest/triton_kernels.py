"""The Triton source of the memory's GPU kernels (:mod:`palimpsest.gpu_kernels` launches them).

Imported only where Triton is installed. The kernels sit at module level so that Triton's CPU
interpreter (``TRITON_INTERPRET=1``, how the tests check them without a GPU) can run them.
"""

import triton
import triton.language as tl


@triton.jit
def value_read(
    values, indices, weights, output, reads, width,
    BLOCK_READS: tl.constexpr, BLOCK_WIDTH: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    columns = tl.program_id(1) * BLOCK_WIDTH + tl.arange(0, BLOCK_WIDTH)
    read = tl.arange(0, BLOCK_READS)
    read_ok = read < reads
    column_ok = columns < width
    rows = tl.load(indices + token * reads + read, mask=read_ok, other=0).to(tl.int64)
    scale = tl.load(weights + token * reads + read, mask=read_ok, other=0.0).to(tl.float32)
    tile = tl.load(
        values + rows[:, None] * width + columns[None, :],
        mask=read_ok[:, None] & column_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    total = tl.sum(tile * scale[:, None], axis=0)
    tl.store(output + token * width + columns, total.to(output.dtype.element_ty), mask=column_ok)


# The width is a compile-time constant here: the loop over it is unrolled (and Triton's interpreter
# before 3.9 cannot loop to a run-time bound).
@triton.jit
def value_read_backward(
    values, indices, weights, grad_output, grad_weights, grad_values, reads, WIDTH: tl.constexpr,
    WANT_WEIGHTS: tl.constexpr, WANT_VALUES: tl.constexpr,
    BLOCK_READS: tl.constexpr, BLOCK_WIDTH: tl.constexpr,
):  # fmt: skip
    token = tl.program_id(0)
    read = tl.arange(0, BLOCK_READS)
    read_ok = read < reads
    rows = tl.load(indices + token * reads + read, mask=read_ok, other=0).to(tl.int64)
    scale = tl.load(weights + token * reads + read, mask=read_ok, other=0.0).to(tl.float32)
    dots = tl.zeros((BLOCK_READS,), dtype=tl.float32)
    for start in range(0, WIDTH, BLOCK_WIDTH):
        columns = start + tl.arange(0, BLOCK_WIDTH)
        column_ok = columns < WIDTH
        both_ok = read_ok[:, None] & column_ok[None, :]
        gradient = tl.load(grad_output + token * WIDTH + columns, mask=column_ok, other=0.0).to(tl.float32)
        if WANT_WEIGHTS:
            tile = tl.load(values + rows[:, None] * WIDTH + columns[None, :], mask=both_ok, other=0.0).to(
                tl.float32
            )
            dots += tl.sum(tile * gradient[None, :], axis=1)
        if WANT_VALUES:
            tl.atomic_add(
                grad_values + rows[:, None] * WIDTH + columns[None, :],
                scale[:, None] * gradient[None, :],
                mask=both_ok,
            )
    if WANT_WEIGHTS:
        tl.store(grad_weights + token * reads + read, dots.to(grad_weights.dtype.element_ty), mask=read_ok)


@triton.jit
def lazy_adamw_rows(
    parameter, exp_avg, exp_avg_sq, rows, grad_rows, width,
    lr, beta1, beta2, eps, decay, step_size, root_correction,
    BLOCK_WIDTH: tl.constexpr,
):  # fmt: skip
    entry = tl.program_id(0)
    columns = tl.program_id(1) * BLOCK_WIDTH + tl.arange(0, BLOCK_WIDTH)
    ok = columns < width
    row = tl.load(rows + entry).to(tl.int64)
    at = row * width + columns
    gradient = tl.load(grad_rows + entry * width + columns, mask=ok, other=0.0).to(tl.float32)
    weight = tl.load(parameter + at, mask=ok, other=0.0).to(tl.float32)
    first = tl.load(exp_avg + at, mask=ok, other=0.0).to(tl.float32)
    second = tl.load(exp_avg_sq + at, mask=ok, other=0.0).to(tl.float32)
    weight = weight * (1.0 - lr * decay)
    first = first + (gradient - first) * (1.0 - beta1)
    second = second * beta2 + gradient * gradient * (1.0 - beta2)
    weight = weight - step_size * first / (tl.sqrt(second) / root_correction + eps)
    tl.store(parameter + at, weight.to(parameter.dtype.element_ty), mask=ok)
    tl.store(exp_avg + at, first.to(exp_avg.dtype.element_ty), mask=ok)
    tl.store(exp_avg_sq + at, second.to(exp_avg_sq.dtype.element_ty), mask=ok)
