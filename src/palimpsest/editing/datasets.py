"""Reading edit requests and facts from files: palimpsest's JSONL and the public formats.

``palimpsest`` JSONL (what ``palimpsest edit --facts`` reads), one object per line::

    {"subject": "France", "relation": "capital", "object": "Paris", "new_object": "Lyon"}
    {"subject": "Italy", "relation": "capital", "object": "Rome"}
    {"subject": "Kenya", "relation": {"name": "anthem", "templates": ["{subject}'s anthem is {object}."]},
     "object": "Ee Mungu Nguvu Yetu"}

A line with ``new_object`` is an edit request; a line without one is a fact to keep (it is
measured, never trained on). An edit line may also name the facts it must leave alone, as the
benchmark of :mod:`palimpsest.editing.benchmark` writes them: ``"neighbours": [{"subject",
"object"}]`` (other subjects of its relation), ``"same_subject": [{"relation", "object"}]``
(other relations of its subject), and ``"kind"`` (``counterfactual`` or ``correction``); they
are kept facts too. ``relation`` names a built-in relation (``capital``,
``currency``, ``continent``, ``language``, ``element-symbol``, ``atomic-number``,
``city-country``) or gives its own templates.

Public formats: CounterFact (ROME's ``counterfact.json``), zsRE as used by MEND/ROME
(``zsre_mend_eval.json``) and LAMA T-REx (one relation's JSONL, with the relation's
``[X] ... [Y]`` template). Each record keeps its own relation (its prompt and paraphrases
as templates), since these sets phrase every fact differently.

Every problem is a :class:`~palimpsest.errors.DataError` naming the file and line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palimpsest.data.facts import (
    ATOMIC_NUMBER,
    CAPITAL,
    CITY_COUNTRY,
    CONTINENT,
    CURRENCY,
    LANGUAGE,
    SYMBOL,
    Fact,
    Relation,
)
from palimpsest.editing.requests import EditRequest
from palimpsest.errors import DataError

RELATIONS: dict[str, Relation] = {
    relation.name: relation
    for relation in (CAPITAL, CURRENCY, CONTINENT, LANGUAGE, SYMBOL, ATOMIC_NUMBER, CITY_COUNTRY)
}


def _lines(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no fact file at '{path}'")
    try:
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark (Windows editors) is no error
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 text") from None
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}:{number}: expected a JSON object")
        records.append((number, record))
    if not records:
        raise DataError(f"'{path}' holds no facts")
    return records


def _text(record: dict[str, Any], key: str, where: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: '{key}' must be a non-empty string")
    return value.strip()


def _relation(value: Any, where: str) -> Relation:
    if isinstance(value, str):
        if value not in RELATIONS:
            raise DataError(
                f"{where}: unknown relation '{value}' (known: {', '.join(RELATIONS)}, or give templates)"
            )
        return RELATIONS[value]
    if isinstance(value, dict) and isinstance(value.get("templates"), list):
        if not all(isinstance(template, str) for template in value["templates"]) or not isinstance(
            value.get("name", "custom"), str
        ):
            raise DataError(f"{where}: a relation's name and templates must be strings")
        try:
            return Relation(str(value.get("name", "custom")), tuple(value["templates"]))
        except DataError as error:
            raise DataError(f"{where}: {error}") from None
    raise DataError(f'{where}: \'relation\' must be a relation name or {{"name", "templates"}}')


@dataclass(frozen=True)
class EditLine:
    """One line of a fact file: an edit request (or None: a fact to keep) and what it must keep."""

    where: str
    fact: Fact
    request: EditRequest | None
    kind: str
    neighbours: tuple[Fact, ...]
    same_subject: tuple[Fact, ...]


def _kept_facts(record: dict[str, Any], where: str, fact: Fact) -> tuple[tuple[Fact, ...], tuple[Fact, ...]]:
    """An edit line's neighbours (same relation) and same-subject facts (other relations)."""
    lists = []
    for key in ("neighbours", "same_subject"):
        value = record.get(key, [])
        if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
            raise DataError(f"{where}: '{key}' must be a list of objects")
        lists.append(value)
    neighbours = tuple(
        Fact(_text(item, "subject", where), fact.relation, _text(item, "object", where)) for item in lists[0]
    )
    same = tuple(
        Fact(fact.subject, _relation(item.get("relation"), where), _text(item, "object", where))
        for item in lists[1]
    )
    return neighbours, same


def read_edit_records(path: str | Path) -> list[EditLine]:
    """Every line of a palimpsest fact file, validated (one line, one problem, named)."""
    lines = []
    seen: dict[tuple[str, str], tuple[str, str | None]] = {}  # (subject, relation) -> (line, new object)
    for number, record in _lines(path):
        where = f"{path}:{number}"
        unknown = set(record) - {"subject", "relation", "object", "new_object", *EDIT_LINE_EXTRAS}
        if unknown:
            raise DataError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        fact = Fact(
            _text(record, "subject", where),
            _relation(record.get("relation"), where),
            _text(record, "object", where),
        )
        key, target = (fact.subject, fact.relation.name), record.get("new_object")
        if key in seen:  # twice the same line would count one edit twice in A_M
            first, earlier = seen[key]
            if earlier == target:
                raise DataError(
                    f"{where}: repeats {first} ({fact.subject} / {fact.relation.name}); give each fact once"
                )
            raise DataError(
                f"{where}: {fact.subject} / {fact.relation.name} is already on {first} "
                f"({'to ' + repr(earlier) if earlier else 'to keep'}); one fact, one outcome"
            )
        seen.setdefault(key, (f"line {number}", target))
        request = None
        if "new_object" in record:
            try:
                request = EditRequest(fact, _text(record, "new_object", where))
            except DataError as error:
                raise DataError(f"{where}: {error}") from None
        kind = record.get("kind", "counterfactual")
        if kind not in ("counterfactual", "correction"):
            raise DataError(f"{where}: 'kind' must be counterfactual or correction, got {kind!r}")
        neighbours, same_subject = _kept_facts(record, where, fact)
        lines.append(EditLine(where, fact, request, kind, neighbours, same_subject))
    return lines


#: The fields an edit line may carry besides its fact (see the module docstring).
EDIT_LINE_EXTRAS = ("kind", "neighbours", "same_subject")


def read_edit_file(path: str | Path, *, require_edits: bool = True) -> tuple[list[EditRequest], list[Fact]]:
    """palimpsest JSONL -> (edit requests, facts to keep). Validates every line first.

    The facts to keep are the lines without ``new_object`` and every line's neighbours and
    same-subject facts, each once, leaving out any fact the file edits."""
    lines = read_edit_records(path)
    requests = [line.request for line in lines if line.request is not None]
    edited = {(r.fact.subject, r.fact.relation.name) for r in requests}
    keep: dict[tuple[str, str], Fact] = {}
    for line in lines:
        for fact in (line.fact,) if line.request is None else (*line.neighbours, *line.same_subject):
            key = (fact.subject, fact.relation.name)
            if key not in edited:
                keep.setdefault(key, fact)
    if require_edits and not requests:
        raise DataError(f"'{path}' has no line with a 'new_object': nothing to edit")
    return requests, list(keep.values())


def _templated(prompt: str, subject: str) -> str | None:
    """A prompt with its subject made a placeholder, and the object after it (None: no subject)."""
    if "{}" in prompt:
        prompt = prompt.replace("{}", "{subject}", 1)
    elif subject in prompt:
        prompt = prompt.replace(subject, "{subject}", 1)
    else:
        return None
    return prompt.rstrip() + " {object}"


def read_counterfact(path: str | Path, limit: int | None = None) -> list[EditRequest]:
    """ROME's CounterFact: ``requested_rewrite`` with its prompt, and paraphrases as extra templates."""
    records = _json_list(path)
    requests = []
    for index, record in enumerate(records[:limit]):
        try:
            rewrite = record["requested_rewrite"]
            subject = rewrite["subject"]
            templates = [_templated(rewrite["prompt"], subject)]
            templates += [_templated(p, subject) for p in record.get("paraphrase_prompts", [])]
            relation = Relation(f"{rewrite.get('relation_id', 'counterfact')}:{record.get('case_id', index)}",
                                tuple(t for t in templates if t))  # fmt: skip
            fact = Fact(subject, relation, rewrite["target_true"]["str"].strip())
            requests.append(EditRequest(fact, rewrite["target_new"]["str"].strip()))
        except (KeyError, TypeError, AttributeError) as error:
            raise DataError(f"{path}: record {index} is not a CounterFact record (missing {error})") from None
    return requests


def read_zsre(path: str | Path, limit: int | None = None) -> list[EditRequest]:
    """zsRE as MEND/ROME ship it: a question (``src``) with ``answers``, ``alt`` and ``rephrase``."""
    records = _json_list(path)
    requests = []
    for index, record in enumerate(records[:limit]):
        try:
            subject, answers = record["subject"], record["answers"]
            templates = [_templated(record["src"], subject), _templated(record.get("rephrase", ""), subject)]
            templates = [t for t in templates if t]
            if not templates or not answers or record["alt"].strip() == answers[0].strip():
                continue  # the question does not name its subject, or the edit changes nothing
            relation = Relation(f"zsre:{index}", tuple(templates))
            requests.append(EditRequest(Fact(subject, relation, answers[0].strip()), record["alt"].strip()))
        except (KeyError, TypeError, AttributeError, IndexError) as error:
            raise DataError(f"{path}: record {index} is not a zsRE record (missing {error})") from None
    if not requests:
        raise DataError(f"'{path}' holds no usable zsRE record")
    return requests


def read_trex(path: str | Path, template: str) -> list[Fact]:
    """LAMA T-REx facts of one relation (``sub_label``, ``obj_label``) with its ``[X] ... [Y]`` template."""
    if "[X]" not in template or "[Y]" not in template:
        raise DataError(f"T-REx template {template!r} needs [X] and [Y]")
    sentence = template.replace("[X]", "{subject}").replace("[Y]", "{object}").replace(" .", ".")
    facts = []
    for number, record in _lines(path):
        if "predicate_id" not in record:
            raise DataError(f"{path}:{number}: not a LAMA T-REx line (no predicate_id)")
        relation = Relation(record["predicate_id"], (sentence,))
        facts.append(Fact(_text(record, "sub_label", f"{path}:{number}"), relation,
                          _text(record, "obj_label", f"{path}:{number}")))  # fmt: skip
    return facts


def _json_list(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"no file at '{path}'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: not valid JSON ({error.msg} at line {error.lineno})") from None
    if not isinstance(data, list) or not data:
        raise DataError(f"{path}: expected a non-empty JSON list of records")
    return data
