"""The editing study's summary: each editor and block over seeds, and the verdict in prose."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from palimpsest.experiments.common import FactDataInfo, consistent_across_seeds, mean_std
from palimpsest.experiments.editing.scales import EditingScale
from palimpsest.models import SIZES

KEPT = "A_F\\S"  # accuracy on the unmodified facts F \\ S


METRICS = ("A_M", KEPT, "A_mean", "paraphrase", "efficacy", "neighbourhood")


def summarise(
    runs: list[dict[str, Any]], pretrained: dict[str, PretrainedModel], settings: EditingScale
) -> EditingSummary:
    """Per (family, edits, label): mean ± std over seeds of every metric, and the verdict."""
    cells: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for run in runs:
        cells.setdefault((run["family"], run["edits"], run["label"]), []).append(run)
    rows = []
    for group in cells.values():
        first = group[0]
        metrics: dict[str, tuple[float, float]] = {}
        for metric in METRICS:
            metrics[metric] = mean_std([r["after"].get(metric) for r in group])
            metrics[f"{metric} before"] = mean_std([r["before"].get(metric) for r in group])
        rows.append(
            EditingRow(
                **{
                    key: first[key]
                    for key in ("family", "edits", "label", "method", "layers", "norm", "delta")
                },
                steps=mean_std([r["steps"] for r in group]),
                seconds=mean_std([r["seconds"] for r in group]),
                seeds=len(group),
                metrics=metrics,
                pairing=[str(r["seed"]) for r in group],
                per_seed={"A_mean": [r["after"]["A_mean"] for r in group]},
            )
        )
    return EditingSummary(rows=rows, verdict=_verdict(rows, pretrained, settings))


def per_layer(rows: list[EditingRow], family: str, edits: int, norm: str, delta: float) -> list[EditingRow]:
    """The single-block rows of one (family, edits, bound), in block order."""
    single = [
        r for r in rows
        if r.family == family and r.edits == edits and r.norm == norm and r.delta == delta
        and isinstance(r.layers, list) and len(r.layers) == 1
    ]  # fmt: skip
    return sorted(single, key=lambda r: r.layers[0])


def best_single_blocks(
    rows: list[EditingRow], family: str, edits: int, norm: str, deltas: Iterable[float]
) -> list[EditingRow]:
    """Per block (in order), its single-block row with the highest A mean over the bounds ``deltas``.

    A layer is compared at the bound that suits it, as a paper tuning δ per layer choice would:
    at one fixed δ a block may be unable to move an answer at all while another overshoots.
    """
    best: dict[int, EditingRow] = {}
    for delta in deltas:
        for row in per_layer(rows, family, edits, norm, delta):
            block = row.layers[0]
            if block not in best or row.mean("A_mean") > best[block].mean("A_mean"):
                best[block] = row
    return [best[block] for block in sorted(best)]


def layer_outcome(best: list[EditingRow]) -> tuple[str, str]:
    """Whether the end blocks lead, for one setting's per-block rows: (outcome, sentence).

    A comparison only counts where some block makes at least half of the edits while doing better
    than leaving the model unedited (A mean before any edit, plus the spread over seeds): where the
    edits fail, the block that changes least "wins", and the ranking says nothing about where facts
    are best modified. The end blocks lead when, per seed, the weaker of them beats every middle
    block, by the rule every study uses for a difference across seeds
    (:func:`~palimpsest.experiments.common.consistent_across_seeds` over those per-seed margins).
    """
    scores = [r.mean("A_mean") for r in best]
    spread = max(r.metrics["A_mean"][1] for r in best)
    unedited = best[0].mean("A_mean before")
    if not any(r.mean("A_M") >= 0.5 and r.mean("A_mean") > unedited + spread for r in best):
        return "untestable", (
            "no block makes half of the edits while doing better than leaving the model unedited "
            f"(A mean {100 * unedited:.0f}%), so this setting says nothing about layers."
        )
    margin = min(scores[0], scores[-1]) - max(scores[1:-1])
    if margin < 0:
        ranked = sorted(range(len(scores)), key=lambda i: -scores[i])[:2]
        return "failed", f"NOT first and last (best: blocks {sorted(best[i].layers[0] for i in ranked)})."
    margins = _end_block_margins(best)
    if margins and consistent_across_seeds(*mean_std(margins), sum(m > 0 for m in margins), len(margins)):
        return "held", "first and last blocks most effective."
    return "within spread", "first and last ahead, but not in every seed by more than the spread over seeds."


def _end_block_margins(best: list[EditingRow]) -> list[float]:
    """Per seed both ends and every middle block ran: the weaker end block's A mean minus the best
    middle block's (empty where the rows carry no per-seed values)."""
    if any(r.pairing is None or r.per_seed is None for r in best):
        return []
    by_block = [dict(zip(r.pairing, r.per_seed["A_mean"], strict=True)) for r in best]  # type: ignore[arg-type]
    paired = [key for key in by_block[0] if all(key in block for block in by_block)]
    return [
        min(by_block[0][key], by_block[-1][key]) - max(block[key] for block in by_block[1:-1])
        for key in paired
    ]


def _verdict(rows: list[EditingRow], pretrained: dict[str, PretrainedModel], settings: EditingScale) -> str:
    parts = []
    for family, info in pretrained.items():
        parts.append(
            f"{family}: recalls {100 * info.recall:.1f}% of the {info.data.facts} facts before any "
            f"edit ({100 * info.paraphrase_recall:.1f}% through the held-out paraphrase)."
        )
    blocks = SIZES[settings.size].layers
    outcomes: dict[str, int] = {"held": 0, "within spread": 0, "failed": 0, "untestable": 0}
    for family in settings.families:
        for edits in settings.edits:
            for norm, deltas in (("linf", settings.linf_deltas), ("l2", settings.l2_deltas)):
                best = best_single_blocks(rows, family, edits, norm, deltas)
                if len(best) < 3 or len(best) != blocks:
                    continue
                outcome, verdict = layer_outcome(best)
                outcomes[outcome] += 1
                parts.append(
                    f"{family}, {edits} edits, {norm}: A mean editing one block at a time, each at its best "
                    f"δ of {', '.join(f'{d:g}' for d in deltas)} = "
                    + ", ".join(
                        f"block {i}: {100 * r.mean('A_mean'):.0f}% (A_M {100 * r.mean('A_M'):.0f}%, "
                        f"δ={r.delta:g})"
                        for i, r in enumerate(best)
                    )
                    + f" — {verdict}"
                )
    if sum(outcomes.values()):
        tested = outcomes["held"] + outcomes["within spread"] + outcomes["failed"]
        if not tested:
            conclusion = (
                "could NOT be tested: no single block made the edits and beat leaving the model unedited."
            )
        elif outcomes["failed"]:
            conclusion = "did NOT reproduce."
        elif outcomes["within spread"]:
            conclusion = "PARTLY reproduced (never contradicted, but not always by more than the spread)."
        else:
            conclusion = "REPRODUCED."
        parts.append(
            "'The first and last blocks are the most effective to modify' (Zhu et al.; judged by A mean, "
            "the paper's measure, each block at its best bound): of the settings where some block made half "
            f"of the edits and beat leaving the model unedited ({tested} of {sum(outcomes.values())}), it "
            f"held clearly in {outcomes['held']}, by less than the spread over seeds in "
            f"{outcomes['within spread']}, and "
            f"failed in {outcomes['failed']} — {conclusion}"
        )
    for family in settings.families:
        for edits in settings.edits:
            cell = [r for r in rows if r.family == family and r.edits == edits]
            by_label = {r.label: r for r in cell}
            constrained = [r for r in cell if r.norm]
            if "ft" not in by_label or not constrained:
                continue
            line = f"{family}, {edits} edits: " + "; ".join(
                f"{label} keeps A_F\\S {100 * r.mean(KEPT):.0f}% at A_M {100 * r.mean('A_M'):.0f}%"
                for label, r in by_label.items()
                if label in ("ft", "ft+support")
            )
            working = [r for r in constrained if r.mean("A_M") >= 0.5]
            if working:
                best = max(working, key=lambda r: r.mean("A_mean"))
                line += (
                    f"; the best constrained setting that makes at least half of the edits ({best.label}) "
                    f"keeps {100 * best.mean(KEPT):.0f}% at A_M {100 * best.mean('A_M'):.0f}%"
                )
            else:
                top = max(constrained, key=lambda r: r.mean("A_M"))
                line += (
                    f"; no constrained setting makes half of the edits (most: {top.label}, "
                    f"A_M {100 * top.mean('A_M'):.0f}%)"
                )
            parts.append(line + f" (A_F\\S before: {100 * cell[0].mean(KEPT + ' before'):.0f}%).")
    seeds = len(settings.seeds)
    parts.append(f"Mean over {seeds} seed(s) of edit requests; each family is pretrained once.")
    return " ".join(parts)


@dataclass
class PretrainedModel:
    """A model pretrained by the study on wiki text and the facts, and what it knows before any edit."""

    family: str
    objective: str
    model_path: str
    data: FactDataInfo
    validation_loss: float
    recall: float
    recall_by_relation: dict[str, float]
    paraphrase_recall: float
    unprobeable: int
    train_seconds: float
    steps: int


@dataclass
class EditingRow:
    """One method on one (family, edits) cell: every metric ``(mean, std)`` over seeds.

    ``metrics`` holds each metric of :func:`~palimpsest.editing.metrics.edit_metrics` after the
    edit and, as "<metric> before", before it; in results.json they sit beside the row's fields.
    """

    FLAT_MAPPING: ClassVar[str] = "metrics"

    family: str
    edits: int
    label: str
    method: str
    layers: str | list[int | float]
    norm: str | None
    delta: float | None
    steps: tuple[float, float]
    seconds: tuple[float, float]
    metrics: dict[str, tuple[float, float]]
    #: seeds averaged over (study on small models), or draws and the edit mode (real-model study)
    seeds: int | None = None
    sequential: bool = False
    draws: int | None = None
    #: Which seed (or seed and draw) each per-seed value belongs to, and the A mean of each: rows
    #: are compared by their paired differences over the seeds both ran (None in results written
    #: before they were kept).
    pairing: list[str] | None = None
    per_seed: dict[str, list[float]] | None = None

    def mean(self, metric: str) -> float:
        """The mean over seeds (or draws) of one metric."""
        return self.metrics[metric][0]


@dataclass
class EditingSummary:
    rows: list[EditingRow]
    verdict: str
