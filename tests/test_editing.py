"""The editor: bounds, untouched parameters, exact undo, multi-token objects, requests."""

import pytest
import torch

from palimpsest.data.facts import CAPITAL, Fact, country_facts
from palimpsest.editing import ConstrainedFinetune, EditRequest, counterfactual_requests, select_parameters
from palimpsest.editing.checkpoint import EditCheckpoint
from palimpsest.editing.config import PLAIN_FINETUNING
from palimpsest.errors import ConfigError, DataError, ModelError
from palimpsest.models import build_model

REQUESTS = [
    EditRequest(Fact("France", CAPITAL, "Paris"), "Ouagadougou Extraordinaire"),  # several tokens
    EditRequest(Fact("Spain", CAPITAL, "Madrid"), "Lyon"),
]
OTHERS = [Fact("Italy", CAPITAL, "Rome"), Fact("Peru", CAPITAL, "Lima")]


#: Zhu et al.'s plain constrained fine-tuning of the FFN (the real-model defaults are tested in
#: test_real_models.py).
def plain(**settings):
    """Zhu et al.'s plain constrained fine-tuning of the FFNs, with ``settings`` on top."""
    return {**PLAIN_FINETUNING, "layers": "first+last", "modules": ["ffn"], "learning_rate": 1e-3, **settings}


def _model(tokenizer, family="gpt2"):
    return build_model(family, "micro", tokenizer, max_positions=64, dropout=0.0, seed=0)


def _snapshot(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_edit_stays_in_its_bound_and_touches_nothing_else(tokenizer, norm):
    model = _model(tokenizer)
    before = _snapshot(model)
    delta = 2e-3 if norm == "linf" else 5e-2
    editor = ConstrainedFinetune(
        model,
        tokenizer,
        **plain(
            layers="first+last",
            modules=["ffn"],
            norm=norm,
            delta=delta,
            learning_rate=1e-2,
            steps=15,
            stop_loss=None,
        ),
    )
    result = editor.apply(REQUESTS, unmodified=OTHERS)
    assert result.steps == 15
    edited = set(editor.parameters)
    assert edited and all(".h.0.mlp." in n or ".h.1.mlp." in n for n in edited)
    for name, parameter in model.named_parameters():
        change = (parameter.detach() - before[name]).float()
        if name in edited:
            bound = change.abs().max() if norm == "linf" else change.norm()
            assert bound <= delta * (1 + 1e-5) + 1e-7, name
            assert bound > 0.5 * delta, name  # the edit used its budget
        else:
            assert torch.equal(parameter.detach(), before[name]), name


def test_undo_restores_every_weight_bit_for_bit(tokenizer):
    model = _model(tokenizer)
    before = _snapshot(model)
    editor = ConstrainedFinetune(
        model,
        tokenizer,
        **plain(
            layers="all", modules=["ffn", "attention", "embeddings"], norm=None, learning_rate=1e-2, steps=5
        ),
    )
    editor.apply(REQUESTS, measure=False)
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    editor.undo()
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert all(p.requires_grad for p in model.parameters())  # flags restored too


def test_unconstrained_edit_learns_a_multi_token_object(tokenizer):
    model = _model(tokenizer)
    editor = ConstrainedFinetune(
        model,
        tokenizer,
        **plain(layers="all", modules=["block", "embeddings"], norm=None, learning_rate=1e-2, steps=300),
    )
    result = editor.apply(REQUESTS, unmodified=OTHERS)
    assert result.before["A_M"] == 0.0
    assert result.after["A_M"] == 1.0 and result.after["efficacy"] == 1.0
    assert result.steps < 300  # stopped early once the loss was low
    assert {"A_F\\S", "neighbourhood", "paraphrase", "A_mean"} <= set(result.after)


def test_sequential_edits_share_one_budget(tokenizer):
    model = _model(tokenizer)
    editor = ConstrainedFinetune(
        model,
        tokenizer,
        **plain(
            layers="first+last",
            modules=["ffn"],
            norm="linf",
            delta=1e-3,
            learning_rate=1e-2,
            steps=10,
            stop_loss=None,
        ),
    )
    result = editor.apply(REQUESTS, sequential=True, measure=False)
    assert result.steps == 20
    assert max(c["linf"] for c in editor.changes().values()) <= 1e-3 * (1 + 1e-5) + 1e-7


def test_masked_lm_edit_lowers_the_loss(tokenizer):
    model = _model(tokenizer, family="bert")
    editor = ConstrainedFinetune(
        model,
        tokenizer,
        **plain(
            layers="last",
            modules=["ffn"],
            norm="linf",
            delta=0.05,
            learning_rate=1e-2,
            steps=30,
            stop_loss=None,
        ),
    )
    assert editor.objective == "mlm"
    probes = [editor._probe(r.fact, r.new_object) for r in REQUESTS]
    start = editor._finetune(probes)[1]  # the loss after one pass of 30 steps...
    editor.undo()
    editor.config.steps = 1
    untrained = editor._finetune(probes)[1]  # ...is below the loss after a single step
    assert start < untrained


def test_parameter_selection(tokenizer):
    model = _model(tokenizer, family="llama")
    attention = select_parameters(model, "first", ["attention"])
    assert attention and all(".layers.0.self_attn." in n for n in attention)
    embeddings = select_parameters(model, [1], ["embeddings"])
    assert list(embeddings) == ["model.embed_tokens.weight"]
    with pytest.raises(ConfigError, match="unknown kind"):
        select_parameters(model, "first", ["heads"])
    with pytest.raises(ConfigError, match="unknown choice"):
        select_parameters(model, "middle", ["ffn"])
    with pytest.raises(ConfigError, match="block indices"):
        select_parameters(model, [7], ["ffn"])
    del model.model.layers[0].mlp
    with pytest.raises(ModelError, match="children are"):
        select_parameters(model, "first", ["ffn"])


def test_objective_must_fit_the_model(tokenizer):
    with pytest.raises(ConfigError, match="causal"):
        ConstrainedFinetune(_model(tokenizer), tokenizer, objective="mlm")
    with pytest.raises(ConfigError, match="norm"):
        ConstrainedFinetune(_model(tokenizer), tokenizer, norm="l1")


def test_counterfactuals_never_keep_the_old_object():
    facts = country_facts("continent")
    for seed in range(20):
        for request in counterfactual_requests(facts, 30, seed=seed):
            assert request.new_object != request.fact.object
            assert request.new_object in {f.object for f in facts}
    assert counterfactual_requests(facts, 10, seed=3) == counterfactual_requests(facts, 10, seed=3)
    with pytest.raises(DataError, match="equals the old"):
        EditRequest(Fact("France", CAPITAL, "Paris"), "Paris")
    with pytest.raises(DataError, match="single object"):
        counterfactual_requests([Fact("A", CAPITAL, "X"), Fact("B", CAPITAL, "X")], 1)


def test_config_and_keywords_merge_never_ignore(tokenizer):
    from palimpsest.editing.config import EditConfig
    from palimpsest.models import build_model

    model = build_model("gpt2", "micro", tokenizer, max_positions=32, seed=0)
    config = EditConfig(layers=[0], delta=0.3, steps=7)
    editor = ConstrainedFinetune(model, tokenizer, config=config, delta=0.1)
    assert editor.config.delta == 0.1 and editor.config.steps == 7 and editor.config.layers == [0]
    assert ConstrainedFinetune(model, tokenizer, config=config).config is config
    with pytest.raises(ConfigError, match="delta"):
        ConstrainedFinetune(model, tokenizer, config=config, delta=-1.0)


class _Stopped(Exception):
    """Stands for the process being killed."""


@pytest.mark.parametrize("sequential", [False, True])
def test_a_stopped_edit_resumes_to_the_same_weights(tokenizer, tmp_path, monkeypatch, sequential):
    """Saved every step and killed at step 4, the resumed edit ends bit-equal to an uninterrupted one,
    Adam's moments included (a restart from the saved weights alone would not)."""
    from palimpsest.editing import checkpoint as checkpoint_module

    settings = plain(norm="linf", delta=2e-3, learning_rate=1e-2, steps=7, stop_loss=None)
    whole = ConstrainedFinetune(_model(tokenizer), tokenizer, **settings)
    expected = whole.apply(REQUESTS, sequential=sequential, measure=False)

    progress = tmp_path / "edit.safetensors"
    original = checkpoint_module.EditCheckpoint.save_if_due

    def save_then_die(self, parameters, optimizer, taken, loss):
        original(self, parameters, optimizer, taken, loss)
        if self.group == (1 if sequential else 0) and taken == 4:
            raise _Stopped

    monkeypatch.setattr(checkpoint_module.EditCheckpoint, "save_if_due", save_then_die)
    first = ConstrainedFinetune(_model(tokenizer), tokenizer, **settings)
    with pytest.raises(_Stopped):
        first.apply(REQUESTS, sequential=sequential, measure=False, progress=progress, progress_every=0)
    assert progress.is_file()
    monkeypatch.setattr(checkpoint_module.EditCheckpoint, "save_if_due", original)

    model = _model(tokenizer)
    resumed = ConstrainedFinetune(model, tokenizer, **settings)
    result = resumed.apply(
        REQUESTS, sequential=sequential, measure=False, progress=progress, progress_every=0
    )
    assert result.steps == expected.steps == (14 if sequential else 7)
    for name, parameter in resumed.parameters.items():
        assert torch.equal(parameter, whole.parameters[name]), name
    assert not progress.exists()  # done: nothing left to resume


def test_progress_of_another_edit_is_refused(tokenizer, tmp_path):
    progress = tmp_path / "edit.safetensors"
    settings = plain(norm="linf", delta=2e-3, learning_rate=1e-2, steps=3, stop_loss=None)
    editor = ConstrainedFinetune(_model(tokenizer), tokenizer, **settings)
    saver = EditCheckpoint(progress, editor._fingerprint(REQUESTS, (), False), every=0)
    editor.apply(REQUESTS[:1], measure=False)  # any optimizer state will do
    saver.save_if_due(
        editor.parameters, torch.optim.Adam(list(editor.parameters.values())), taken=1, loss=1.0
    )
    other = ConstrainedFinetune(_model(tokenizer), tokenizer, **{**settings, "delta": 3e-3})
    with pytest.raises(DataError, match="different edit"):
        other.apply(REQUESTS, measure=False, progress=progress)
    progress.write_bytes(b"not safetensors")
    with pytest.raises(DataError, match="not an edit's saved progress"):
        editor.apply(REQUESTS, measure=False, progress=progress)
