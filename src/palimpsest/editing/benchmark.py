"""A CounterFact-style benchmark of many edits, built from the fact tables palimpsest ships.

CounterFact (ROME) asks three things of every edit: that it holds for the prompt and its
paraphrases, that other subjects of the relation keep their object (*neighbourhood*), and
that the edit does not spread to what else is known of the subject. One :class:`BenchmarkCase`
carries all three for one request:

* the request, either a **counterfactual** (a fact the model recalls, changed to another
  object of the same relation) or a **correction** (a true fact the model gets wrong; its
  ``object`` is the model's own greedy answer, its ``new_object`` the truth);
* paraphrases: the relation's other templates (every built-in relation has three or four);
* ``neighbours``: facts of the same relation the model recalls, drawn from a pool that no case
  edits, so that they must keep their object in a run of any size;
* ``same_subject``: facts of *other* relations of the subject that the model recalls (editing
  France's capital must not change France's currency). A run that also edits one of them
  leaves it out of the count (:func:`kept_facts`).

Cases are dealt round-robin over the relations, so the first ``n`` of a shuffled benchmark
mix every relation. :func:`write_benchmark` writes palimpsest's fact-file JSONL, which
``palimpsest edit --facts`` and ``palimpsest evaluate --facts`` read
(:mod:`palimpsest.editing.datasets`).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from palimpsest.data.facts import Fact, builtin_facts, city_facts
from palimpsest.editing.requests import EditRequest
from palimpsest.errors import DataError
from palimpsest.recall import build_probe, fact_recall
from palimpsest.storage import write_text

logger = logging.getLogger(__name__)

#: The built-in fact sets a benchmark draws from (``city-country``: cities of at least
#: :attr:`BenchmarkConfig.min_city_population` people).
BENCHMARK_SETS = (
    "country-capital", "country-currency", "country-continent", "country-language",
    "element-symbol", "atomic-number", "city-country",
)  # fmt: skip


@dataclass(frozen=True)
class BenchmarkConfig:
    """How many cases, of which kinds, with how many neighbours."""

    size: int = 2_000
    #: Share of the cases that correct a fact the model gets wrong (the rest are counterfactual).
    corrections: float = 0.25
    #: Neighbourhood facts per case.
    neighbours: int = 5
    #: Share of each relation's recalled facts kept aside as neighbours (never edited).
    neighbour_pool: float = 0.2
    min_city_population: int = 100_000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.size <= 0 or self.neighbours < 0:
            raise DataError("a benchmark needs size > 0 and neighbours >= 0")
        if not 0 <= self.corrections <= 1 or not 0 < self.neighbour_pool < 1:
            raise DataError("benchmark shares: corrections in [0, 1], neighbour_pool in (0, 1)")


@dataclass(frozen=True)
class BenchmarkCase:
    """One edit request and the facts it must leave alone."""

    request: EditRequest
    kind: str  # "counterfactual" or "correction"
    neighbours: tuple[Fact, ...]
    same_subject: tuple[Fact, ...]


def _key(fact: Fact) -> tuple[str, str]:
    return fact.subject, fact.relation.name


def subject_ends_cleanly(tokenizer: PreTrainedTokenizerBase, fact: Fact, template: int = 0) -> bool:
    """Whether a token of the prompt ends exactly at the subject (the batch editors read there)."""
    lead = fact.relation.templates[template % len(fact.relation.templates)].split("{subject}")[0]
    through = tokenizer(lead + fact.subject, add_special_tokens=False)["input_ids"]
    prompt = tokenizer(fact.prompt(template), add_special_tokens=False)["input_ids"]
    return prompt[: len(through)] == through


def _usable(tokenizer: PreTrainedTokenizerBase, fact: Fact) -> bool:
    return build_probe(tokenizer, fact, causal=True) is not None and subject_ends_cleanly(tokenizer, fact)


def _model_answer(text: str) -> str:
    """The model's answer in a greedy continuation: up to the first punctuation or line break."""
    for stop in ".,;:!?\n(":
        text = text.split(stop)[0]
    return text.strip()


def _round_robin(groups: dict[str, list], count: int) -> list:
    """Up to ``count`` items, one from each group in turn (groups already shuffled)."""
    queues = {name: list(items) for name, items in groups.items() if items}
    dealt: list = []
    while len(dealt) < count and queues:
        for name in list(queues):
            if len(dealt) == count:
                break
            dealt.append(queues[name].pop(0))
            if not queues[name]:
                del queues[name]
    return dealt


def build_benchmark(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    config: BenchmarkConfig | None = None,
    *,
    sets: Sequence[str] = BENCHMARK_SETS,
) -> tuple[list[BenchmarkCase], dict[str, dict[str, int]]]:
    """The benchmark for this model (what it recalls decides the cases), and per relation the
    facts, usable facts and recalled facts it was drawn from."""
    from palimpsest.editing.metrics import greedy_continuations

    config = config or BenchmarkConfig()
    rng = random.Random(config.seed)
    recalled: dict[str, list[Fact]] = {}
    missed: dict[str, list[Fact]] = {}
    counts: dict[str, dict[str, int]] = {}
    for name in sets:
        facts = (
            city_facts(min_population=config.min_city_population)
            if name == "city-country"
            else builtin_facts(name)
        )
        usable = [fact for fact in facts if _usable(tokenizer, fact)]
        hits = fact_recall(model, tokenizer, usable).recalled if usable else []
        relation = facts[0].relation.name
        recalled[relation] = [f for f, hit in zip(usable, hits, strict=True) if hit]
        missed[relation] = [f for f, hit in zip(usable, hits, strict=True) if not hit]
        counts[relation] = {"facts": len(facts), "usable": len(usable), "recalled": len(recalled[relation])}
        logger.info("benchmark: %s recalled %d of %d", relation, len(recalled[relation]), len(usable))
    pool: dict[str, list[Fact]] = {}
    editable: dict[str, list[Fact]] = {}
    for relation, facts in recalled.items():
        facts = list(facts)
        rng.shuffle(facts)
        reserved = max(config.neighbours, round(config.neighbour_pool * len(facts)))
        pool[relation], editable[relation] = facts[:reserved], facts[reserved:]
        rng.shuffle(missed[relation])
    objects = {
        relation: sorted({f.object for f in recalled[relation] + missed[relation]}) for relation in recalled
    }

    counterfactual = _round_robin(editable, config.size - round(config.size * config.corrections))
    known_by_subject: dict[str, list[Fact]] = {}
    for facts in recalled.values():
        for fact in facts:
            known_by_subject.setdefault(fact.subject, []).append(fact)

    cases = []
    for fact in counterfactual:
        choices = [o for o in objects[fact.relation.name] if o != fact.object]
        if choices:
            cases.append((EditRequest(fact, rng.choice(choices)), "counterfactual"))
    wanted_corrections = config.size - len(cases)
    # Drawn with room to spare: a correction whose greedy answer is empty, already right or not
    # probeable is dropped, and the next one in turn takes its place.
    corrections = _round_robin(missed, wanted_corrections + max(8, wanted_corrections // 20))
    answers = greedy_continuations(model, tokenizer, [f.prompt() for f in corrections], max_new_tokens=6)
    made_corrections = 0
    for fact, text in zip(corrections, answers, strict=True):
        if made_corrections == wanted_corrections:
            break
        answer = _model_answer(text)
        believed = Fact(fact.subject, fact.relation, answer)
        if answer and answer != fact.object and build_probe(tokenizer, believed, causal=True) is not None:
            cases.append((EditRequest(believed, fact.object), "correction"))
            made_corrections += 1
    built = []
    for request, kind in cases:
        relation = request.fact.relation.name
        others = [f for f in pool[relation] if f.subject != request.fact.subject]
        neighbours = tuple(rng.sample(others, min(config.neighbours, len(others))))
        same = tuple(f for f in known_by_subject.get(request.fact.subject, []) if f.relation.name != relation)
        built.append(BenchmarkCase(request, kind, neighbours, same))
    if len(built) < config.size:
        logger.warning("benchmark: %d cases of the %d asked (the tables ran out)", len(built), config.size)
    return built, counts


def kept_facts(cases: Iterable[BenchmarkCase]) -> tuple[list[Fact], list[Fact]]:
    """(neighbours, same-subject facts) of a run of ``cases``: each fact once, none the run edits."""
    cases = list(cases)
    edited = {_key(case.request.fact) for case in cases}
    neighbours: dict[tuple[str, str], Fact] = {}
    same: dict[tuple[str, str], Fact] = {}
    for case in cases:
        for fact in case.neighbours:
            if _key(fact) not in edited:
                neighbours.setdefault(_key(fact), fact)
        for fact in case.same_subject:
            if _key(fact) not in edited:
                same.setdefault(_key(fact), fact)
    return list(neighbours.values()), [f for k, f in same.items() if k not in neighbours]


def _fact_line(fact: Fact) -> dict[str, str]:
    return {"subject": fact.subject, "relation": fact.relation.name, "object": fact.object}


def write_benchmark(path: str | Path, cases: Sequence[BenchmarkCase]) -> None:
    """The cases as palimpsest fact-file JSONL: one edit per line, with the facts it must keep."""
    lines = []
    for case in cases:
        record = {
            **_fact_line(case.request.fact),
            "new_object": case.request.new_object,
            "kind": case.kind,
            "neighbours": [{"subject": f.subject, "object": f.object} for f in case.neighbours],
            "same_subject": [{"relation": f.relation.name, "object": f.object} for f in case.same_subject],
        }
        lines.append(json.dumps(record, ensure_ascii=False))
    write_text(Path(path), "\n".join(lines) + "\n")


def read_benchmark(path: str | Path) -> list[BenchmarkCase]:
    """The cases of a file :func:`write_benchmark` wrote (validated like any fact file)."""
    from palimpsest.editing.datasets import read_edit_records

    cases = []
    for line in read_edit_records(path):
        if line.request is None:
            raise DataError(f"{line.where}: a benchmark line needs a 'new_object'")
        cases.append(BenchmarkCase(line.request, line.kind, line.neighbours, line.same_subject))
    return cases


def ngram_entropy(texts: Sequence[str], orders: tuple[int, ...] = (2, 3)) -> float:
    """Fluency as ROME measures it: the entropy (bits) of each text's word n-gram frequencies,
    bigrams and trigrams weighted 2:4, averaged over texts. A model that repeats itself after an
    edit ("Paris Paris Paris") scores low; ordinary text of 30 words scores about 4-5 bits."""
    import math
    from collections import Counter

    weights = [2 * order / 3 for order in range(1, len(orders) + 1)]
    scores = []
    for text in texts:
        words = text.split()
        entropies = []
        for order in orders:
            grams = Counter(tuple(words[i : i + order]) for i in range(len(words) - order + 1))
            total = sum(grams.values())
            entropies.append(-sum(c / total * math.log2(c / total) for c in grams.values()) if total else 0.0)
        scores.append(sum(w * e for w, e in zip(weights, entropies, strict=True)) / sum(weights))
    return sum(scores) / len(scores) if scores else float("nan")


def benchmark_metrics(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cases: Sequence[BenchmarkCase],
    *,
    generation_tokens: int = 8,
    fluency_prompts: int = 20,
    fluency_tokens: int = 30,
) -> dict[str, float]:
    """What a run of ``cases`` did to the model as it is now (fractions in [0, 1]):

    ``made`` exact match of the new object for the prompt as a user writes it (also per kind:
    ``made[counterfactual]``, ``made[correction]``), ``made@after-text``
    after a passage of unrelated text (mean of a few), ``efficacy`` P(new) > P(old), ``paraphrase``
    / ``paraphrase_efficacy`` the same through every other template of the relation,
    ``paraphrase@held-out`` through the one template per subject that an editor fitting the
    relation's other templates leaves out (:meth:`~palimpsest.data.facts.Fact.held_out_template`),
    ``generation`` the greedy continuation names the new object; ``neighbourhood_kept`` /
    ``same_subject_kept`` exact recall of the facts it must leave alone (:func:`kept_facts`; all
    recalled before any edit), also ``@after-text``; ``fluency`` :func:`ngram_entropy` of text
    generated from the edited subjects. With a tokenizer that has a chat template,
    ``generation@chat``: the prompt sent as a user's chat message, and the assistant's greedy
    answer names the new object."""
    from palimpsest.editing.metrics import _pairwise, _share, greedy_continuations, probe_or_fail
    from palimpsest.recall import EVALUATION_PASSAGES, after_text, score_probes, text_passages

    if not cases:
        raise DataError("no benchmark cases to measure")
    requests = [case.request for case in cases]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    edited = [(r.fact, 0, r.new_object, r.fact.object) for r in requests]
    made, _old, beats = _pairwise(model, tokenizer, edited)
    metrics: dict[str, float] = {"made": _share(made), "efficacy": _share(beats), "edits": len(cases)}
    for kind in ("counterfactual", "correction"):
        of_kind = [hit for hit, case in zip(made, cases, strict=True) if case.kind == kind]
        if of_kind:
            metrics[f"made[{kind}]"] = _share(of_kind)
    paraphrased = [
        (r.fact, t, r.new_object, r.fact.object)
        for r in requests
        for t in range(1, len(r.fact.relation.templates))
    ]
    usable = [
        (fact, template, new, old)
        for fact, template, new, old in paraphrased
        if build_probe(tokenizer, fact, template=template, object_=new, causal=True) is not None
        and build_probe(tokenizer, fact, template=template, object_=old, causal=True) is not None
    ]
    if usable:
        exact, _, beats = _pairwise(model, tokenizer, usable)
        metrics["paraphrase"], metrics["paraphrase_efficacy"] = _share(exact), _share(beats)
        held_out = [
            hit
            for hit, (fact, t, _n, _o) in zip(exact, usable, strict=True)
            if t == fact.held_out_template(0)
        ]
        if held_out:
            metrics["paraphrase@held-out"] = _share(held_out)
    neighbours, same = kept_facts(cases)
    contexts = [after_text(p) for p in text_passages(EVALUATION_PASSAGES, seed=0, split="validation")]
    groups = {
        "made": [r.new_fact for r in requests],
        "neighbourhood_kept": neighbours,
        "same_subject_kept": same,
    }
    for name, facts in groups.items():
        if not facts:
            continue
        if name != "made":
            probes = [probe_or_fail(tokenizer, f, 0, f.object, True) for f in facts]
            metrics[name] = _share(score_probes(model, probes, pad_id=pad)[0])
        hits: list[bool] = []
        for context in contexts:
            probes = [probe_or_fail(tokenizer, f, 0, f.object, True, context) for f in facts]
            hits += score_probes(model, probes, pad_id=pad)[0]
        metrics[f"{name}@after-text"] = _share(hits)
    continuations = greedy_continuations(
        model, tokenizer, [r.fact.prompt() for r in requests], max_new_tokens=generation_tokens
    )
    metrics["generation"] = _share([r.new_object in t for r, t in zip(requests, continuations, strict=True)])
    if getattr(tokenizer, "chat_template", None):  # asked as a chat user asks, answered as the assistant
        chats = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": r.fact.prompt()}], tokenize=False, add_generation_prompt=True
            )
            for r in requests
        ]
        answers = greedy_continuations(model, tokenizer, chats, max_new_tokens=2 * generation_tokens)
        metrics["generation@chat"] = _share(
            [r.new_object in t for r, t in zip(requests, answers, strict=True)]
        )
    subjects = list(dict.fromkeys(r.fact.subject for r in requests))[:fluency_prompts]
    texts = greedy_continuations(model, tokenizer, subjects, max_new_tokens=fluency_tokens)
    metrics["fluency"] = ngram_entropy(texts)
    return metrics
