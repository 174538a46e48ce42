"""The many-edits benchmark (what each case must keep, file round trip) and the study end to end."""

import json

import pytest

from palimpsest.data.facts import Fact
from palimpsest.editing import benchmark as benchmark_module
from palimpsest.editing.benchmark import (
    BenchmarkConfig,
    build_benchmark,
    kept_facts,
    ngram_entropy,
    read_benchmark,
    write_benchmark,
)
from palimpsest.editing.datasets import read_edit_file
from palimpsest.experiments.many_edits import METHODS
from palimpsest.models import build_smollm2_like
from palimpsest.recall import RecallResult

SETS = ("country-capital", "country-currency", "country-language", "element-symbol")


@pytest.fixture
def recalls_first_half(monkeypatch):
    """A model that 'recalls' every fact whose subject starts with A to M (the rest it gets wrong)."""

    def fake_recall(_model, _tokenizer, facts, **_settings):
        hits = [fact.subject[0] <= "M" for fact in facts]
        return RecallResult(hits, [0.0] * len(facts), unprobeable=0)

    monkeypatch.setattr(benchmark_module, "fact_recall", fake_recall)


@pytest.fixture
def cases(tokenizer, recalls_first_half):
    model = build_smollm2_like(tokenizer, hidden=12, layers=2, seed=0)
    config = BenchmarkConfig(size=60, corrections=0.25, neighbours=3, seed=0)
    built, counts = build_benchmark(model, tokenizer, config, sets=SETS)
    return built, counts


def test_a_benchmark_mixes_relations_kinds_and_what_each_case_must_keep(cases):
    built, counts = cases
    assert set(counts) == {"capital", "currency", "language", "element-symbol"}
    assert all(c["recalled"] <= c["usable"] <= c["facts"] for c in counts.values())
    counterfactual = [c for c in built if c.kind == "counterfactual"]
    assert len(counterfactual) == 45
    assert {c.request.fact.relation.name for c in built[:4]} == set(counts)  # dealt round-robin
    for case in counterfactual:  # a recalled fact, changed to another object of its relation
        assert case.request.fact.subject[0] <= "M" and case.request.new_object != case.request.fact.object
    for case in built:
        if case.kind == "correction":  # a fact the model gets wrong, corrected to the truth
            assert case.request.fact.subject[0] > "M"
    edited = {(c.request.fact.subject, c.request.fact.relation.name) for c in built}
    for case in built:
        relation = case.request.fact.relation.name
        assert len(case.neighbours) == 3
        for fact in case.neighbours:  # recalled, same relation, another subject, edited by no case
            assert fact.relation.name == relation and fact.subject != case.request.fact.subject
            assert fact.subject[0] <= "M" and (fact.subject, relation) not in edited
        for fact in case.same_subject:  # recalled facts of the subject's other relations
            assert fact.subject == case.request.fact.subject and fact.relation.name != relation
            assert fact.subject[0] <= "M"


def test_a_benchmark_has_its_size_when_corrections_are_dropped(tokenizer, recalls_first_half, monkeypatch):
    """A wrong fact whose greedy answer is unusable (empty here, every other one) gives way to the next."""
    from palimpsest.editing import metrics

    calls = []

    def every_other_empty(_model, _tokenizer, prompts, **_settings):
        calls.append(len(prompts))
        return ["" if i % 2 else " Zanzibar." for i in range(len(prompts))]

    monkeypatch.setattr(metrics, "greedy_continuations", every_other_empty)
    model = build_smollm2_like(tokenizer, hidden=12, layers=2, seed=0)
    config = BenchmarkConfig(size=60, corrections=0.1, neighbours=1, seed=0)
    built, _ = build_benchmark(model, tokenizer, config, sets=SETS)
    assert len(built) == 60
    corrections = [c for c in built if c.kind == "correction"]
    assert len(corrections) == 6 and all(c.request.fact.object == "Zanzibar" for c in corrections)


def test_a_benchmark_file_reads_back_as_written_and_as_a_fact_file(cases, tmp_path):
    built, _ = cases
    path = tmp_path / "benchmark.jsonl"
    write_benchmark(path, built)
    assert read_benchmark(path) == built
    requests, keep = read_edit_file(path)
    assert requests == [case.request for case in built]
    neighbours, same = kept_facts(built)
    assert {(f.subject, f.relation.name) for f in keep} == {
        (f.subject, f.relation.name) for f in neighbours + same
    }
    assert not {(r.fact.subject, r.fact.relation.name) for r in requests} & {
        (f.subject, f.relation.name) for f in keep
    }


def test_a_run_never_counts_a_fact_it_edits_as_kept(cases):
    built, _ = cases
    with_same = next(c for c in built if c.same_subject)
    other = with_same.same_subject[0]
    editing_both = [c for c in built if (c.request.fact.subject, c.request.fact.relation.name) == (
        other.subject, other.relation.name
    )]  # fmt: skip
    neighbours, same = kept_facts([with_same, *editing_both])
    kept = {(f.subject, f.relation.name) for f in neighbours + same}
    assert ((other.subject, other.relation.name) in kept) == (not editing_both)


def test_fluency_is_lower_for_repetition():
    assert ngram_entropy(["Paris Paris Paris Paris Paris Paris"]) < ngram_entropy(
        ["the city lies on a river and has an old bridge"]
    )
    assert ngram_entropy(["Paris Paris Paris Paris"]) == 0.0


def test_bad_benchmark_lines_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    line = {"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Rome"}
    for extra, message in (
        ({"neighbours": "Spain"}, "'neighbours' must be a list of objects"),
        ({"neighbours": [{"subject": "Spain"}]}, "'object' must be a non-empty string"),
        ({"same_subject": [{"relation": "motto", "object": "x"}]}, "unknown relation 'motto'"),
        ({"kind": "rumour"}, "'kind' must be counterfactual or correction"),
    ):
        path.write_text(json.dumps({**line, **extra}) + "\n")
        with pytest.raises(Exception, match=message) as error:
            read_benchmark(path)
        assert str(error.value).startswith(f"{path}:1:")


def test_kept_facts_of_a_file_without_edits_are_refused_only_when_edits_are_needed(tmp_path):
    path = tmp_path / "keep.jsonl"
    path.write_text(json.dumps({"subject": "France", "relation": "capital", "object": "Paris"}) + "\n")
    requests, keep = read_edit_file(path, require_edits=False)
    assert requests == [] and keep[0] == Fact("France", keep[0].relation, "Paris")
    with pytest.raises(Exception, match="nothing to edit"):
        read_edit_file(path)


def test_the_study_runs_every_method_reports_and_resumes(tmp_path):
    import dataclasses

    from cli_helpers import palimpsest
    from palimpsest.experiments.many_edits.report import study_blocks
    from palimpsest.report import Figure
    from palimpsest.results import read_results

    out = tmp_path / "study"
    done = palimpsest("experiment", "many-edits", "--scale", "smoke", "--out", out)
    assert done.returncode == 0, done.stderr
    assert "What this run shows" in done.stdout  # the verdict table the report opens with
    results = read_results(json.loads((out / "results.json").read_text()))
    runs = {(o.mode, o.edits, o.batch, o.method) for o in results.outcomes}
    assert runs == {
        (mode, edits, batch, method)
        for mode, edits, batch in (("at once", 1, 1), ("at once", 4, 4), ("in sequence", 4, 2))
        for method in METHODS
        if method != "gated-memory" or mode == "at once"  # the smoke scale's sequence_methods
    }
    for outcome in results.outcomes:
        assert 0 <= outcome.metrics["made"] <= 1 and outcome.seconds > 0
        assert outcome.metrics["perplexity"] > 1
        if "paraphrase" in outcome.metrics:  # one of the paraphrases per case is the held-out one
            assert 0 <= outcome.metrics["paraphrase@held-out"] <= 1
    assert (out / "benchmark.jsonl").is_file() and "many-edits" in (out / "report.md").read_text()
    figures = lambda study: [b for b in study_blocks(study, tmp_path / "plots") if isinstance(b, Figure)]  # noqa: E731
    assert len(figures(results)) == 1  # learning vs keeping over 1 and 4 edits at once
    one_size = dataclasses.replace(results, rows=[r for r in results.rows if r.edits != 1])  # 4 at once
    assert figures(one_size) == []  # one size is no curve
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()}
    again = palimpsest("experiment", "many-edits", "--scale", "smoke", "--out", out)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (out / "units").iterdir()} == stamps  # nothing redone


def test_the_study_reuses_a_benchmark_file_and_refuses_a_bad_one(tmp_path):
    from cli_helpers import one_error_line, palimpsest
    from palimpsest.results import read_results

    first = tmp_path / "first"
    narrow = tmp_path / "narrow.yaml"
    narrow.write_text(
        "at_once: [1]\nin_sequence: []\nmethods: [ft-m]\nbenchmark_sets: [country-capital, element-symbol]\n"
    )
    done = palimpsest("experiment", "many-edits", "--scale", "smoke", "--config", narrow, "--out", first)
    assert done.returncode == 0, done.stderr
    assert set(read_results(json.loads((first / "results.json").read_text())).benchmark) == {
        "capital", "element-symbol",
    }  # only the tables asked for were probed  # fmt: skip
    second = tmp_path / "second"
    done = palimpsest(
        "experiment", "many-edits", "--scale", "smoke", "--config", narrow, "--out", second,
        "--benchmark", first / "benchmark.jsonl",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (second / "benchmark.jsonl").read_bytes() == (first / "benchmark.jsonl").read_bytes()
    assert not (second / "units" / "benchmark.json").exists()  # nothing built
    results = read_results(json.loads((second / "results.json").read_text()))
    assert {(o.edits, o.method) for o in results.outcomes} == {(1, "ft-m")}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"subject": "France"}\n')
    x = tmp_path / "x"
    line = one_error_line(
        palimpsest("experiment", "many-edits", "--scale", "smoke", "--benchmark", bad, "--out", x)
    )
    assert "bad.jsonl:1" in line
    assert not x.exists()
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("benchmark_sets: [no-such-table]\n")
    line = one_error_line(
        palimpsest("experiment", "many-edits", "--scale", "smoke", "--config", unknown, "--out", x)
    )
    assert "no-such-table" in line and not x.exists()  # refused before a model is built


def test_method_sizes_choose_the_draws_a_method_edits_and_one_draw_is_measured_once(tmp_path, monkeypatch):
    from dataclasses import replace

    from palimpsest.experiments import many_edits

    measured = []
    from palimpsest.experiments.many_edits import units

    measure = units._measure
    monkeypatch.setattr(
        units, "_measure", lambda model, tokenizer, cases, *rest: measured.append(len(cases)) or measure(
            model, tokenizer, cases, *rest
        ),
    )  # fmt: skip
    scale = replace(
        many_edits.SCALES["demo-smoke"], at_once=(1, 2), in_sequence=((2, 1),),
        methods=("ft-m", "constrained"), sequence_methods=None, method_sizes=(("constrained", (1,)),),
    )  # fmt: skip
    results = many_edits.run_many_edits_study(tmp_path, scale)
    runs = {(o.mode, o.edits, o.method) for o in results.outcomes}
    assert runs == {
        ("at once", 1, "ft-m"), ("at once", 1, "constrained"), ("at once", 2, "ft-m"),
        ("in sequence", 2, "ft-m"),
    }  # fmt: skip
    # before any edit: each draw once, though two modes edit the 2-case draw; then one per outcome
    assert sorted(measured) == sorted([1, 2, *(o.edits for o in results.outcomes)])
    at_once, in_sequence = (b.metrics for b in results.baselines if b.edits == 2)
    assert at_once == in_sequence


def test_method_batches_choose_the_sequences_a_method_edits(tmp_path):
    from dataclasses import replace

    from palimpsest.experiments import many_edits

    scale = replace(
        many_edits.SCALES["demo-smoke"], at_once=(1,), in_sequence=((2, 1), (2, 2)),
        methods=("ft-m", "constrained"), sequence_methods=None, method_sizes=(),
        method_batches=(("constrained", (2,)),),
    )  # fmt: skip
    results = many_edits.run_many_edits_study(tmp_path, scale)
    assert {(o.mode, o.batch, o.method) for o in results.outcomes} == {
        ("at once", 1, "ft-m"), ("at once", 1, "constrained"), ("in sequence", 1, "ft-m"),
        ("in sequence", 2, "ft-m"), ("in sequence", 2, "constrained"),
    }  # fmt: skip
    assert results.best("in sequence", 2, 1).method == "ft-m"  # the one method of the one-at-a-time cell
    assert {"2 in sequence one at a time", "2 in sequence in batches of 2"} <= {
        part.split(":")[0] for part in results.headline().split(" — ")[1].split("; ")
    }


def test_size_seeds_keep_a_size_to_some_seeds(tmp_path):
    from dataclasses import replace

    from palimpsest.experiments import many_edits

    scale = replace(
        many_edits.SCALES["demo-smoke"], at_once=(1, 2), in_sequence=(), methods=("ft-m",),
        sequence_methods=None, method_sizes=(), seeds=(0, 1), size_seeds=((2, (0,)),),
    )  # fmt: skip
    results = many_edits.run_many_edits_study(tmp_path, scale)
    assert sorted((o.edits, o.seed) for o in results.outcomes) == [(1, 0), (1, 1), (2, 0)]
    assert sorted((b.edits, b.seed) for b in results.baselines) == [(1, 0), (1, 1), (2, 0)]


@pytest.mark.parametrize(
    "fields",
    [
        {"size_seeds": ((3, (0,)),)},  # no draw of 3
        {"size_seeds": ((4, (5,)),)},  # a seed the run does not have
        {"size_seeds": ((4, ()),)},  # no seed: the size would vanish from the results
        {"method_sizes": (("no-such-editor", (1,)),)},
        {"method_sizes": (("ft-m", (3,)),)},  # the smoke scale draws 1 and 4
        {"method_batches": (("ft-m", (3,)),)},  # the smoke scale's sequence goes in batches of 2
        {"method_batches": (("no-such-editor", (2,)),)},
        {"methods": ("memitt",)},
    ],
)
def test_a_scale_naming_an_unknown_method_or_sizes_it_never_draws_is_refused(fields):
    from dataclasses import replace

    from palimpsest.errors import ConfigError
    from palimpsest.experiments.many_edits import SCALES

    with pytest.raises(ConfigError):
        replace(SCALES["demo-smoke"], **fields)


def test_a_sequence_killed_midway_goes_on_from_its_saved_progress(tmp_path, monkeypatch):
    from dataclasses import replace

    from palimpsest.editing.memit import BatchEditor
    from palimpsest.experiments import many_edits

    scale = replace(
        many_edits.SCALES["demo-smoke"], at_once=(), in_sequence=((4, 1),), methods=("palimpsest",),
        sequence_methods=None, method_sizes=(),
    )  # fmt: skip
    straight = many_edits.run_many_edits_study(tmp_path / "straight", scale).outcomes[0]
    monkeypatch.setattr(many_edits.progress, "SEQUENCE_SAVE_SECONDS", 0.0)  # save after every batch
    applied, apply = [], BatchEditor.apply

    def killed_at_the_third(self, *args, **kwargs):
        applied.append(1)
        if len(applied) == 3:
            raise KeyboardInterrupt
        return apply(self, *args, **kwargs)

    monkeypatch.setattr(BatchEditor, "apply", killed_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        many_edits.run_many_edits_study(tmp_path / "killed", scale)
    progress = tmp_path / "killed" / "units" / "in-sequence-4-b1-s0-palimpsest.progress"
    assert json.loads((progress / "progress.json").read_text())["batches"] == 2
    applied.clear()
    monkeypatch.setattr(BatchEditor, "apply", lambda self, *a, **k: applied.append(1) or apply(self, *a, **k))
    resumed = many_edits.run_many_edits_study(tmp_path / "killed", scale).outcomes[0]
    assert len(applied) == 2  # the third and fourth batches only
    assert resumed.metrics == straight.metrics and not progress.exists()
