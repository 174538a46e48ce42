"""The verdict table: outcomes as data, derived from the studies' numbers (committed runs as inputs)."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from palimpsest.claims import Claim, Outcome, claim_rows, outcome_of
from palimpsest.report import build_sections
from palimpsest.results import read_results

RESULTS = Path(__file__).resolve().parents[1] / "results"


def committed(study: str):
    return read_results(json.loads((RESULTS / study / "results.json").read_text(encoding="utf-8")))


@pytest.mark.parametrize(
    ("holds", "outcome"),
    [
        ([True, True], Outcome.REPRODUCED),
        ([True, False], Outcome.PARTLY),
        ([False, False], Outcome.NOT_REPRODUCED),
        ([], Outcome.NOT_MEASURABLE),
    ],
)
def test_outcome_of_checks(holds, outcome):
    assert outcome_of(holds) is outcome


def test_rows_follow_the_headers():
    claim = Claim("grow", "a claim", "paper says", "we saw", Outcome.PARTLY)
    assert claim_rows([claim]) == [["grow", "a claim", "paper says", "we saw", "partly", "–"]]


def test_forgetting_claims_of_the_committed_decoder_run():
    faster, transfer, reversal = committed("plasticity-cpu-gpt2").claims()
    assert faster.outcome is Outcome.REPRODUCED  # ahead in every seed of every cell
    assert transfer.outcome is Outcome.NOT_MEASURABLE  # no assembled model beats the majority class
    assert reversal.outcome is Outcome.NOT_REPRODUCED  # forgetting still ahead at the largest budget


def test_a_body_at_the_unigram_level_makes_relearning_unmeasurable():
    study = committed("plasticity-cpu-gpt2")
    weak = {v: replace(d, validation_loss=d.unigram_loss) for v, d in study.pretrain.items()}
    claims = replace(study, pretrain=weak).claims()
    assert all(claim.outcome is Outcome.NOT_MEASURABLE for claim in claims)
    assert all(claim.evidence for claim in claims)  # each points at a run that can show it


def test_memory_recall_at_chance_is_not_evidence():
    study = committed("memory-cpu")
    assert {c.claim: c.outcome for c in study.claims()}[
        "starting from weights pretrained without memory spreads the memory's use"
    ] is Outcome.REPRODUCED
    arms = {
        arm: replace(summary, recall=(study.data.majority_recall, 0.0))
        for arm, summary in study.summary.arms.items()
    }
    blind = replace(study, summary=replace(study.summary, arms=arms)).claims()
    capacity = next(c for c in blind if c.claim == "a memory adds capacity")  # rests on recall alone
    assert capacity.outcome is Outcome.NOT_MEASURABLE


def test_editing_claims_judge_each_size():
    outcomes = {c.claim: c.outcome for c in committed("editing-real").claims()}
    assert outcomes["one edit: made, and the other facts kept"] is Outcome.REPRODUCED
    assert outcomes["64 edits at once: made, and the other facts kept"] is Outcome.NOT_REPRODUCED


def test_a_report_opens_with_the_verdict_table(tmp_path):
    sections = build_sections([committed("editing-real")], tmp_path)
    assert sections[0].title == "Verdicts" and len(sections) == 2


def test_many_edits_claims_judge_one_edit_by_zhu_and_batches_by_the_batch_papers():
    claims = committed("many-edits-real-quick").claims()
    single, *batches = claims
    assert single.claim.startswith("Constrained fine-tuning: one edit")
    assert single.outcome is Outcome.REPRODUCED
    assert batches and not any("(1 at once" in c.claim for c in batches)  # one edit says nothing of many
    study = committed("many-edits-real-quick")
    lost = [
        replace(row, metrics={**row.metrics, "same_subject_kept": (0.5, 0.0)})
        if (row.method, row.edits) == ("constrained", 1)
        else row
        for row in study.rows
    ]
    assert replace(study, rows=lost).claims()[0].outcome is Outcome.PARTLY  # made, but half the others lost
