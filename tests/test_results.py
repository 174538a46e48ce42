"""Typed results: read back strictly, rows kept flat, units computed once per key."""

import json
from dataclasses import dataclass
from typing import ClassVar

import pytest

from palimpsest.config import from_dict, to_dict
from palimpsest.errors import DataError
from palimpsest.report import Section, render_html, render_markdown, write_report
from palimpsest.results import read_results, results_classes
from palimpsest.storage import resumable


def test_every_shipped_kind_has_a_class_with_a_section():
    classes = results_classes()
    assert {"pretrain", "evaluate", "evaluate-task", "edit", "memory-stats", "plasticity", "memory-study",
            "editing-study", "editing-real"} <= set(classes)  # fmt: skip
    for kind, cls in classes.items():
        assert kind == cls.KIND and "report_section" in vars(cls)


def test_reading_names_the_missing_key_and_the_unknown_kind():
    with pytest.raises(DataError, match="unknown results kind 'nope'"):
        read_results({"kind": "nope"})
    document = {"kind": "evaluate", "model": "m", "corpus": "c", "objective": "clm",
                "metrics": {"loss": 1.0, "perplexity": 2.7, "tokens": 3, "unigram_loss": 2.0}}  # fmt: skip
    with pytest.raises(DataError, match=r"missing key 'metrics\.unigram_perplexity'"):
        read_results(document)
    document["metrics"]["unigram_perplexity"] = 7.4
    typed = read_results(document)
    assert typed.metrics.perplexity == 2.7 and typed.to_json() == document
    document["metrics"]["perplexity"] = "high"
    with pytest.raises(DataError, match=r"metrics\.perplexity: expected a number"):
        read_results(document)


def test_a_report_is_built_from_stored_results(tmp_path):
    document = {"kind": "evaluate", "model": "m", "corpus": "wiki-en", "objective": "clm",
                "metrics": {"loss": 1.0, "perplexity": 2.7, "tokens": 3, "unigram_loss": 2.0,
                            "unigram_perplexity": 7.4}}  # fmt: skip
    markdown, _ = write_report([document], tmp_path)
    assert "| m | wiki-en | 2.7 | 7.4 | 3 |" in markdown.read_text()


@dataclass
class _Row:
    FLAT_MAPPING: ClassVar[str] = "metrics"

    label: str
    metrics: dict[str, tuple[float, float]]


def test_verdict_paragraphs_and_lists_render_in_markdown_and_html(tmp_path):
    verdict = "Claim, N=16:\n- a < b\n- c\n\nSecond paragraph.\n\n- only\n- items"
    sections = [Section("study", [verdict])]
    assert verdict in render_markdown("t", sections, tmp_path)
    page = render_html("t", sections)
    assert "<p>Claim, N=16:</p><ul><li>a &lt; b</li><li>c</li></ul>" in page
    assert "<p>Second paragraph.</p>" in page
    assert "<ul><li>only</li><li>items</li></ul>" in page


def test_a_flat_mapping_sits_beside_the_fields_and_reads_back():
    row = _Row("ft", {"A_M": (1.0, 0.0), "A_F\\S before": (0.5, 0.1)})
    flat = to_dict(row)
    assert flat == {"label": "ft", "A_M": [1.0, 0.0], "A_F\\S before": [0.5, 0.1]}
    assert from_dict(_Row, flat) == row


def test_a_unit_runs_once_per_key_and_survives_a_torn_file(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"value": (len(calls), 2)}

    path = tmp_path / "unit.json"
    first = resumable(path, {"lr": 1e-3}, compute)
    assert first == {"value": [1, 2]}  # as read back from JSON, fresh or resumed
    assert resumable(path, {"lr": 1e-3}, compute) == first and len(calls) == 1
    assert resumable(path, {"lr": 2e-3}, compute) == {"value": [2, 2]}  # another setting: computed again
    path.write_text('{"key": ')  # a torn write
    assert resumable(path, {"lr": 2e-3}, compute) == {"value": [3, 2]}
    assert json.loads(path.read_text())["key"] == {"lr": 2e-3}


def test_a_typed_unit_reads_back_as_its_class(tmp_path):
    row = resumable(tmp_path / "u.json", "k", lambda: _Row("ft", {"A_M": (1.0, 0.0)}), kind=_Row)
    again = resumable(tmp_path / "u.json", "k", lambda: pytest.fail("recomputed"), kind=_Row)
    assert isinstance(again, _Row) and again == row


def test_a_folder_appears_whole_or_not_at_all(tmp_path):
    from palimpsest.storage import atomic_folder

    target = tmp_path / "model"
    with atomic_folder(target) as staging:
        (staging / "a.txt").write_text("first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError), atomic_folder(target) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("killed while writing")
    assert (target / "a.txt").read_text() == "first"  # the previous folder is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # and nothing half-written is left
    with atomic_folder(target) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
