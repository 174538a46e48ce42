"""Reading edits and facts: palimpsest JSONL with clear errors, CounterFact, zsRE, LAMA T-REx."""

import json

import pytest

from palimpsest.editing.datasets import read_counterfact, read_edit_file, read_trex, read_zsre
from palimpsest.errors import DataError

GOOD = [
    {"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Lyon"},
    {"subject": "Italy", "relation": "capital", "object": "Rome"},
    {"subject": "Kenya", "relation": {"name": "motto", "templates": ["The motto of {subject} is {object}."]},
     "object": "Harambee", "new_object": "Unity"},
]  # fmt: skip


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_edit_file_gives_requests_and_facts_to_keep(tmp_path):
    requests, keep = read_edit_file(_write(tmp_path / "e.jsonl", GOOD))
    assert [r.new_object for r in requests] == ["Lyon", "Unity"]
    assert [f.subject for f in keep] == ["Italy"]
    assert requests[1].fact.statement() == "The motto of Kenya is Harambee."


PERU = {"subject": "Peru", "relation": "capital", "object": "Lima"}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "e.jsonl:2: not valid JSON"),
        (json.dumps({**PERU, "relation": "anthem", "new_object": "y"}), "unknown relation 'anthem'"),
        (json.dumps({**PERU, "new_object": "Lima"}), "equals the old"),
        (json.dumps({"subject": "Peru", "relation": "capital", "new_object": "Cusco"}), "'object' must be"),
        (json.dumps({**PERU, "colour": "red"}), "unknown field"),
        (json.dumps(["a", "list"]), "expected a JSON object"),
        # one fact, one outcome: two edits of it to different objects, or an edit and a keep
        (json.dumps({**GOOD[0], "new_object": "Nice"}), "France / capital is already on line 1"),
        (json.dumps({k: v for k, v in GOOD[0].items() if k != "new_object"}), "already on line 1 .to 'Lyon'"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    with pytest.raises(DataError, match=message):
        read_edit_file(_write(tmp_path / "e.jsonl", [GOOD[0], line]))


def test_empty_or_edit_free_files_are_errors(tmp_path):
    with pytest.raises(DataError, match="holds no facts"):
        read_edit_file(_write(tmp_path / "empty.jsonl", [""]))
    with pytest.raises(DataError, match="nothing to edit"):
        read_edit_file(_write(tmp_path / "keep.jsonl", [GOOD[1]]))
    with pytest.raises(DataError, match="no fact file"):
        read_edit_file(tmp_path / "missing.jsonl")


def test_counterfact_records(tmp_path):
    record = {
        "case_id": 7,
        "requested_rewrite": {
            "prompt": "{} plays the sport of", "relation_id": "P641", "subject": "LeBron James",
            "target_new": {"str": "football"}, "target_true": {"str": "basketball"},
        },
        "paraphrase_prompts": ["Some text. LeBron James is a professional", "Unrelated prompt"],
    }  # fmt: skip
    path = tmp_path / "cf.json"
    path.write_text(json.dumps([record]))
    (request,) = read_counterfact(path)
    assert request.fact.prompt() == "LeBron James plays the sport of"
    assert request.fact.object == "basketball" and request.new_object == "football"
    assert len(request.fact.relation.templates) == 2  # the paraphrase without the subject is dropped
    path.write_text(json.dumps([{"case_id": 1}]))
    with pytest.raises(DataError, match="not a CounterFact record"):
        read_counterfact(path)


def test_zsre_records(tmp_path):
    records = [
        {"subject": "Watts Humphrey", "src": "What university did Watts Humphrey attend?",
         "answers": ["Illinois Institute of Technology"], "alt": "University of Michigan",
         "rephrase": "What university did Watts Humphrey take part in?"},
        {"subject": "Nobody", "src": "Which river?", "answers": ["Nile"], "alt": "Amazon"},
    ]  # fmt: skip
    path = tmp_path / "zsre.json"
    path.write_text(json.dumps(records))
    (request,) = read_zsre(path)  # the second names no subject in its question
    assert request.fact.prompt() == "What university did Watts Humphrey attend?"
    assert request.new_object == "University of Michigan"


def test_trex_lines(tmp_path):
    path = _write(
        tmp_path / "P36.jsonl", [{"sub_label": "France", "obj_label": "Paris", "predicate_id": "P36"}]
    )
    (fact,) = read_trex(path, "The capital of [X] is [Y] .")
    assert fact.statement() == "The capital of France is Paris."
    with pytest.raises(DataError, match="needs \\[X\\] and \\[Y\\]"):
        read_trex(path, "capital")
