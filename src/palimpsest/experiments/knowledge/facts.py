"""What the model knows before: the survey of recalled facts, the seeded draws of facts to teach,
and the measurement of a model on a draw."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from palimpsest.data.facts import Fact, builtin_facts, city_facts
from palimpsest.editing.metrics import greedy_continuations
from palimpsest.editing.requests import counterfactual_requests
from palimpsest.errors import DataError
from palimpsest.experiments.knowledge.scales import KnowledgeScale
from palimpsest.recall import EVALUATION_PASSAGES, after_text, build_probe, fact_recall, text_passages
from palimpsest.storage import resumable
from palimpsest.training import evaluate_lm


@dataclass
class Known:
    """How many facts of one relation the model recalls before any training."""

    facts: int
    recalled: int
    recall: float


@dataclass
class Draw:
    """The taught facts of one (N, seed): each fact with the object taught, and the kept facts."""

    taught: list[Fact]
    #: The object the model held before (counterfactuals) or ``None`` (facts it got wrong).
    previous: list[str | None]
    kept: list[Fact]

    @property
    def counterfactuals(self) -> int:
        return sum(p is not None for p in self.previous)


def survey(
    model, tokenizer, scale: KnowledgeScale, *, stored: str | Path | None = None
) -> tuple[dict[str, Known], list[Fact], list[Fact]]:
    """Per relation, what the model recalls; the recalled facts, and city facts it gets wrong.

    Only facts whose answer, through the first template and the held-out paraphrase, the
    tokenizer keeps apart from the prompt take part (the others cannot be probed). With
    ``stored`` (a file), the recall of every fact is kept there, so a resumed study does not
    probe thousands of facts again.
    """
    sets = {name: builtin_facts(name) for name in scale.known_sets}
    sets["city-country"] = city_facts(scale.cities)
    probeable = {name: [f for f in facts if _probeable(tokenizer, f)] for name, facts in sets.items()}

    def recall() -> dict[str, list[bool]]:
        return {
            name: fact_recall(model, tokenizer, facts).recalled if facts else []
            for name, facts in probeable.items()
        }

    key = {"model": scale.model, "known_sets": scale.known_sets, "cities": scale.cities}
    hits_by_set = resumable(stored, key, recall) if stored is not None else recall()
    known: dict[str, Known] = {}
    recalled: list[Fact] = []
    wrong: list[Fact] = []
    for name, facts in probeable.items():
        hits = hits_by_set[name]
        known[name] = Known(facts=len(sets[name]), recalled=sum(hits), recall=sum(hits) / max(len(facts), 1))
        if not scale.known_only:
            hits = [name != "city-country"] * len(facts)
        recalled += [f for f, hit in zip(facts, hits, strict=True) if hit]
        if name == "city-country":
            wrong += [f for f, hit in zip(facts, hits, strict=True) if not hit]
    if not scale.known_only:  # a random model: half the cities stand in for known facts
        recalled += wrong[1::2]
        wrong = wrong[0::2]
    return known, recalled, wrong


def _probeable(tokenizer, fact: Fact) -> bool:
    templates = [0] + ([t] if (t := fact.held_out_template()) is not None else [])
    return all(build_probe(tokenizer, fact, template=t, causal=True) is not None for t in templates)


def draw(recalled: list[Fact], wrong: list[Fact], size: int, seed: int, scale: KnowledgeScale) -> Draw:
    """N facts to teach and ``kept`` recalled facts to keep, disjoint and reproducible."""
    count = round(size * scale.counterfactual_share)
    editable = len(recalled) - scale.kept
    if count > editable or size - count > len(wrong):
        raise DataError(
            f"{size} facts at a counterfactual share of {scale.counterfactual_share:g} need {count} recalled "
            f"facts beside {scale.kept} kept ones and {size - count} unknown cities; the model recalls "
            f"{len(recalled)} and gets {len(wrong)} cities wrong"
        )
    rng = random.Random(seed)
    pool = list(recalled)
    rng.shuffle(pool)
    kept, editable_pool = pool[: scale.kept], pool[scale.kept :]
    requests = counterfactual_requests(editable_pool, count, seed=seed) if count else []
    unknown = rng.sample(wrong, size - count)
    taught = [r.new_fact for r in requests] + unknown
    previous: list[str | None] = [r.fact.object for r in requests] + [None] * len(unknown)
    return Draw(taught=taught, previous=previous, kept=kept)


def measure(model, tokenizer, chosen: Draw, perplexity_set, scale: KnowledgeScale) -> dict[str, float]:
    """Learning, forgetting and fluency of the model as it is now."""
    taught = chosen.taught
    paraphrased = [(f, f.held_out_template()) for f in taught]
    paraphrased = [(f, t) for f, t in paraphrased if t is not None]
    paraphrase_hits: list[bool] = []
    for template in sorted({t for _, t in paraphrased}):
        group = [f for f, t in paraphrased if t == template]
        paraphrase_hits += fact_recall(model, tokenizer, group, template=template).recalled
    prompts = [f.prompt(0) for f in taught] + [f.prompt(0) for f in chosen.kept]
    texts = greedy_continuations(model, tokenizer, prompts, max_new_tokens=scale.generation_tokens)
    written, kept_written = texts[: len(taught)], texts[len(taught) :]
    passages = text_passages(EVALUATION_PASSAGES, seed=0, split="validation")

    def after_text_recall(facts: Sequence[Fact]) -> float:
        """Recall through the first template after each held-out passage of unrelated text."""
        hits: list[bool] = []
        for passage in passages:
            hits += fact_recall(model, tokenizer, facts, context=after_text(passage)).recalled
        return _share(hits)

    return {
        "learned": fact_recall(model, tokenizer, taught).accuracy,
        "learned_after_text": after_text_recall(taught),
        "paraphrase": _share(paraphrase_hits),
        "generation": _share([f.object in text for f, text in zip(taught, written, strict=True)]),
        "kept": fact_recall(model, tokenizer, chosen.kept).accuracy,
        "kept_after_text": after_text_recall(chosen.kept),
        "kept_generation": _share(
            [f.object in text for f, text in zip(chosen.kept, kept_written, strict=True)]
        ),
        "perplexity": math.exp(evaluate_lm(model, perplexity_set)["loss"]),
    }


def _share(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else math.nan


@dataclass
class Baseline:
    """The pretrained model on one draw, before any arm: every measure."""

    size: int
    seed: int
    counterfactuals: int
    before: dict[str, float]
