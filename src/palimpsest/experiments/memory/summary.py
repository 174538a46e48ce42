"""The memory study's summary: each arm over seeds, the comparisons between arms, the verdict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from palimpsest.experiments.common import (
    consistent_across_seeds,
    mean_std,
)
from palimpsest.experiments.memory.findings import FINDINGS
from palimpsest.experiments.memory.scales import MemoryScale

ARM_METRICS = ("validation_loss", "validation_perplexity", "recall", "train_seconds", "parameters")


USAGE_METRICS = ("used", "kl_counts", "kl_weights", "gini", "slots_50", "slots_90", "slots_99")


def summarise(units: list[MemoryUnit], settings: MemoryScale) -> MemoryStudySummary:
    """Per arm, mean ± std over seeds; paired comparisons; the verdict."""
    by_arm: dict[str, list[MemoryUnit]] = {}
    for unit in units:
        by_arm.setdefault(unit.arm, []).append(unit)
    table: dict[str, ArmSummary] = {}
    for arm, group in by_arm.items():
        row: dict[str, Any] = {name: mean_std([getattr(u, name) for u in group]) for name in ARM_METRICS}
        if group[0].usage is not None:
            row.update({name: mean_std([u.usage[name] for u in group]) for name in USAGE_METRICS})
            row["outdated"] = mean_std([u.outdated for u in group])
        table[arm] = ArmSummary(**row, seeds=len(group))
    comparisons = [
        _compare(by_arm, a, b, metric, better)
        for a, b, metric, better in COMPARISONS
        if a in by_arm and b in by_arm
    ]
    return MemoryStudySummary(arms=table, comparisons=comparisons, verdict=_verdict(comparisons, settings))


#: ``(a, b, metric, expected)``: arm a against arm b, paired by seed; what the papers lead one to expect.
COMPARISONS = (
    ("no-ffn", "no-memory", "validation_loss", "higher"),
    ("no-ffn", "no-memory", "recall", "lower"),
    ("wide-ffn", "no-memory", "validation_loss", "lower"),
    ("wide-ffn", "no-memory", "recall", "higher"),
    ("residual-scratch", "no-memory", "recall", "higher"),
    ("residual-scratch", "ffn-equal-compute", "recall", "higher"),
    ("residual-scratch", "ffn-equal-params", "recall", "higher"),
    ("residual-scratch", "ffn-equal-compute", "validation_loss", "lower"),
    ("residual-scratch", "ffn-equal-params", "validation_loss", "lower"),
    ("replace-pretrained", "replace-scratch", "kl_weights", "lower"),
    ("residual-pretrained", "residual-scratch", "kl_weights", "lower"),
    ("replace-pretrained", "replace-scratch", "slots_90", "higher"),
    ("residual-pretrained", "residual-scratch", "slots_90", "higher"),
    ("replace-pretrained", "replace-scratch", "validation_loss", "lower"),
    ("residual-pretrained", "residual-scratch", "validation_loss", "lower"),
    ("replace-pretrained", "replace-scratch", "recall", "higher"),
    ("residual-pretrained", "residual-scratch", "recall", "higher"),
    ("residual-scratch", "replace-scratch", "validation_loss", "lower"),
    ("residual-pretrained", "replace-pretrained", "validation_loss", "lower"),
    ("residual-scratch", "replace-scratch", "recall", "higher"),
    ("residual-pretrained", "replace-pretrained", "recall", "higher"),
    ("residual-pretrained", "no-memory-continued", "validation_loss", "lower"),
    ("residual-pretrained", "no-memory-continued", "recall", "higher"),
    ("replace-pretrained", "no-memory-continued", "validation_loss", "lower"),
    ("replace-pretrained", "no-memory-continued", "recall", "higher"),
)


def _value(unit: MemoryUnit, metric: str) -> float:
    return unit.usage[metric] if metric in USAGE_METRICS and unit.usage is not None else getattr(unit, metric)


def _compare(by_arm: dict[str, list[MemoryUnit]], a: str, b: str, metric: str, expected: str) -> Comparison:
    """``a - b`` on ``metric``, paired by seed.

    ``holds`` when every seed goes the expected way *and* the mean difference exceeds its
    standard deviation over seeds (so that one seed's large effect beside another's
    negligible one does not count as a consistent effect).
    """
    seeds_b = {u.seed: u for u in by_arm[b]}
    differences = [
        _value(u, metric) - _value(seeds_b[u.seed], metric) for u in by_arm[a] if u.seed in seeds_b
    ]
    sign = 1 if expected == "higher" else -1
    mean, spread = mean_std(differences)
    holds = consistent_across_seeds(
        mean, spread, sum(sign * d > 0 for d in differences), len(differences), sign
    )
    return Comparison(a, b, metric, expected, (mean, spread), differences, holds)


def _finding(comparisons: list[Comparison], checks: list[tuple[str, str, str]]) -> str | None:
    """One sentence about a finding from the comparisons it rests on (None if not measured)."""
    found = [c for c in comparisons if (c.a, c.b, c.metric) in checks]
    if not found:
        return None
    parts = [
        f"{c.a} − {c.b} {c.metric}: {c.difference[0]:+.4f} ± {c.difference[1]:.4f} "
        f"({'consistently' if c.holds else 'NOT consistently'} {c.expected})"
        for c in found
    ]
    verdict = "REPRODUCED" if all(c.holds for c in found) else (
        "partly reproduced" if any(c.holds for c in found) else "did NOT reproduce"
    )  # fmt: skip
    return f"{verdict} — " + "; ".join(parts)


def _verdict(comparisons: list[Comparison], settings: MemoryScale) -> str:
    sentences = []
    for finding in FINDINGS:
        sentence = _finding(comparisons, list(finding.checks))
        if sentence is not None:
            sentences.append(f"{finding.title.format(layer=settings.layer)}: {sentence}.")
    seeds = len(settings.seeds)
    sentences.append(
        f"{seeds} seeds; a comparison counts only when every seed goes the expected way and the mean "
        "difference exceeds its spread over seeds."
        if seeds > 1
        else "One seed only: no finding here is evidence of anything beyond this run."
    )
    return " ".join(sentences)


@dataclass
class MemoryUnit:
    """One arm trained with one seed: what it cost and what it measured."""

    arm: str
    seed: int
    start_step: int
    steps: int
    parameters: int
    added_parameters: int
    validation_loss: float
    validation_perplexity: float
    recall: float
    recall_facts: int
    unprobeable_facts: int
    train_seconds: float
    tokens_per_second: float
    eval_curve: list[tuple[int, float]]
    train_curve: list[tuple[int, float]]
    #: with a memory only: usage metrics on validation text, the cumulative slot mass and outdated slots
    usage: dict[str, float] | None = None
    slot_mass_curve: list[tuple[float, float]] | None = None
    outdated_curve: list[tuple[int, float]] | None = None
    outdated: float | None = None


@dataclass
class ArmSummary:
    """One arm, ``(mean, std)`` over seeds; the usage fields only for memory arms."""

    validation_loss: tuple[float, float]
    validation_perplexity: tuple[float, float]
    recall: tuple[float, float]
    train_seconds: tuple[float, float]
    parameters: tuple[float, float]
    seeds: int
    used: tuple[float, float] | None = None
    kl_counts: tuple[float, float] | None = None
    kl_weights: tuple[float, float] | None = None
    gini: tuple[float, float] | None = None
    slots_50: tuple[float, float] | None = None
    slots_90: tuple[float, float] | None = None
    slots_99: tuple[float, float] | None = None
    outdated: tuple[float, float] | None = None


@dataclass
class Comparison:
    """Arm ``a`` minus arm ``b`` on one metric, paired by seed, against the expected direction."""

    a: str
    b: str
    metric: str
    expected: str
    difference: tuple[float, float]
    per_seed: list[float]
    holds: bool


@dataclass
class MemoryStudySummary:
    arms: dict[str, ArmSummary]
    comparisons: list[Comparison]
    verdict: str
