"""The memory's gate: closed means exactly the model without the memory; fitted, it opens for what
it was taught and nothing else; it travels with the saved model."""

import pytest
import torch

from palimpsest.errors import ConfigError
from palimpsest.memory import PKMConfig, add_product_key_memory, load_merged, memories, save_merged
from palimpsest.memory.gate import MemoryGate, fit_gate
from palimpsest.models import build_model

SMALL = {"n_keys": 8, "heads": 2, "k": 4, "k_dim": 16, "seed": 0}


def _model(tokenizer, **memory):
    model = build_model("gpt2", "micro", tokenizer, max_positions=32, dropout=0.0, seed=0).eval()
    if memory:
        add_product_key_memory(model, PKMConfig(layers=[1], **SMALL, **memory))
    return model


def _ids(tokenizer):
    return torch.randint(5, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))


def test_an_unfitted_gate_leaves_the_model_bit_identical(tokenizer):
    ids = _ids(tokenizer)
    base = _model(tokenizer)(input_ids=ids).logits
    ungated = _model(tokenizer, gate_hidden=None)(input_ids=ids).logits
    gated = _model(tokenizer, gate_hidden=16)(input_ids=ids).logits  # values are random, not zero
    assert not torch.equal(ungated, base)  # the memory does change the model without a gate
    assert torch.equal(gated, base)


def _clusters(dim: int, count: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    centre = torch.randn(dim, generator=generator) * 3
    return centre + torch.randn(count, dim, generator=generator), -centre + torch.randn(
        count, dim, generator=generator
    )


def test_a_fitted_gate_opens_for_what_it_was_taught_and_reads_exact_zeros_elsewhere():
    from palimpsest.memory import ProductKeyMemory

    memory = ProductKeyMemory(32, n_keys=8, heads=2, k=4, k_dim=16, gate_hidden=16).eval()
    taught, other = _clusters(32, 64, seed=0)
    fit = fit_gate(memory.gate, taught, other, steps=300)
    assert fit.opened_positives == 1.0 and fit.closed_negatives == 1.0
    unseen_taught, unseen_other = _clusters(32, 64, seed=0)  # the same clusters, fresh draws
    unseen_taught, unseen_other = unseen_taught + 0.1, unseen_other + 0.1
    assert memory.gate(unseen_taught).float().mean() > 0.95 and not memory.gate(unseen_other).any()
    inputs = torch.cat([unseen_taught[:4], unseen_other[:4]])
    gated = memory(inputs)
    gate, memory.gate = memory.gate, None
    ungated = memory(inputs)
    memory.gate = gate
    assert torch.equal(gated[:4], ungated[:4])  # open: the memory's read, unchanged
    assert torch.equal(gated[4:], torch.zeros_like(gated[4:])) and ungated[4:].abs().sum() > 0


def test_a_codebook_opens_the_gate_only_near_a_key_where_the_scorer_opens():
    gate = MemoryGate(32, 16, keys=8)
    taught, other = _clusters(32, 64, seed=0)
    fit_gate(gate, taught, other, steps=300)
    near_cluster = taught[:8] + 0.05  # the scorer opens for all of the taught cluster...
    assert gate(near_cluster).all() and gate(taught[40:]).all()
    gate.set_keys(taught[:3], threshold=0.99)  # ...the codebook only near its three keys
    assert int(gate.key_count) == 3
    assert gate(taught[:3]).all() and gate(near_cluster[:3]).all()
    similarity = gate.key_similarity(taught[40:])
    assert torch.equal(gate(taught[40:]), similarity >= 0.99) and not gate(taught[40:]).all()
    assert not gate(other).any()  # where the scorer is closed a key cannot open it
    directions = (taught[:3] - gate.centre) / (taught[:3] - gate.centre).norm(dim=-1, keepdim=True)
    torch.testing.assert_close(gate.keys[:3], directions)
    assert not gate.keys[3:].any()
    with pytest.raises(ValueError, match="room"):
        gate.set_keys(taught[:9], threshold=0.9)
    with pytest.raises(ValueError, match="without room"):
        MemoryGate(32, 16).set_keys(taught[:1], threshold=0.9)
    gate.close()
    assert int(gate.key_count) == 0 and not gate.fitted and not gate(taught).any()


def test_a_codebook_of_another_blocks_input_opens_by_that_input_alone():
    gate = MemoryGate(32, 16, keys=8, separate_keys=True)
    taught, other = _clusters(32, 64, seed=0)
    fit_gate(gate, taught, other, steps=300)
    key_taught, key_other = _clusters(32, 64, seed=1)  # the key block's inputs at the same rows
    gate.set_keys(key_taught[:3], threshold=0.99, key_centre=key_other.mean(dim=0))
    assert torch.equal(gate.key_centre, key_other.mean(dim=0))
    assert gate(taught[:3], key_taught[:3]).all()
    assert not gate(taught[:3], key_other[:3]).any()  # the memory's inputs as taught, the key block's far
    assert not gate(other[:3], key_taught[:3]).any()  # and the scorer still decides too
    with pytest.raises(ValueError, match="key_hidden"):
        gate(taught[:3])
    with pytest.raises(ValueError, match="key_centre"):
        gate.set_keys(key_taught[:3], threshold=0.99)
    with pytest.raises(ValueError, match="key_centre"):
        MemoryGate(32, 16, keys=8).set_keys(taught[:3], threshold=0.99, key_centre=taught.mean(dim=0))
    with pytest.raises(ValueError, match="room for keys"):
        MemoryGate(32, 16, separate_keys=True)
    gate.close()
    assert not gate.key_centre.any() and int(gate.key_count) == 0


def test_start_keys_open_the_gate_for_the_same_first_token_and_no_other():
    gate = MemoryGate(32, 16, keys=8)
    taught, other = _clusters(32, 64, seed=0)
    fit_gate(gate, taught, other, steps=300)
    generator = torch.Generator().manual_seed(3)
    # first-position inputs: one large direction every token shares (the attention sink's), and a
    # small part of the token's own; no ordinary key is near them
    sink = taught.mean(dim=0) * 50
    tokens = torch.randn(12, 32, generator=generator)
    first = sink + tokens
    centre = first.mean(dim=0)
    assert not (gate.key_similarity(first) >= 0.9).any()  # (no ordinary keys yet: -1 everywhere)
    gate.set_keys(taught[:3], 0.99, start=first[[0, 0, 1]], start_centre=centre)  # token 0 twice
    assert int(gate.start_key_count) == 2  # each token once
    again = first[:2] * (1 + 1e-6)  # the same tokens read in another prompt: float rounding apart
    assert gate(again).all() and not gate(first[2:]).any()
    assert not (gate.start_similarity(taught[40:]) >= 0.995).any()  # a later position matches none
    with pytest.raises(ValueError, match="start_centre"):
        gate.set_keys(taught[:3], 0.99, start=first[:1])
    with pytest.raises(ValueError, match="start keys do not fit"):
        gate.set_keys(taught[:3], 0.99, start=first[:3], start_centre=centre)  # room: 8 keys // 4
    gate.close()
    assert int(gate.start_key_count) == 0 and not gate(again).any()


def test_a_gate_without_room_for_keys_keeps_the_layout_of_older_gates():
    assert {name for name, _ in MemoryGate(8, 4).named_buffers()} == {"centre", "scale", "fitted_flag"}
    with pytest.raises(ConfigError, match="gate_keys"):
        PKMConfig(gate_keys=16)  # a codebook needs a gate
    with pytest.raises(ConfigError, match="gate_keys"):
        PKMConfig(gate_hidden=8, gate_keys=-1)


def test_no_gradient_reaches_the_values_through_a_closed_gate():
    from palimpsest.memory import ProductKeyMemory

    memory = ProductKeyMemory(32, n_keys=8, heads=2, k=4, k_dim=16, gate_hidden=16)
    taught, other = _clusters(32, 32, seed=1)
    fit_gate(memory.gate, taught, other, steps=300)
    memory(other).sum().backward()
    assert memory.values.weight.grad is None or not memory.values.weight.grad.any()
    memory.zero_grad()
    memory(taught).sum().backward()
    assert memory.values.weight.grad.any()


def test_a_fitted_gate_is_saved_and_loaded_with_the_model(tokenizer, tmp_path):
    model = _model(tokenizer, gate_hidden=16)
    (memory,) = memories(model).values()
    dim = memory.dim
    taught, other = _clusters(dim, 32, seed=2)
    fit_gate(memory.gate, taught, other, steps=100)
    save_merged(model, tokenizer, tmp_path)
    loaded = load_merged(tmp_path).eval()
    (again,) = memories(loaded).values()
    assert isinstance(again.gate, MemoryGate)
    for name, tensor in memory.gate.state_dict().items():
        assert torch.equal(tensor, again.gate.state_dict()[name]), name
    ids = _ids(tokenizer)
    assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)


@pytest.mark.parametrize(
    "settings", [{"gate_hidden": 0}, {"gate_hidden": True}, {"gate_hidden": 8, "mode": "replace"}]
)
def test_gate_settings_that_cannot_work_are_refused(settings):
    with pytest.raises(ConfigError, match="gate_hidden"):
        PKMConfig(**settings)


def test_a_gate_needs_both_sides_to_fit():
    with pytest.raises(ValueError, match="positives and negatives"):
        fit_gate(MemoryGate(8, 4), torch.zeros(0, 8), torch.ones(3, 8))


def test_usage_counts_only_the_tokens_a_gate_lets_read(tokenizer):
    from palimpsest.memory import memory_usage

    model = _model(tokenizer, gate_hidden=16)
    batches = [{"input_ids": _ids(tokenizer), "attention_mask": torch.ones(2, 12, dtype=torch.long)}]
    closed = memory_usage(model, batches)
    (usage,) = closed.values()
    assert usage["used"] == 0  # a closed gate: no token read any slot
    (memory,) = memories(model).values()
    memory.gate = None
    (ungated,) = memory_usage(model, batches).values()
    assert ungated["used"] > 0


def test_fitting_opens_a_gate_and_closing_it_gives_back_the_base_model(tokenizer):
    model = _model(tokenizer, gate_hidden=16)
    ids = _ids(tokenizer)
    base = model(input_ids=ids).logits
    (memory,) = memories(model).values()
    assert not memory.gate.fitted
    taught, other = _clusters(memory.dim, 16, seed=3)
    fit_gate(memory.gate, taught, other, steps=50)
    assert memory.gate.fitted and memory.gate(taught).any()
    memory.gate.close()
    assert not memory.gate.fitted and not memory.gate(torch.cat([taught, other])).any()
    assert torch.equal(model(input_ids=ids).logits, base)
