"""Sparse memory-value updates: the sparse gradient, lazy AdamW, clipping, and the Trainer path."""

import copy

import pytest
import torch

from palimpsest.memory import PKMConfig, ProductKeyMemory, add_product_key_memory, memory_param_groups
from palimpsest.models import build_model
from palimpsest.optim import LazyAdamW, clip_grad_norm_


def _pair(**kwargs):
    torch.manual_seed(0)
    dense = ProductKeyMemory(16, n_keys=12, heads=2, k=4, k_dim=8, **kwargs)
    sparse = copy.deepcopy(dense)
    sparse.sparse_updates = True
    return dense, sparse


def test_sparse_gradient_equals_the_dense_one_on_the_rows_read():
    dense, sparse = _pair()
    hidden = torch.randn(3, 5, 16)
    target = torch.randn(3, 5, 16)
    for memory in (dense, sparse):
        ((memory(hidden) - target) ** 2).sum().backward()
    grad = sparse.values.weight.grad
    assert grad.is_sparse
    assert torch.allclose(grad.to_dense(), dense.values.weight.grad, atol=1e-6)
    rows = grad.coalesce().indices()[0]
    assert rows.numel() < sparse.size  # only rows that were read are present
    for name in ("query.weight", "keys"):
        a = dict(dense.named_parameters())[name].grad
        b = dict(sparse.named_parameters())[name].grad
        assert torch.allclose(a, b, atol=1e-6), name


def test_sparse_and_dense_paths_agree_on_the_first_step():
    dense, sparse = _pair()
    hidden = torch.randn(4, 6, 16)
    optimizers = [LazyAdamW(memory.parameters(), lr=1e-2, weight_decay=0.0) for memory in (dense, sparse)]
    for memory, optimizer in zip((dense, sparse), optimizers, strict=True):
        memory(hidden).pow(2).sum().backward()
        optimizer.step()
    for (name, a), (_, b) in zip(dense.named_parameters(), sparse.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


def test_lazy_adamw_is_adamw_for_dense_gradients():
    torch.manual_seed(1)
    a = torch.nn.Linear(6, 3)
    b = copy.deepcopy(a)
    lazy = LazyAdamW(a.parameters(), lr=1e-2, weight_decay=0.1)
    plain = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        x = torch.randn(5, 6)
        for model, optimizer in ((a, lazy), (b, plain)):
            optimizer.zero_grad()
            model(x).pow(2).sum().backward()
            optimizer.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_lazy_update_leaves_unread_rows_and_their_state_alone():
    _, sparse = _pair()
    optimizer = LazyAdamW(sparse.parameters(), lr=1e-2)
    sparse.record_selection = True
    for step in range(2):
        before = sparse.values.weight.detach().clone()
        optimizer.zero_grad()
        sparse(torch.randn(1, 2, 16)).sum().backward()
        read = set(sparse.last_selection.indices.flatten().tolist())
        optimizer.step()
        changed = (sparse.values.weight != before).any(dim=1).nonzero().flatten().tolist()
        assert set(changed) <= read and changed, step
        moment = optimizer.state[sparse.values.weight]["exp_avg"]
        assert set(moment.abs().sum(1).nonzero().flatten().tolist()) >= set(changed)


def test_compiled_lazy_update_matches_the_torch_ops_update(monkeypatch):
    """The compiled row update (one pass per row read) gives the chunked torch-op update's weights and
    moments, step after step, with weight decay."""
    from palimpsest import optim
    from palimpsest.kernels import cpu_kernels

    if cpu_kernels() is None:
        pytest.skip("the compiled memory kernels cannot be built on this machine")
    _, compiled = _pair()
    reference = copy.deepcopy(compiled)
    batches = [torch.randn(2, 4, 16) for _ in range(3)]
    results = []
    for memory, path in ((compiled, "compiled"), (reference, "torch ops")):
        if path == "torch ops":
            monkeypatch.setattr(optim, "_compiled_rows", lambda *args: None)
            monkeypatch.setattr(LazyAdamW, "rows_per_chunk", 5)  # several chunks
        optimizer = LazyAdamW(memory.parameters(), lr=1e-2, weight_decay=0.1)
        for hidden in batches:
            optimizer.zero_grad()
            memory(hidden).pow(2).sum().backward()
            optimizer.step()
        results.append((memory.values.weight.detach(), optimizer.state[memory.values.weight]))
    (weights, state), (expected, expected_state) = results
    assert not torch.equal(weights, _pair()[1].values.weight)  # the steps moved the values
    assert torch.allclose(weights, expected, atol=1e-6)
    for name in ("exp_avg", "exp_avg_sq"):
        assert torch.allclose(state[name], expected_state[name], atol=1e-7), name


def test_clipping_counts_sparse_gradients():
    dense, sparse = _pair()
    hidden = torch.randn(2, 3, 16)
    for memory in (dense, sparse):
        memory(hidden).pow(2).sum().backward()
    expected = torch.nn.utils.clip_grad_norm_(dense.parameters(), 0.01)  # torch's, dense gradients
    assert torch.allclose(clip_grad_norm_(sparse.parameters(), 0.01), expected, atol=1e-4)
    clipped = [p.grad.to_dense() if p.grad.is_sparse else p.grad for p in sparse.parameters()]
    assert float(torch.nn.utils.get_total_norm(clipped)) == pytest.approx(0.01, rel=1e-3)


def test_trainer_trains_with_sparse_value_updates(tokenizer, tmp_path):
    from datasets import Dataset

    from palimpsest.training import TrainingConfig, train

    model = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    add_product_key_memory(
        model, PKMConfig(layers=[1], n_keys=8, heads=2, k=4, k_dim=16, sparse_updates=True)
    )
    before = next(iter(model.transformer.h[1].mlp.memory.values.parameters())).detach().clone()
    ids = torch.randint(5, len(tokenizer), (32, 16), generator=torch.Generator().manual_seed(0))
    blocks = Dataset.from_dict({"input_ids": ids.tolist()})
    result = train(
        model, tokenizer, blocks, TrainingConfig(steps=3, batch_size=4, save_every=100, log_every=1),
        tmp_path, objective="clm", param_groups=lambda m: memory_param_groups(m, lr=1e-2),
    )  # fmt: skip
    assert result.steps == 3
    assert all(torch.isfinite(torch.tensor(v)) for _, v in result.curve("grad_norm"))
    after = model.transformer.h[1].mlp.memory.values.weight
    assert not torch.equal(before, after)


@pytest.mark.parametrize("path", ["compiled", "torch ops"])
def test_auto_is_dense_until_an_optimizer_accepts_sparse_gradients(monkeypatch, path):
    """Then sparse: for every batch with the compiled loops, for small batches only with torch ops."""
    from palimpsest.kernels import cpu_kernels
    from palimpsest.memory import autograd as autograd_module
    from palimpsest.memory import layer as layer_module

    if path == "compiled" and cpu_kernels() is None:
        pytest.skip("the compiled memory kernels cannot be built on this machine")
    if path == "torch ops":
        monkeypatch.setattr(layer_module, "cpu_kernels", lambda: None)
        monkeypatch.setattr(autograd_module, "cpu_kernels", lambda: None)
    torch.manual_seed(0)
    memory = ProductKeyMemory(16, n_keys=64, heads=2, k=4, k_dim=8, sparse_updates="auto")
    few, many = torch.randn(1, 8, 16), torch.randn(4, 512, 16)  # 64 reads of 4,096 slots; 16,384
    memory(few).sum().backward()
    assert not memory.values.weight.grad.is_sparse  # any optimizer may be on the other side
    memory.allow_sparse_gradients(True)
    memory.values.weight.grad = None
    memory(few).sum().backward()
    assert memory.values.weight.grad.is_sparse
    memory.values.weight.grad = None
    memory(many).sum().backward()
    # reads most rows: with torch ops the dense path is faster, with the compiled loops not
    assert memory.values.weight.grad.is_sparse == (path == "compiled")


def test_palimpsest_trainer_lets_auto_memories_go_sparse(tokenizer, tmp_path):
    from datasets import Dataset

    from palimpsest.memory import memories
    from palimpsest.training import TrainingConfig, train

    model = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[1], n_keys=64, heads=2, k=4, k_dim=16))
    (memory,) = memories(model).values()
    assert memory.sparse_updates == "auto" and not memory.sparse_gradients_allowed
    ids = torch.randint(5, len(tokenizer), (8, 16), generator=torch.Generator().manual_seed(0))
    train(
        model, tokenizer, Dataset.from_dict({"input_ids": ids.tolist()}),
        TrainingConfig(steps=1, batch_size=4, save_every=100), tmp_path, objective="clm",
    )  # fmt: skip
    assert memory.sparse_gradients_allowed


def test_sparse_updates_setting_is_checked():
    from palimpsest.errors import ConfigError

    with pytest.raises(ConfigError, match="sparse_updates"):
        PKMConfig(sparse_updates="sometimes")
    with pytest.raises(ValueError, match="sparse_updates"):
        ProductKeyMemory(16, n_keys=8, heads=1, k=2, k_dim=8, sparse_updates="sometimes")


def test_sparse_gradient_modules_are_told_through_the_spines_interface():
    from torch import nn

    from palimpsest.optim import SparseGradientModule, allow_sparse_gradients

    class OtherSparseModule(nn.Module):  # a third party's module: no memory, same interface
        def __init__(self):
            super().__init__()
            self.allowed = None

        def allow_sparse_gradients(self, allowed: bool) -> None:
            self.allowed = allowed

    memory = ProductKeyMemory(16, n_keys=8, heads=1, k=2, k_dim=8, sparse_updates="auto")
    other = OtherSparseModule()
    model = nn.Sequential(nn.Linear(16, 16), memory, other)
    assert isinstance(memory, SparseGradientModule) and not isinstance(model[0], SparseGradientModule)
    assert allow_sparse_gradients(model, True) == 2
    assert memory.sparse_gradients_allowed and other.allowed is True
    allow_sparse_gradients(model, False)
    assert not memory.sparse_gradients_allowed and other.allowed is False
