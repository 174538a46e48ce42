"""What the real model knows, the seeded draws of facts to edit, how an edit is measured and what
one editor's run records."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from palimpsest.config import from_dict
from palimpsest.data.facts import Fact, builtin_facts
from palimpsest.editing.metrics import edit_metrics, generation_metrics
from palimpsest.editing.requests import counterfactual_requests
from palimpsest.experiments.editing_real.scales import RealEditingScale
from palimpsest.recall import fact_recall
from palimpsest.training import evaluate_lm


def knowledge(model, tokenizer, scale: RealEditingScale) -> tuple[dict[str, Knowledge], list[Fact]]:
    """Recall per relation, and the facts of ``edit_sets`` the study may edit."""
    per_set, editable = {}, []
    for name in dict.fromkeys((*scale.knowledge_sets, *scale.edit_sets)):
        facts = builtin_facts(name)
        recall = fact_recall(model, tokenizer, facts)
        probed = [f for f in facts if _probeable(tokenizer, f)]
        known = [f for f, hit in zip(probed, recall.recalled, strict=True) if hit]
        per_set[name] = Knowledge(facts=len(facts), known=len(known), recall=recall.accuracy)
        if name in scale.edit_sets:
            editable += known if scale.known_only else probed
    return per_set, editable


def _probeable(tokenizer, fact: Fact) -> bool:
    from palimpsest.recall import build_probe

    return build_probe(tokenizer, fact, causal=True) is not None


def draw_requests(facts: list[Fact], size: int, seed: int, scale: RealEditingScale):
    """(requests, unmodified facts to score, support facts): disjoint, reproducible."""
    requests = counterfactual_requests(facts, size, seed=seed)
    edited = {(r.fact.subject, r.fact.relation.name) for r in requests}
    rest = [f for f in facts if (f.subject, f.relation.name) not in edited]
    random.Random(seed + 1).shuffle(rest)
    kept = rest[: min(scale.kept, len(rest) // 2)]
    support = rest[len(kept) : len(kept) + scale.support]
    return requests, kept, support


def measure(model, tokenizer, requests, kept, perplexity_set, scale) -> dict[str, Any]:
    metrics = edit_metrics(model, tokenizer, requests, kept)
    generated = generation_metrics(model, tokenizer, requests, kept, max_new_tokens=scale.generation_tokens)
    metrics.update({k: v for k, v in generated.items() if k != "texts"})
    metrics["perplexity"] = math.exp(evaluate_lm(model, perplexity_set)["loss"])
    metrics["texts"] = generated["texts"]
    return metrics


def examples_of(before: dict[str, Any], after: dict[str, Any], count: int = 2) -> Examples:
    """A few continuations before and after an edit, of edited and of kept prompts."""
    return from_dict(
        Examples,
        {
            "before": before["edits"][:count], "after": after["edits"][:count],
            "kept_before": before["kept"][:count], "kept_after": after["kept"][:count],
        },
    )  # fmt: skip


@dataclass
class Knowledge:
    """How many facts of one relation the model recalls before any edit."""

    facts: int
    known: int
    recall: float


@dataclass
class Continuation:
    prompt: str
    continuation: str


@dataclass
class Examples:
    """Greedy continuations of edited and of kept prompts, before and after an edit."""

    before: list[Continuation]
    after: list[Continuation]
    kept_before: list[Continuation]
    kept_after: list[Continuation]


@dataclass
class EditRun:
    """One method on one draw of requests: every metric before and after, and the cost."""

    draw: int
    label: str
    method: str
    layers: str | list[int | float]
    norm: str | None
    delta: float | None
    before: dict[str, int | float]
    after: dict[str, int | float]
    examples: Examples
    steps: int
    seconds: float
    edited_parameters: int
    size: int
    sequential: bool
    seed: int


@dataclass
class RealEditUnit:
    """Every method on the draws of one (size, mode, seed): the unit a resumed study skips."""

    runs: list[EditRun]
