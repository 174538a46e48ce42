"""The batch editors' mechanics: their least squares, the null-space bound, exact undo, and the
statistics cache (keyed by weights, corpus and token count; a torn file is computed again)."""

import pytest
import torch

from palimpsest.data.facts import CAPITAL, CURRENCY, LANGUAGE, Fact
from palimpsest.data.tokenization import leading_special_ids
from palimpsest.editing import EditRequest
from palimpsest.editing import statistics as stats_module
from palimpsest.editing.editor import ConstrainedFinetune
from palimpsest.editing.memit import BatchEditConfig, BatchEditor
from palimpsest.editing.statistics import (
    LayerStatistics,
    cached_statistics,
    statistics_path,
    weights_fingerprint,
)
from palimpsest.errors import ConfigError, DataError
from palimpsest.models import build_model, build_smollm2_like

REQUESTS = [
    EditRequest(Fact("France", CAPITAL, "Paris"), "Rome"),
    EditRequest(Fact("Spain", CAPITAL, "Madrid"), "Berlin"),
    EditRequest(Fact("Peru", CAPITAL, "Lima"), "Oslo"),
]
FAST = {"layers": [1, 2], "statistics_tokens": 2000, "target_steps": 3, "context_passages": 1}


@pytest.fixture
def model(tokenizer):
    return build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0)


@pytest.fixture(autouse=True)
def private_statistics(tmp_path, monkeypatch):
    monkeypatch.setenv("PALIMPSEST_MODEL_CACHE", str(tmp_path / "models"))


def _random_statistics(width: int, seed: int = 0) -> LayerStatistics:
    generator = torch.Generator().manual_seed(seed)
    basis = torch.randn(width, width, generator=generator, dtype=torch.float64)
    scales = torch.logspace(0, -6, width, dtype=torch.float64)  # a spectrum with a near-null space
    second_moment = basis @ torch.diag(scales) @ basis.T / width
    return LayerStatistics(second_moment, hidden_norm=1.0, tokens=1000)


def test_the_memit_update_solves_its_least_squares(model, tokenizer):
    editor = BatchEditor(model, tokenizer, covariance_weight=7.0, **FAST)
    width = editor.projections[1].weight.shape[1]
    generator = torch.Generator().manual_seed(1)
    keys = torch.randn(width, 5, generator=generator, dtype=torch.float64)
    residual = torch.randn(24, 5, generator=generator, dtype=torch.float64)
    stats = _random_statistics(width)
    editor.previous_keys[1] = (lambda k: k @ k.T)(
        torch.randn(width, 3, generator=generator, dtype=torch.float64)
    )
    update = editor._solve(1, keys, residual, stats)
    system = 7.0 * stats.second_moment + editor.previous_keys[1] + keys @ keys.T
    # the normal equations of min |dW K - R|^2 + tr(dW (lam C0 + K_prev K_prev^T) dW^T)
    torch.testing.assert_close(update @ system, residual @ keys.T, rtol=1e-8, atol=1e-8)


def test_the_alphaedit_update_leaves_ordinary_text_within_its_bound(model, tokenizer):
    threshold = 1e-3
    editor = BatchEditor(
        model, tokenizer, method="alphaedit", nullspace_threshold=threshold, ridge=0.5, **FAST
    )
    width = editor.projections[1].weight.shape[1]
    generator = torch.Generator().manual_seed(2)
    keys = torch.randn(width, 4, generator=generator, dtype=torch.float64)
    residual = torch.randn(24, 4, generator=generator, dtype=torch.float64)
    stats = _random_statistics(width)
    update = editor._solve(1, keys, residual, stats)
    largest = float(torch.linalg.eigvalsh(stats.second_moment).max())
    # E|dW k|^2 over ordinary text = tr(dW C0 dW^T): its rows lie where C0 < threshold * largest
    moved = float(torch.trace(update @ stats.second_moment @ update.T))
    assert moved <= threshold * largest * float(update.norm()) ** 2 * (1 + 1e-6)
    assert float(update.norm()) > 0  # it does write something


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_undo_is_bit_exact_and_nothing_else_is_written(model, tokenizer, method):
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    editor = BatchEditor(model, tokenizer, method=method, nullspace_threshold=0.5, **FAST)
    editor.apply(REQUESTS[:2], measure=False)
    editor.apply(REQUESTS[2:], measure=False)  # a second batch of the sequence
    after = model.state_dict()
    written = {name for name in before if not torch.equal(before[name], after[name])}
    assert written and written <= {f"model.layers.{b}.mlp.down_proj.weight" for b in (1, 2)}
    assert set(editor.previous_keys) == {1, 2}
    editor.undo()
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_keys_are_a_column_per_context_or_their_mean(model, tokenizer):
    each = BatchEditor(model, tokenizer, **{**FAST, "context_passages": 2})
    mean = BatchEditor(model, tokenizer, **{**FAST, "context_passages": 2}, key_contexts="mean")
    columns, owners = each._keys(REQUESTS, 0, 1)
    averaged, requests = mean._keys(REQUESTS, 0, 1)
    assert owners == [0, 0, 0, 1, 1, 1, 2, 2, 2] and requests == [0, 1, 2]
    for request in range(3):
        torch.testing.assert_close(columns[:, 3 * request : 3 * request + 3].mean(1), averaged[:, request])


def test_the_target_moves_the_prompt_as_users_write_it(model, tokenizer):
    editor = BatchEditor(model, tokenizer, **{**FAST, "target_steps": 10, "target_lr": 0.05})
    assert editor.front == leading_special_ids(tokenizer)
    prompts = editor._prompts(REQUESTS[0], 0, 0, with_answer=True)
    assert len(prompts) == 2 and prompts[0].ids[: len(editor.front)] == editor.front
    plain = tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    assert prompts[0].ids == editor.front + plain  # no end-of-text token of ours in front
    assert prompts[1].ids[len(editor.front) :] != plain  # the same prompt after unrelated text


def test_targets_fitted_through_the_other_templates_leave_the_held_out_one_unseen(model, tokenizer):
    editor = BatchEditor(model, tokenizer, **FAST, train_templates="all-but-held-out")
    request = REQUESTS[0]  # France: capital, four templates
    held_out = request.fact.held_out_template(0)
    prompts = editor._prompts(request, 0, 0, with_answer=True)
    texts = [tokenizer.decode(p.ids[len(editor.front) :] + p.answer).strip() for p in prompts]
    fitted = [request.fact.statement(t, "Rome").rstrip(".") for t in range(4) if t != held_out]
    assert len(prompts) == 2 + 2  # as written and after one passage; two more templates as written
    assert texts[0] == fitted[0] and texts[2:] == fitted[1:]
    assert request.fact.statement(held_out, "Rome").rstrip(".") not in texts
    for prompt in prompts:  # each target is added where the subject ends
        assert tokenizer.decode(prompt.ids[: prompt.subject_last + 1]).endswith("France")
    with pytest.raises(ConfigError, match="train_templates"):
        BatchEditConfig(train_templates="all")


def test_the_kl_term_reads_the_subject_through_the_other_relations_edited(model, tokenizer):
    mixed = [*REQUESTS[:2], EditRequest(Fact("France", CURRENCY, "Euro"), "Yen"),
             EditRequest(Fact("Peru", LANGUAGE, "Spanish"), "Dutch")]  # fmt: skip
    editor = BatchEditor(model, tokenizer, **FAST, keep_prompts="other-relations")
    prompts = editor._kept_prompts(mixed, 0)
    texts = [tokenizer.decode(p.ids[len(editor.front) :]).strip() for p in prompts]
    assert texts == ["France is a", "In France, people pay with the", "Most people in France speak"]
    for prompt in prompts:  # the target is added where the subject ends
        assert tokenizer.decode(prompt.ids[: prompt.subject_last + 1]).endswith("France")
    assert all(p.request == 0 and not p.answer for p in prompts)
    alone = BatchEditor(model, tokenizer, **FAST)._kept_prompts(mixed, 0)  # MEMIT's prompt alone
    assert [tokenizer.decode(p.ids[len(editor.front) :]).strip() for p in alone] == ["France is a"]


def test_the_kl_term_keeps_what_the_target_does_to_the_other_relations(model, tokenizer):
    """The target of France's capital, added where "France" ends in a currency prompt, moves that
    prompt's next-token distribution less when the KL term reads it."""
    mixed = [REQUESTS[0], EditRequest(Fact("Peru", CURRENCY, "Sol"), "Yen")]
    currency = BatchEditor(model, tokenizer, **FAST, keep_prompts="other-relations")._kept_prompts(mixed, 0)[
        1
    ]

    def drift(**settings) -> float:
        chosen = {**FAST, "target_steps": 15, "kl_factor": 1000.0, "target_norm_limit": None, **settings}
        editor = BatchEditor(model, tokenizer, **chosen)
        shift = editor._targets(mixed, 0, {})[0][:, 0]
        ids = torch.tensor([currency.ids])
        with torch.no_grad():
            before = model(input_ids=ids).logits[0, -1].log_softmax(-1)
            last = model.model.layers[editor.blocks[-1]]

            def steer(_module, _args, output):
                states = (output[0] if isinstance(output, tuple) else output).clone()
                states[0, currency.subject_last] += shift.to(states.dtype)
                return (states, *output[1:]) if isinstance(output, tuple) else states

            handle = last.register_forward_hook(steer)
            after = model(input_ids=ids).logits[0, -1].log_softmax(-1)
            handle.remove()
        return float((before.exp() * (before - after)).sum())

    assert drift(keep_prompts="other-relations") < 0.5 * drift(keep_prompts="none")


def test_a_config_that_cannot_work_is_refused(model, tokenizer):
    with pytest.raises(ConfigError, match="method"):
        BatchEditConfig(method="rome")
    with pytest.raises(ConfigError, match="covariance_weight"):
        BatchEditConfig(covariance_weight=float("nan"))
    with pytest.raises(ConfigError, match="keep_prompts"):
        BatchEditConfig(keep_prompts="all")
    editor = BatchEditor(model, tokenizer, method="alphaedit", nullspace_threshold=1e-12, **FAST)
    width = editor.projections[1].weight.shape[1]
    full_rank = LayerStatistics(torch.eye(width, dtype=torch.float64), 1.0, 10)
    with pytest.raises(ConfigError, match="nullspace_threshold"):
        editor._solve(
            1, torch.ones(width, 1, dtype=torch.float64), torch.ones(24, 1, dtype=torch.float64), full_rank
        )


def test_statistics_are_cached_by_weights_corpus_and_token_count(model, tokenizer, monkeypatch):
    calls = []
    compute = stats_module.compute_statistics

    def counted(*args, **kwargs):
        calls.append((kwargs["corpus"], kwargs["tokens"]))
        return compute(*args, **kwargs)

    monkeypatch.setattr(stats_module, "compute_statistics", counted)
    first = cached_statistics(model, tokenizer, [1], tokens=1500)
    again = cached_statistics(model, tokenizer, [1], tokens=1500)
    assert len(calls) == 1 and torch.equal(first[1].second_moment, again[1].second_moment)
    cached_statistics(model, tokenizer, [1], tokens=1000)  # another count
    cached_statistics(model, tokenizer, [1], corpus="wiki-fr", tokens=1500)  # another corpus
    assert len(calls) == 3
    cached_statistics(model, tokenizer, [1, 2], tokens=1500)  # a block not measured before
    assert len(calls) == 4
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(0.01)  # other weights before the block
    cached_statistics(model, tokenizer, [1], tokens=1500)
    assert len(calls) == 5
    path = statistics_path(weights_fingerprint(model, [1]), "wiki-en", 1500)
    path.write_bytes(path.read_bytes()[:100])  # torn
    torn = cached_statistics(model, tokenizer, [1], tokens=1500)
    assert len(calls) == 6 and torn[1].second_moment.shape == first[1].second_moment.shape


def test_statistics_are_the_second_moment_of_the_projections_inputs(model, tokenizer):
    computed = stats_module.compute_statistics(model, tokenizer, [2], tokens=600, block_size=32)[2]
    assert computed.tokens >= 600
    second = computed.second_moment
    torch.testing.assert_close(second, second.T)
    assert float(torch.linalg.eigvalsh(second).min()) > -1e-10  # positive semi-definite
    assert computed.hidden_norm > 0


@pytest.mark.parametrize(
    ("method", "layers", "stored"), [("memit", "1,2", [1, 2]), ("alphaedit", "0.3:0.7", "0.3:0.7")]
)
def test_edit_from_the_command_line_with_a_batch_editor(tmp_path, tokenizer, method, layers, stored):
    import json

    from cli_helpers import one_error_line, palimpsest
    from palimpsest.storage import save_model

    base = tmp_path / "base"
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0), tokenizer, base)
    facts = tmp_path / "f.jsonl"
    facts.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'
        '{"subject": "Peru", "relation": "capital", "object": "Lima"}\n'
    )
    config = tmp_path / "batch.yaml"
    config.write_text("statistics_tokens: 2000\ncontext_passages: 1\nnullspace_threshold: 0.5\n")
    arguments = ["edit", "--model", base, "--facts", facts, "--method", method, "--config", config]
    done = palimpsest(*arguments, "--layers", layers, "--steps", "3", "--out", tmp_path / "e")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert results["config"]["method"] == method and results["config"]["layers"] == stored
    assert results["max_abs_change"] > 0 and "A_M@after-text" in results["after"]
    line = one_error_line(palimpsest(*arguments, "--norm", "l2", "--out", tmp_path / "x"))
    assert "--norm" in line and "constrained" in line
    unknown = palimpsest(
        "edit", "--model", base, "--facts", facts, "--method", "rome", "--out", tmp_path / "y"
    )
    assert "unknown editor" in one_error_line(unknown)


def test_the_constrained_editor_can_train_after_unrelated_text(model, tokenizer):
    from palimpsest.editing import ConstrainedFinetune
    from palimpsest.errors import DataError
    from palimpsest.recall import text_passages

    editor = ConstrainedFinetune(model, tokenizer, context_passages=2, steps=2, stop_on_success=False)
    assert [c.name for c in editor._contexts] == ["plain", "after-text", "after-text"]
    held_out = set(text_passages(3, seed=0, split="validation"))
    assert not held_out & {c.text for c in editor._contexts}  # measured after passages no editor saw
    editor.apply(REQUESTS[:1], measure=False)
    assert editor.changes()
    small = build_model("gpt2", "micro", tokenizer, max_positions=24, seed=0)
    with pytest.raises(DataError, match="context_passages: 0"):
        ConstrainedFinetune(small, tokenizer, context_passages=2).apply(REQUESTS[:1], measure=False)


def test_a_second_edit_of_an_edited_model_preserves_the_first_edits_keys(tmp_path, tokenizer, monkeypatch):
    import json

    from safetensors.torch import load_file

    from cli_helpers import one_error_line, palimpsest
    from palimpsest.editing import memit as memit_module
    from palimpsest.editing.history import read_history
    from palimpsest.storage import save_model

    base = tmp_path / "base"
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0), tokenizer, base)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    first.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'
        '{"subject": "Spain", "relation": "capital", "object": "Madrid", "new_object": "Oslo"}\n'
    )
    second.write_text('{"subject": "Peru", "relation": "capital", "object": "Lima", "new_object": "Bern"}\n')
    config = tmp_path / "batch.yaml"
    config.write_text("statistics_tokens: 2000\ncontext_passages: 1\ntarget_steps: 2\nlayers: [1, 2]\n")
    done = palimpsest("edit", "--model", base, "--facts", first, "--config", config, "--out", tmp_path / "a")
    assert done.returncode == 0, done.stderr
    history = read_history(tmp_path / "a" / "model")
    assert [r.method for r in history.rounds] == ["memit"]  # auto, on a causal LM
    # a key per request and context (the prompt as written, one passage in front)
    assert {b: tuple(k.shape) for b, k in history.keys.items()} == {1: (64, 4), 2: (64, 4)}

    seen = {}
    original_init = memit_module.BatchEditor.__init__

    def spy(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        seen.update({b: k.clone() for b, k in self.previous_keys.items()})

    monkeypatch.setattr(memit_module.BatchEditor, "__init__", spy)
    edited = tmp_path / "a" / "model"
    arguments = ["edit", "--model", edited, "--facts", second, "--method", "memit", "--config", config]
    done = palimpsest(*arguments, "--out", tmp_path / "b")
    assert done.returncode == 0, done.stderr
    assert "2 earlier edit(s) in 1 round(s)" in done.stdout
    for block, keys in history.keys.items():  # the second edit preserved exactly the stored keys
        torch.testing.assert_close(seen[block], keys.double() @ keys.double().T)
    again = read_history(tmp_path / "b" / "model")
    assert [len(r.requests) for r in again.rounds] == [2, 1]
    assert again.statistics_fingerprint == history.statistics_fingerprint  # the unedited model's statistics
    stored = load_file(str(tmp_path / "b" / "model" / "palimpsest-edits" / "keys.safetensors"))
    assert stored["block.1"].shape == (64, 6)
    torch.testing.assert_close(stored["block.1"][:, :4], history.keys[1])
    results = json.loads((tmp_path / "b" / "results.json").read_text())
    assert results["earlier_rounds"] == 1 and results["earlier_edits"] == 2

    # keys of another model are refused, in one line
    small = tmp_path / "small"
    save_model(build_smollm2_like(tokenizer, hidden=12, layers=4, seed=0), tokenizer, small)
    (small / "palimpsest-edits").mkdir()
    for name in ("log.jsonl", "keys.safetensors"):
        (small / "palimpsest-edits" / name).write_bytes((edited / "palimpsest-edits" / name).read_bytes())
    line = one_error_line(
        palimpsest("edit", "--model", small, "--facts", second, "--method", "memit", "--config", config,
                   "--out", tmp_path / "c")
    )  # fmt: skip
    assert "keys of another model" in line


def test_a_statistics_file_of_another_model_is_refused(tmp_path, tokenizer):
    from cli_helpers import one_error_line, palimpsest
    from palimpsest.editing.statistics import cached_statistics, statistics_path, weights_fingerprint
    from palimpsest.storage import save_model

    base, other = tmp_path / "base", tmp_path / "other"
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0), tokenizer, base)
    foreign = build_smollm2_like(tokenizer, hidden=24, layers=4, seed=1)
    save_model(foreign, tokenizer, other)
    cached_statistics(foreign, tokenizer, [1, 2], tokens=2000)
    path = statistics_path(weights_fingerprint(foreign, [1, 2]), "wiki-en", 2000)
    facts = tmp_path / "f.jsonl"
    facts.write_text('{"subject": "Peru", "relation": "capital", "object": "Lima", "new_object": "Bern"}\n')
    config = tmp_path / "batch.yaml"
    config.write_text("statistics_tokens: 2000\ncontext_passages: 1\ntarget_steps: 2\nlayers: [1, 2]\n")
    arguments = ["edit", "--model", base, "--facts", facts, "--method", "memit", "--config", config]
    line = one_error_line(palimpsest(*arguments, "--statistics", path, "--out", tmp_path / "e"))
    assert "computed on other weights" in line
    assert not (tmp_path / "e" / "model").exists()
    garbage = tmp_path / "stats.safetensors"
    garbage.write_bytes(b"not a tensor file")
    assert "not a readable safetensors" in one_error_line(
        palimpsest(*arguments, "--statistics", garbage, "--out", tmp_path / "e")
    )
    done = palimpsest("edit", "--model", other, "--facts", facts, "--method", "memit", "--config", config,
                      "--statistics", path, "--out", tmp_path / "o")  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_evaluate_prints_recall_of_a_fact_file(tmp_path, tokenizer):
    import json

    from cli_helpers import one_error_line, palimpsest
    from palimpsest.storage import save_model

    base = tmp_path / "base"
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=2, seed=0), tokenizer, base)
    facts = tmp_path / "f.jsonl"
    facts.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'
        '{"subject": "Peru", "relation": "capital", "object": "Lima"}\n'
        '{"subject": "Gold", "relation": "element-symbol", "object": "Au"}\n'
    )
    done = palimpsest("evaluate", "--model", base, "--facts", facts, "--out", tmp_path / "r")
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "r" / "results.json").read_text())
    rows = {(r["group"], r["relation"]): r for r in results["rows"]}
    assert set(rows) == {("edited", "capital"), ("kept", "capital"), ("kept", "element-symbol")}
    assert all(0 <= r["recall"] <= 1 and r["facts"] == 1 for r in rows.values())
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert "holds no facts" in one_error_line(palimpsest("evaluate", "--model", base, "--facts", empty))
    clash = palimpsest("evaluate", "--model", base, "--facts", facts, "--corpus", "wiki-en")
    assert "corpus options" in one_error_line(clash)


def test_a_fact_file_with_no_request_is_refused_by_edit(tmp_path, tokenizer):
    from cli_helpers import one_error_line, palimpsest
    from palimpsest.storage import save_model

    base = tmp_path / "base"
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=2, seed=0), tokenizer, base)
    facts = tmp_path / "f.jsonl"
    facts.write_text('{"subject": "Peru", "relation": "capital", "object": "Lima"}\n')
    assert "nothing to edit" in one_error_line(palimpsest("edit", "--model", base, "--facts", facts))


def test_auto_edits_a_causal_lm_with_memit_and_a_masked_lm_with_the_constrained_editor(tmp_path, tokenizer):
    from cli_helpers import palimpsest
    from palimpsest.editing.history import read_history
    from palimpsest.storage import save_model

    save_model(build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0), tokenizer, tmp_path / "causal")
    save_model(build_model("bert", "micro", tokenizer, dropout=0.0, seed=0), tokenizer, tmp_path / "masked")
    facts = tmp_path / "f.jsonl"
    facts.write_text(
        '{"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}\n'
    )
    config = tmp_path / "batch.yaml"
    config.write_text("statistics_tokens: 2000\ncontext_passages: 1\nlayers: [1, 2]\n")
    for name, extra, method in (("causal", ["--config", config], "memit"), ("masked", [], "constrained")):
        done = palimpsest("edit", "--model", tmp_path / name, "--facts", facts, "--steps", "2", *extra,
                          "--out", tmp_path / f"out-{name}")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert [r.method for r in read_history(tmp_path / f"out-{name}" / "model").rounds] == [method]


def test_a_target_after_the_last_block_or_past_the_positions_is_refused_before_any_work(model, tokenizer):
    request = [EditRequest(Fact("France", CAPITAL, "Paris"), "Rome")]
    editor = BatchEditor(model, tokenizer, **{**FAST, "layers": [2, 3]})
    with pytest.raises(
        ConfigError, match=r"can move nothing: its targets are set after block 3 \(the last\)"
    ):
        editor.apply(request)
    assert editor.statistics is None  # refused before the statistics pass
    model.config.max_position_embeddings = 8
    editor = BatchEditor(model, tokenizer, **FAST)
    with pytest.raises(DataError, match="more than the model's 8 positions"):
        editor.apply(request)


def _preserving_editor(model, tokenizer, width_of, **settings):
    """The constrained editor with preserve="text" on block 1's output projection, over a C0 whose
    null space is half of the key space."""
    from palimpsest.editing.selection import ffn_output_projection

    width = width_of(ffn_output_projection(model, 1))
    generator = torch.Generator().manual_seed(3)
    basis, _ = torch.linalg.qr(torch.randn(width, width, generator=generator, dtype=torch.float64))
    spectrum = torch.cat([torch.ones(width // 2), torch.full((width - width // 2,), 1e-9)]).double()
    statistics = {1: LayerStatistics(basis @ torch.diag(spectrum) @ basis.T, hidden_norm=1.0, tokens=100)}
    editor = ConstrainedFinetune(
        model, tokenizer, layers=[1], modules=["ffn-out"], norm=None, preserve="text", learning_rate=1e-2,
        steps=30, stop_on_success=False, statistics=statistics, **settings,
    )  # fmt: skip
    return editor, basis[:, : width // 2]


def test_the_preserving_constrained_editor_keeps_ordinary_text_and_earlier_edits(model, tokenizer):
    from palimpsest.editing.selection import ffn_output_projection

    projection = ffn_output_projection(model, 1)
    editor, used = _preserving_editor(model, tokenizer, lambda p: p.weight.shape[1])
    original = projection.weight.detach().clone()
    editor.apply(REQUESTS[:1], measure=False)
    change = (projection.weight.detach() - original).double()
    assert float(change.norm()) > 1e-4  # it does edit
    # the directions ordinary text uses (C0's large eigenvalues) read what they read before, up to
    # the float32 rounding of the stored weight
    assert float((change @ used).norm()) <= 1e-6 * float(original.norm())
    first_keys = editor._subject_keys(
        [editor._probe(REQUESTS[0].fact, REQUESTS[0].new_object, 0, c) for c in editor._contexts]
    )["model.layers.1.mlp.down_proj.weight"]
    written = projection.weight.detach().double() @ first_keys
    editor.apply(REQUESTS[1:2], measure=False)
    moved = (projection.weight.detach() - original).double().sub(change)
    assert float(moved.norm()) > 1e-4  # the second edit moved the weight
    # the first edit's subject keys read what the first edit wrote, to float precision
    torch.testing.assert_close(projection.weight.detach().double() @ first_keys, written, rtol=0, atol=1e-5)
    editor.undo()
    assert torch.equal(projection.weight, original)
    assert editor._projectors == editor._initial_projectors


def test_preserve_refuses_what_it_cannot_keep(model, tokenizer):
    with pytest.raises(ConfigError, match="norm l2 or none"):
        ConstrainedFinetune(model, tokenizer, layers=[1], modules=["ffn-out"], preserve="text")
    with pytest.raises(ConfigError, match="not one"):
        ConstrainedFinetune(model, tokenizer, layers=[1], modules=["ffn"], norm=None, preserve="text")
    with pytest.raises(ConfigError, match="preserve: expected"):
        ConstrainedFinetune(model, tokenizer, preserve="everything")


def test_a_constrained_round_preserves_earlier_edits_only_with_preserve(tmp_path, tokenizer):
    import json

    from cli_helpers import palimpsest
    from palimpsest.storage import save_model

    base = tmp_path / "base"
    save_model(build_smollm2_like(tokenizer, hidden=24, layers=4, seed=0), tokenizer, base)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    line = '{{"subject": "{}", "relation": "capital", "object": "{}", "new_object": "{}"}}\n'
    first.write_text(line.format("France", "Paris", "Rome"))
    second.write_text(line.format("Peru", "Lima", "Bern"))
    config = tmp_path / "fast.yaml"
    config.write_text("statistics_tokens: 2000\nsteps: 3\nlayers: [1]\nnullspace_threshold: 0.5\n")
    done = palimpsest("edit", "--model", base, "--facts", first, "--config", config, "--out", tmp_path / "a")
    assert done.returncode == 0, done.stderr
    edited = tmp_path / "a" / "model"
    again = ["edit", "--model", edited, "--facts", second, "--config", config]
    plain = palimpsest(*again, "--out", tmp_path / "b")
    assert plain.returncode == 0, plain.stderr
    assert "not preserved" in plain.stdout
    assert json.loads((tmp_path / "b" / "results.json").read_text())["earlier_preserved"] is False
    kept = palimpsest(*again, "--preserve", "text", "--norm", "none", "--out", tmp_path / "c")
    assert kept.returncode == 0, kept.stderr
    assert "1 earlier edit(s) in 1 round(s) preserved" in kept.stdout
    assert json.loads((tmp_path / "c" / "results.json").read_text())["earlier_preserved"] is True


def test_a_sequence_goes_on_in_another_editor_from_its_saved_state(model, tokenizer):
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    kept = {"method": "memit", "accumulate_keys": True}  # the earlier edits' keys are part of the state
    first = BatchEditor(model, tokenizer, **kept, **FAST)
    first.apply(REQUESTS[:1], measure=False)
    state = {name: tensor.clone() for name, tensor in first.sequence_state().items()}
    first.apply(REQUESTS[1:], measure=False)
    straight = {n: p.detach().clone() for n, p in model.named_parameters()}
    first.undo()
    resumed = BatchEditor(model, tokenizer, **kept, **FAST)  # a new process would build it anew
    resumed.load_sequence_state(state)
    resumed.apply(REQUESTS[1:], measure=False)
    assert all(torch.equal(p, straight[n]) for n, p in model.named_parameters())  # the same sequence
    resumed.undo()
    assert all(
        torch.equal(p, originals[n]) for n, p in model.named_parameters()
    )  # undo: the weights it found
    with pytest.raises(DataError, match="saved sequence state"):
        resumed.load_sequence_state({"weight.1": state["weight.1"]})
