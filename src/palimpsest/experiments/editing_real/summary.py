"""The real editing study's summary: each editor over seeds, and the verdict in prose."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from palimpsest.editing.config import EditConfig
from palimpsest.experiments.common import mean_std
from palimpsest.experiments.editing.summary import (
    EditingRow,
    EditingSummary,
    best_single_blocks,
    layer_outcome,
)
from palimpsest.experiments.editing_real.facts import EditRun, Knowledge
from palimpsest.experiments.editing_real.scales import KEPT, RealEditingScale

METRICS = (
    "A_M", KEPT, "A_mean", "paraphrase", "efficacy", "neighbourhood", "generation", "generation_paraphrase",
    "generation_kept", "perplexity",
)  # fmt: skip


def summarise(
    runs: Sequence[EditRun], known: dict[str, Knowledge], blocks: int, scale: RealEditingScale
) -> EditingSummary:
    """Per (size, mode, label): mean ± std over every draw of every metric, and the verdicts."""
    cells: dict[tuple[int, bool, str], list[EditRun]] = {}
    for run in runs:
        cells.setdefault((run.size, run.sequential, run.label), []).append(run)
    rows = []
    for (size, sequential, label), group in cells.items():
        first = group[0]
        metrics: dict[str, tuple[float, float]] = {}
        for metric in METRICS:
            metrics[metric] = mean_std([r.after.get(metric) for r in group])
            metrics[f"{metric} before"] = mean_std([r.before.get(metric) for r in group])
        rows.append(
            EditingRow(
                family="sequential" if sequential else "batch", edits=size, label=label, method=first.method,
                layers=first.layers, norm=first.norm, delta=first.delta,
                steps=mean_std([r.steps for r in group]),
                # the median: robust to a draw slowed by other work on the machine
                seconds=(statistics.median(r.seconds for r in group), 0.0),
                metrics=metrics, sequential=sequential, draws=len(group),
                pairing=[f"{r.seed}-{r.draw}" for r in group],
                per_seed={"A_mean": [r.after["A_mean"] for r in group]},
            )
        )  # fmt: skip
    return EditingSummary(rows=rows, verdict=_verdict(rows, known, blocks, scale))


def _verdict(
    rows: list[EditingRow], known: dict[str, Knowledge], blocks: int, scale: RealEditingScale
) -> str:
    parts = [
        "The model recalls "
        + ", ".join(f"{v.known} of {v.facts} {name}" for name, v in known.items())
        + " (exact match)."
    ]
    for size in scale.sizes:
        cell = {r.label: r for r in rows if r.edits == size and not r.sequential}
        if not cell:
            continue
        named = [
            f"{label} A_M {100 * r.mean('A_M'):.0f}% / A_F\\S {100 * r.mean(KEPT):.0f}% / generation "
            f"{100 * r.mean('generation'):.0f}% / perplexity {r.mean('perplexity'):.1f}"
            for label, r in cell.items()
            if len(label.split(" ")) == 1
        ]
        first = next(iter(cell.values()))
        parts.append(
            f"{size} edit(s) at once (A_F\\S before {100 * first.mean(KEPT + ' before'):.0f}%, "
            f"perplexity before {first.mean('perplexity before'):.1f}): " + "; ".join(named) + "."
        )
        if size in scale.depth_sizes:
            default = EditConfig()
            for name, norm, deltas in (
                ("linf at lr 1e-3", "linf", scale.linf_deltas), ("l2 at lr 1e-3", "l2", scale.l2_deltas),
                ("the default editor", default.norm, (default.delta,)),
            ):  # fmt: skip
                best = best_single_blocks(rows, "batch", size, norm, deltas)
                if len(best) >= 3:
                    outcome, sentence = layer_outcome(best)
                    tops = sorted(best, key=lambda r: -r.mean("A_mean"))[:3]
                    parts.append(
                        f"{size} edit(s), {name}, one block's MLP at a time (best A mean: "
                        + ", ".join(f"block {r.layers[0]} {100 * r.mean('A_mean'):.0f}%" for r in tops)
                        + f"; first {100 * best[0].mean('A_mean'):.0f}%, "
                        + f"last {100 * best[-1].mean('A_mean'):.0f}%): "
                        + f"'first and last most effective' — {outcome}: {sentence}"
                    )
    for size in scale.sequential:
        cell = [r for r in rows if r.edits == size and r.sequential]
        if cell:
            parts.append(
                f"{size} edits one after another: "
                + "; ".join(
                    f"{r.label} A_M {100 * r.mean('A_M'):.0f}% / A_F\\S {100 * r.mean(KEPT):.0f}% / "
                    f"perplexity {r.mean('perplexity'):.1f}"
                    for r in cell
                )
                + "."
            )
    default = [r for r in rows if r.label == "default" and r.edits == 1 and not r.sequential]
    if default:
        r = default[0]
        goal = r.mean("A_M") >= 0.99 and r.mean(KEPT) >= 0.9
        parts.append(
            f"Goal (single edits at A_M 100% keeping A_F\\S >= 90%) with the default editor: "
            f"{'MET' if goal else 'NOT met'} (A_M {100 * r.mean('A_M'):.0f}%, "
            f"A_F\\S {100 * r.mean(KEPT):.0f}% ± {100 * r.metrics[KEPT][1]:.0f}, "
            f"over {r.draws} single edits)."
        )
    return " ".join(parts)


def one_line(text: str) -> str:
    """A continuation as one table cell: line breaks shown, not rendered."""
    return text.replace("\n", " ⏎ ")
