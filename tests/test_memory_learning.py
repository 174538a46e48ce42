"""Writing facts into a memory: the model unchanged at first, only the memory moves, sparse
fine-tuning moves only the slots it chose."""

import json

import pytest
import torch

from palimpsest.data.facts import CAPITAL, Fact
from palimpsest.errors import ConfigError, ModelError
from palimpsest.memory import PKMConfig, add_product_key_memory, memories
from palimpsest.memory.learning import MemoryLearning, fact_examples, learn_facts, tfidf_top_slots
from palimpsest.models import build_smollm2_like
from palimpsest.training import TrainingConfig

SMALL = {"n_keys": 8, "heads": 2, "k": 4, "k_dim": 16}
FACTS = [Fact("France", CAPITAL, "Paris"), Fact("Peru", CAPITAL, "Lima"), Fact("Japan", CAPITAL, "Tokyo")]
NEW = ["Rome", "Oslo", "Cairo"]


def _model(tokenizer):
    model = build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0).eval()
    add_product_key_memory(model, PKMConfig(layers=[1, 2], zero_values=True, seed=0, **SMALL))
    return model


def test_a_zero_value_memory_leaves_a_real_structured_model_bit_equal(tokenizer):
    model = build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0).eval()
    ids = torch.tensor([tokenizer("The capital of France is Paris.")["input_ids"]])
    before = model(input_ids=ids).logits
    add_product_key_memory(model, PKMConfig(layers=[1, 2], zero_values=True, seed=0, **SMALL))
    assert torch.equal(model(input_ids=ids).logits, before)


def _snapshot(model):
    return {name: parameter.detach().clone() for name, parameter in model.named_parameters()}


@pytest.mark.parametrize("trainable", ["values", "memory"])
def test_memory_only_training_leaves_every_other_weight_bitwise(tmp_path, tokenizer, trainable):
    model = _model(tokenizer)
    before = _snapshot(model)
    training = TrainingConfig(steps=6, batch_size=3, learning_rate=1e-2, eval_every=None, save_every=None)
    learned = learn_facts(
        model, tokenizer, FACTS, MemoryLearning(trainable=trainable, training=training), tmp_path, answers=NEW
    )
    after = _snapshot(model)
    moved = {name for name in before if not torch.equal(before[name], after[name])}
    assert moved and all(".memory." in name for name in moved)
    assert set(learned.trained) >= moved and learned.examples == 3
    if trainable == "values":
        assert all(name.endswith("values.weight") for name in learned.trained)
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again afterwards


def test_learning_facts_leaves_weights_the_user_froze_frozen(tmp_path, tokenizer):
    model = _model(tokenizer)
    frozen = model.get_input_embeddings().weight
    frozen.requires_grad_(False)
    training = TrainingConfig(steps=2, batch_size=3, learning_rate=1e-2, eval_every=None, save_every=None)
    learn_facts(model, tokenizer, FACTS, MemoryLearning(training=training), tmp_path, answers=NEW)
    assert not frozen.requires_grad
    assert all(p.requires_grad for p in model.parameters() if p is not frozen)


def test_sparse_fine_tuning_moves_only_the_slots_it_chose(tmp_path, tokenizer, monkeypatch):
    import palimpsest.memory.learning as learning

    monkeypatch.setattr(learning, "background_batches", lambda tok, settings, model=None: [
        {"input_ids": torch.tensor([tok("History of the world in one line.")["input_ids"]])}
    ])  # fmt: skip
    model = _model(tokenizer)
    before = {name: layer.values.weight.detach().clone() for name, layer in memories(model).items()}
    training = TrainingConfig(steps=4, batch_size=3, learning_rate=1e-2, eval_every=None, save_every=None)
    chosen = []

    class Spy(learning.SparseSlotUpdates):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            chosen.append(self)

    monkeypatch.setattr(learning, "SparseSlotUpdates", Spy)
    learned = learn_facts(
        model, tokenizer, FACTS, MemoryLearning(sparse_top_t=2, training=training), tmp_path, answers=NEW
    )
    (spy,) = chosen
    for name, layer in memories(model).items():
        changed = (layer.values.weight.detach() != before[name]).any(dim=1)
        assert changed.any()
        assert not (changed & ~spy.updated[name]).any()  # nothing outside the chosen slots moved
        assert int(spy.updated[name].sum()) <= 2 * learned.steps
        assert learned.slots_updated[name] == int(spy.updated[name].sum())
        assert layer.sparse_updates == "auto"  # restored (the default)


def test_tfidf_prefers_slots_background_text_rarely_reads():
    counts = torch.tensor([5, 5, 0, 1])
    frequency = torch.tensor([10, 0, 0, 0])  # slot 0 is read by every background batch
    assert tfidf_top_slots(counts, frequency, documents=10, top_t=1).tolist() == [1]
    assert sorted(tfidf_top_slots(counts, frequency, documents=10, top_t=5).tolist()) == [0, 1, 3]


def test_learning_needs_a_memory_and_a_sane_setting(tmp_path, tokenizer):
    model = build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0)
    training = TrainingConfig(steps=1, batch_size=1, eval_every=None, save_every=None)
    with pytest.raises(ModelError, match="no product-key memory"):
        learn_facts(model, tokenizer, FACTS, MemoryLearning(training=training), tmp_path)
    with pytest.raises(ConfigError, match="exceeds the slots"):
        settings = MemoryLearning(sparse_top_t=1000, training=training)
        learn_facts(_model(tokenizer), tokenizer, FACTS, settings, tmp_path)
    with pytest.raises(ConfigError, match="trainable"):
        MemoryLearning(trainable="everything")


def test_fact_examples_put_the_loss_on_the_answer_only(tokenizer):
    examples = fact_examples(tokenizer, FACTS[:1], answers=["Rome"], causal=True)
    labels = [t for t in examples[0]["labels"] if t != -100]
    assert labels == tokenizer(" Rome", add_special_tokens=False)["input_ids"]


def test_memory_layers_by_relative_depth(tokenizer):
    model = build_smollm2_like(tokenizer, hidden=24, layers=5, seed=0)
    add_product_key_memory(model, PKMConfig(layers=[0.5, 1], zero_values=True, seed=0, **SMALL))
    assert sorted(memories(model)) == ["model.layers.1.mlp.memory", "model.layers.2.mlp.memory"]
    with pytest.raises(ConfigError, match="one block twice"):
        add_product_key_memory(
            build_smollm2_like(tokenizer, hidden=24, layers=5, seed=0),
            PKMConfig(layers=[0.0, 0], zero_values=True, **SMALL),
        )


def test_memory_learn_from_the_command_line(tmp_path, tokenizer):
    from cli_helpers import one_error_line, palimpsest
    from palimpsest.storage import read_safetensors, save_model

    base = tmp_path / "base"
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0), tokenizer, base)
    facts = tmp_path / "f.jsonl"
    facts.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'
        '{"subject": "Peru", "relation": "capital", "object": "Lima"}\n'
    )
    line = one_error_line(
        palimpsest("memory", "learn", "--model", base, "--facts", facts, "--out", tmp_path / "x")
    )
    assert "no product-key memory" in line and not (tmp_path / "x").exists()

    small = ["--n-keys", "8", "--heads", "2", "--k", "4", "--k-dim", "16", "--zero-values"]
    line = one_error_line(
        palimpsest("memory", "add", "--model", base, "--out", tmp_path / "y", "--layer", "middle", *small)
    )
    assert "--layer" in line and "middle" in line and not (tmp_path / "y").exists()
    # a relative depth: 0.5 of 4 blocks is block 2 (``memory_layers_by_relative_depth``)
    done = palimpsest("memory", "add", "--model", base, "--out", tmp_path / "m", "--layer", "0.5", *small)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "m" / "config.json").read_text())["palimpsest_memory"]["layers"] == [0.5]
    assert next(name.split(".")[2] for name in read_safetensors(tmp_path / "m") if ".memory." in name) == "2"
    for extra in ([], ["--sparse-top-t", "3"]):
        out = tmp_path / f"learned{len(extra)}"
        done = palimpsest(
            "memory",
            "learn",
            "--model",
            tmp_path / "m",
            "--facts",
            facts,
            "--out",
            out,
            "--steps",
            "3",
            *extra,
        )
        assert done.returncode == 0, done.stderr
        results = json.loads((out / "results.json").read_text())
        assert results["kind"] == "memory-learn" and results["facts"] == 1 and results["kept_facts"] == 1
        assert (results["learned"]["slots_updated"] is not None) == bool(extra)
        before, after = read_safetensors(tmp_path / "m"), read_safetensors(out / "model")
        assert set(before) == set(after)
        assert all(torch.equal(before[k], after[k]) for k in before if ".memory." not in k)
        assert any(not torch.equal(before[k], after[k]) for k in before if "values" in k)
