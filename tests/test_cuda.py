"""Every GPU path against its CPU reference: the memory layer (fp32 and bf16, torch ops and the Triton
kernels), sparse value updates with the lazy optimizer, a forgetting reset under fused AdamW, the
editor's statistics and one edit, and a Trainer step with a memory under bf16 autocast.

Marked ``cuda`` and skipped, with the reason, where no CUDA device is present (``benchmarks/gpu.sh``
runs them on a GPU machine). The bf16 autocast step also runs on the CPU, where the bug it guards
against (a read whose weights and values disagree in dtype) showed first.
"""

from __future__ import annotations

import copy

import pytest
import torch

from palimpsest import gpu_kernels
from palimpsest.memory import PKMConfig, ProductKeyMemory, add_product_key_memory, memory_param_groups
from palimpsest.models import build_model, build_smollm2_like
from palimpsest.optim import LazyAdamW

CUDA = torch.device("cuda")
needs_cuda = [
    pytest.mark.cuda,
    pytest.mark.skipif(
        not torch.cuda.is_available(), reason="no CUDA device here (benchmarks/gpu.sh runs these on a GPU)"
    ),
]


def on_cuda(test):
    """Mark ``test`` ``cuda`` and skip it, with the reason, where no CUDA device is present."""
    for mark in needs_cuda:
        test = mark(test)
    return test


#: The GPU implementations of the value read: torch ops always, the Triton kernels where installed.
KERNEL_CHOICES = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    gpu_kernels.triton_kernels() is None, reason="Triton is not installed"
))]  # fmt: skip


def _memory(**settings) -> ProductKeyMemory:
    torch.manual_seed(0)
    return ProductKeyMemory(64, n_keys=32, heads=2, k=8, k_dim=32, **settings)


def _step(memory: ProductKeyMemory, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    output = memory(hidden)
    ((output.float() - target) ** 2).mean().backward()
    return output


@on_cuda
@pytest.mark.parametrize("kernels", KERNEL_CHOICES)
def test_memory_forward_and_backward_on_the_gpu_match_the_cpu_in_fp32(kernels):
    cpu = _memory()
    gpu = copy.deepcopy(cpu).to(CUDA)
    gpu.gpu_kernels = kernels
    generator = torch.Generator().manual_seed(1)
    hidden, target = torch.randn(4, 33, 64, generator=generator), torch.randn(4, 33, 64, generator=generator)
    expected = _step(cpu, hidden, target)
    output = _step(gpu, hidden.to(CUDA), target.to(CUDA))
    assert output.device.type == "cuda"
    with torch.no_grad():
        queries = cpu.query_norm(cpu.query(hidden.reshape(-1, 64)))
        assert torch.equal(cpu.select(queries)[1], gpu.select(queries.to(CUDA))[1].cpu())  # same slots
    torch.testing.assert_close(output.cpu(), expected, rtol=1e-4, atol=1e-5)
    for (name, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        torch.testing.assert_close(b.grad.cpu(), a.grad, rtol=1e-3, atol=1e-5, msg=name)


@on_cuda
@pytest.mark.parametrize("kernels", KERNEL_CHOICES)
def test_memory_in_bf16_on_the_gpu_stays_within_bf16_of_fp32(kernels):
    exact = _memory().to(CUDA)
    half = copy.deepcopy(exact).to(torch.bfloat16)
    half.gpu_kernels = kernels
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(4, 33, 64, generator=generator).to(CUDA)
    exact.record_selection = half.record_selection = True
    with torch.no_grad():
        reference = exact(hidden).reshape(-1, 64)
        output = half(hidden.to(torch.bfloat16)).float().reshape(-1, 64)
    # bf16 scores break some near ties of the top-k the other way: nearly every slot is the same, and
    # where a token selected the same slots its output is fp32's within bf16's precision (2^-7)
    chosen = [memory.last_selection.indices.sort(-1).values.flatten(1) for memory in (exact, half)]
    overlap = sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(*chosen, strict=True))
    assert overlap / chosen[0].numel() > 0.95
    same = (chosen[0] == chosen[1]).all(-1)
    assert same.float().mean() > 0.5
    relative = (output[same] - reference[same]).norm() / reference[same].norm()
    assert relative < 2**-7, f"bf16 output differs from fp32 by {relative:.4f} (relative)"


@on_cuda
@pytest.mark.parametrize("kernels", KERNEL_CHOICES)
def test_sparse_value_updates_with_the_lazy_optimizer_match_the_cpu(kernels):
    cpu = _memory(sparse_updates=True)
    gpu = copy.deepcopy(cpu).to(CUDA)
    gpu.gpu_kernels = kernels
    optimizers = {
        "cpu": LazyAdamW(cpu.parameters(), lr=1e-2),
        "gpu": LazyAdamW(gpu.parameters(), lr=1e-2, gpu_kernels=kernels),
    }
    generator = torch.Generator().manual_seed(3)
    for _ in range(3):
        hidden, target = (
            torch.randn(2, 17, 64, generator=generator),
            torch.randn(2, 17, 64, generator=generator),
        )
        for name, memory, device in (("cpu", cpu, "cpu"), ("gpu", gpu, CUDA)):
            optimizers[name].zero_grad()
            _step(memory, hidden.to(device), target.to(device))
            assert memory.values.weight.grad.is_sparse
            optimizers[name].step()
    for (name, a), (_, b) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        assert b.device.type == "cuda"
        torch.testing.assert_close(b.detach().cpu(), a.detach(), rtol=1e-4, atol=1e-5, msg=name)


@on_cuda
def test_a_forgetting_reset_under_fused_adamw_resets_the_state_on_the_card(tokenizer):
    from palimpsest.forgetting import find_token_embeddings, forget_embeddings

    model = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0).to(CUDA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        ids = torch.randint(5, model.config.vocab_size, (4, 16), generator=generator).to(CUDA)
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    embedding = find_token_embeddings(model).weight
    others = {n: p.detach().clone() for n, p in model.named_parameters() if p is not embedding}
    forget_embeddings(model, optimizer, seed=7)
    state = optimizer.state[embedding]
    assert all(v.device.type == "cuda" for v in state.values() if torch.is_tensor(v))  # fused: on the card
    assert state["exp_avg"].count_nonzero() == 0 and state["exp_avg_sq"].count_nonzero() == 0
    assert float(state["step"]) == 0
    assert all(torch.equal(p, others[n]) for n, p in model.named_parameters() if p is not embedding)
    cpu_model = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    forget_embeddings(cpu_model, None, seed=7)
    assert torch.equal(embedding.detach().cpu(), find_token_embeddings(cpu_model).weight)  # the same draw
    ids = torch.randint(5, model.config.vocab_size, (4, 16), generator=generator).to(CUDA)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()  # fused AdamW goes on from the reset state
    assert torch.isfinite(embedding).all()


@on_cuda
def test_the_editors_statistics_and_one_edit_on_the_gpu_follow_the_cpu(tokenizer, tmp_path, monkeypatch):
    from palimpsest.data.facts import CAPITAL, Fact
    from palimpsest.editing import EditRequest
    from palimpsest.editing.memit import BatchEditor
    from palimpsest.editing.statistics import compute_statistics

    monkeypatch.setenv("PALIMPSEST_MODEL_CACHE", str(tmp_path / "models"))
    cpu = build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0)
    gpu = copy.deepcopy(cpu).to(CUDA)
    statistics = [compute_statistics(m, tokenizer, [2], tokens=600, block_size=32)[2] for m in (cpu, gpu)]
    torch.testing.assert_close(statistics[1].second_moment, statistics[0].second_moment, rtol=1e-4, atol=1e-7)
    requests = [EditRequest(Fact("France", CAPITAL, "Paris"), "Rome")]
    settings = {"layers": [1, 2], "statistics_tokens": 2000, "target_steps": 3, "context_passages": 1}
    updates = {}
    for name, model in (("cpu", cpu), ("gpu", gpu)):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        editor = BatchEditor(model, tokenizer, **settings)
        editor.apply(requests, measure=False)
        after = model.state_dict()
        written = {k for k in before if not torch.equal(before[k], after[k])}
        assert written == {f"model.layers.{b}.mlp.down_proj.weight" for b in (1, 2)}
        updates[name] = torch.cat([(after[k] - before[k]).flatten().cpu() for k in sorted(written)])
        editor.undo()
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), name
    assert next(gpu.parameters()).device.type == "cuda"
    cosine = torch.nn.functional.cosine_similarity(updates["gpu"], updates["cpu"], dim=0)
    assert cosine > 0.99, f"the GPU's edit points elsewhere than the CPU's (cosine {cosine:.4f})"


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_a_trainer_step_with_a_memory_under_bf16_autocast(tokenizer, tmp_path, device):
    from datasets import Dataset

    from palimpsest.training import TrainingConfig, train

    model = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[1], n_keys=8, heads=2, k=4, k_dim=16))
    memory = model.transformer.h[1].mlp.memory
    before = memory.values.weight.detach().clone()
    ids = torch.randint(5, len(tokenizer), (16, 16), generator=torch.Generator().manual_seed(0))
    result = train(
        model, tokenizer, Dataset.from_dict({"input_ids": ids.tolist()}),
        TrainingConfig(steps=2, batch_size=4, save_every=None, eval_every=None, log_every=1), tmp_path,
        objective="clm", param_groups=lambda m: memory_param_groups(m, lr=1e-2),
        training_arguments={"bf16": True, "use_cpu": device == "cpu"},
    )  # fmt: skip
    assert result.steps == 2
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in result.curve("loss"))
    assert memory.values.weight.device.type == device
    assert not torch.equal(memory.values.weight.detach().cpu(), before)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=needs_cuda)])
def test_a_memory_under_bf16_autocast_reads_its_fp32_values(device):
    """Autocast hands the memory a bf16 input (here from a projection) while its values stay fp32:
    the read's weights must follow the values' dtype, not the input's."""
    memory = _memory().to(device)
    projection = torch.nn.Linear(64, 64).to(device)
    hidden = torch.randn(2, 9, 64, device=device)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        projected = projection(hidden)
        assert projected.dtype == torch.bfloat16
        output = memory(projected)
    output.float().sum().backward()
    assert memory.values.weight.dtype == torch.float32
    assert memory.values.weight.grad.abs().sum() > 0
    assert output.dtype == torch.float32 and torch.isfinite(output).all()


@on_cuda
def test_a_memory_gate_fitted_on_the_card_opens_where_the_cpus_does():
    from palimpsest.memory.gate import MemoryGate, fit_gate

    generator = torch.Generator().manual_seed(4)
    positives = torch.randn(40, 32, generator=generator) + 3.0
    negatives = torch.randn(400, 32, generator=generator)
    gates = {}
    for device in ("cpu", CUDA):
        gate = MemoryGate(32, 16).to(device)
        fit = fit_gate(gate, positives, negatives, steps=200, batch_size=128, seed=0)
        assert fit.opened_positives == 1.0 and fit.closed_negatives > 0.95
        gates[str(device)] = gate
    probe = (
        torch.randn(200, 32, generator=generator) + torch.tensor([0.0, 3.0]).repeat_interleave(100)[:, None]
    )
    opened = {name: gate(probe.to(next(gate.parameters()).device)).cpu() for name, gate in gates.items()}
    assert (opened["cpu"] == opened["cuda"]).float().mean() > 0.98
