"""The editing study at smoke scale: grid, pre-edit recall, resume, verdict and report."""

import json

import pytest

from palimpsest.errors import ConfigError
from palimpsest.experiments.editing import SCALES, EditingScale, method_grid, per_layer, run_editing_study
from palimpsest.report import write_report


def test_method_grid_covers_methods_layers_and_bounds():
    labels = [label for label, _ in method_grid(EditingScale(), blocks=4)]
    assert labels[:2] == ["ft", "ft+support"]
    for block in range(4):
        assert f"linf δ=0.005 block {block}" in labels and f"l2 δ=0.5 block {block}" in labels
    assert "linf δ=0.005 first+last" in labels and "linf δ=0.005 all" in labels
    ft = dict(method_grid(EditingScale(), blocks=4))["ft"]
    assert ft.norm is None and "embeddings" in ft.modules


def test_smoke_study_end_to_end(tmp_path):
    results = run_editing_study(tmp_path, "smoke")
    settings = SCALES["smoke"]
    assert set(results["pretrained"]) == set(settings.families)
    for info in results["pretrained"].values():
        assert 0.0 <= info["recall"] <= 1.0 and info["unprobeable"] == 0
    labels = {run["label"] for run in results["runs"]}
    assert {"ft", "ft+support", "linf δ=0.005 first+last", "linf δ=0.005 block 1"} <= labels
    for family in settings.families:
        runs = [r for r in results["runs"] if r["family"] == family]
        assert len({json.dumps(r["before"], sort_keys=True) for r in runs}) == 1  # one draw, measured once
    single = per_layer(results["summary"]["rows"], "gpt2", 4, "linf", 5e-3)
    assert [r["layers"] for r in single] == [[0], [1]]
    assert "recalls" in results["summary"]["verdict"]
    again = run_editing_study(tmp_path, "smoke")  # pretraining and edit units are reused
    assert again["runs"] == json.loads(json.dumps(results["runs"]))
    markdown, _ = write_report([results], tmp_path, title="t")
    text = markdown.read_text()
    assert "Rewrite: modifying facts" in text and "editing-frontier-gpt2-4.png" in text
    with pytest.raises(ConfigError, match="unknown scale"):
        run_editing_study(tmp_path, "huge")


@pytest.mark.parametrize("name", sorted(SCALES))
def test_every_scale_leaves_unmodified_facts_to_measure(name):
    """Even the largest edit set of a scale leaves facts that are neither edited nor support."""
    from palimpsest.editing.requests import counterfactual_requests
    from palimpsest.experiments.editing import study_facts, support_split
    from palimpsest.models import SIZES

    settings = SCALES[name]
    facts = study_facts(settings)
    requests = counterfactual_requests(facts, max(settings.edits), seed=0)
    support, unmodified = support_split(facts, requests, seed=0)
    assert 0 < len(support) <= len(requests) and len(unmodified) >= len(support)
    seen = {(f.subject, f.relation.name) for f in support + unmodified}
    assert len(seen) == len(support) + len(unmodified) == len(facts) - len(requests)
    assert not seen & {(r.fact.subject, r.fact.relation.name) for r in requests}
    assert len(method_grid(settings, SIZES[settings.size].layers)) > len(settings.methods)
