"""The memory's Triton kernels against torch ops: on the card where CUDA is present, else under
Triton's CPU interpreter (switched on by conftest.py). Skipped (with the reason) where Triton is
not installed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.nn import functional

from palimpsest import gpu_kernels
from palimpsest.memory import ProductKeyMemory
from palimpsest.optim import LazyAdamW

pytest.importorskip("triton", reason="Triton is not installed (pip install triton)")


DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
if DEVICE.type == "cpu" and not gpu_kernels.interpreting():
    pytest.skip("no CUDA device and Triton's interpreter is off (TRITON_INTERPRET)", allow_module_level=True)


def _reads(tokens=23, reads=15, slots=40, width=96, dtype=torch.float32, seed=0):
    """Small reads that repeat rows within a token and across tokens (the backward's atomics), a
    read count that is no power of two and a width that is no multiple of the kernels' block."""
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(slots, width, generator=generator).to(DEVICE, dtype)
    indices = torch.randint(0, slots, (tokens, reads), generator=generator).to(DEVICE)
    weights = torch.rand(tokens, reads, generator=generator).to(DEVICE, dtype)
    return values, indices, weights


def test_read_is_the_weighted_embedding_bag():
    values, indices, weights = _reads()
    expected = functional.embedding_bag(indices, values, per_sample_weights=weights, mode="sum")
    assert torch.allclose(gpu_kernels.value_read(values, indices, weights), expected, atol=1e-5)


def test_read_in_bf16_sums_in_fp32():
    values, indices, weights = _reads(dtype=torch.bfloat16)
    exact = functional.embedding_bag(indices, values.float(), per_sample_weights=weights.float(), mode="sum")
    output = gpu_kernels.value_read(values, indices, weights)
    assert output.dtype == torch.bfloat16
    # one conversion of the fp32 sum to bf16 (8 bits of mantissa: within one unit of the last
    # place, as Triton's interpreter truncates), not one rounding per addition
    assert torch.allclose(output.float(), exact, rtol=2**-7, atol=1e-2)


def test_backward_gives_autograds_gradients():
    values, indices, weights = _reads()
    grad_output = torch.randn(indices.shape[0], values.shape[1], generator=torch.Generator().manual_seed(1))
    grad_output = grad_output.to(DEVICE)
    values_ref, weights_ref = values.clone().requires_grad_(), weights.clone().requires_grad_()
    functional.embedding_bag(indices, values_ref, per_sample_weights=weights_ref, mode="sum").backward(
        grad_output
    )
    grad_weights, grad_values = torch.empty_like(weights), torch.zeros_like(values)
    gpu_kernels.value_read_backward(values, indices, weights, grad_output, grad_weights, grad_values)
    assert torch.allclose(grad_weights, weights_ref.grad, atol=1e-5)
    assert torch.allclose(grad_values, values_ref.grad, atol=1e-5)
    only_weights = torch.empty_like(weights)
    gpu_kernels.value_read_backward(values, indices, weights, grad_output, only_weights, None)
    assert torch.equal(only_weights, grad_weights)


def test_backward_refuses_a_gradient_table_it_cannot_sum_into():
    values, indices, weights = _reads(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="float32"):
        gpu_kernels.value_read_backward(
            values, indices, weights, torch.zeros(indices.shape[0], values.shape[1], device=DEVICE), None,
            torch.zeros_like(values),
        )  # fmt: skip


def test_memory_layer_with_the_kernels_matches_torch_ops():
    torch.manual_seed(0)
    reference = ProductKeyMemory(32, n_keys=8, heads=2, k=4, k_dim=16, gpu_kernels="torch").to(DEVICE)
    kernels = copy.deepcopy(reference)
    kernels.gpu_kernels = "triton"
    hidden = torch.randn(3, 7, 32, device=DEVICE)
    target = torch.randn(3, 7, 32, device=DEVICE)
    for memory in (reference, kernels):
        ((memory(hidden) - target) ** 2).sum().backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), kernels.named_parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-4), name
    with torch.no_grad():
        assert torch.allclose(reference(hidden), kernels(hidden), atol=1e-5)


def test_lazy_row_update_in_bf16_follows_the_fp32_update():
    generator = torch.Generator().manual_seed(0)
    parameter = torch.randn(50, 72, generator=generator).to(DEVICE, torch.bfloat16).float()  # one start
    rows = torch.tensor([3, 7, 8, 20, 49], device=DEVICE)
    grad_rows = torch.randn(5, 72, generator=generator).to(DEVICE)
    # steps far above bf16's resolution (a step below half a unit of the last place is lost in bf16
    # whatever computes it)
    settings = {"lr": 0.1, "betas": (0.9, 0.98), "eps": 1e-6, "weight_decay": 0.1}
    updated = {}
    for choice, dtype in (("torch", torch.float32), ("torch", torch.bfloat16), ("triton", torch.bfloat16)):
        weight = torch.nn.Parameter(parameter.clone().to(dtype))  # bf16: no compiled CPU loop
        optimizer = LazyAdamW([weight], gpu_kernels=choice, **settings)
        for _ in range(3):
            weight.grad = torch.sparse_coo_tensor(
                rows[None], grad_rows.to(dtype), weight.shape, check_invariants=True
            )
            optimizer.step()
        updated[choice, dtype] = weight.detach().float()
    exact = updated["torch", torch.float32]
    kernel = updated["triton", torch.bfloat16]
    untouched = torch.ones(50, dtype=torch.bool, device=DEVICE)
    untouched[rows] = False
    assert torch.equal(kernel[untouched], parameter[untouched])
    assert not torch.equal(kernel[rows], parameter[rows])
    # within one unit of bf16's last place per step of the fp32 update, as torch ops in bf16 are
    for bf16 in (kernel, updated["torch", torch.bfloat16]):
        assert torch.allclose(bf16, exact, rtol=3 * 2**-7, atol=1e-2)


def test_lazy_row_kernel_in_fp32_matches_the_torch_ops_arithmetic():
    generator = torch.Generator().manual_seed(2)
    weight = torch.randn(30, 64, generator=generator).to(DEVICE)
    first, second = torch.zeros_like(weight), torch.zeros_like(weight)
    rows = torch.tensor([1, 4, 29], device=DEVICE)
    grad_rows = torch.randn(3, 64, generator=generator).to(DEVICE)
    lr, beta1, beta2, eps, decay = 1e-2, 0.9, 0.98, 1e-6, 0.1
    expected = weight.clone()
    expected_first = (1 - beta1) * grad_rows
    expected_second = (1 - beta2) * grad_rows**2
    step_size, root = lr / (1 - beta1), (1 - beta2) ** 0.5
    expected[rows] = expected[rows] * (1 - lr * decay) - step_size * expected_first / (
        expected_second.sqrt() / root + eps
    )
    gpu_kernels.lazy_adamw_rows(
        weight, first, second, rows, grad_rows, lr=lr, beta1=beta1, beta2=beta2, eps=eps, decay=decay,
        step_size=step_size, root_correction=root,
    )  # fmt: skip
    assert torch.allclose(weight, expected, atol=1e-6)
    assert torch.allclose(first[rows], expected_first) and torch.allclose(second[rows], expected_second)
    assert first.count_nonzero() == first[rows].count_nonzero()


def test_a_choice_outside_the_known_ones_is_refused():
    with pytest.raises(ValueError, match="gpu_kernels"):
        ProductKeyMemory(16, n_keys=4, heads=1, k=2, k_dim=8, gpu_kernels="cuda")
    with pytest.raises(ValueError, match="gpu_kernels"):
        LazyAdamW([torch.nn.Parameter(torch.zeros(2))], gpu_kernels="fast")


def test_auto_and_torch_keep_torch_ops_and_other_dtypes_never_take_the_kernels():
    table = torch.zeros(4, 4, device=DEVICE)
    assert gpu_kernels.use_triton(table, "triton")
    assert not gpu_kernels.use_triton(table, "torch")
    assert gpu_kernels.use_triton(table, "auto") == gpu_kernels.AUTO_TAKES_TRITON
    assert not gpu_kernels.use_triton(table.double(), "triton")
