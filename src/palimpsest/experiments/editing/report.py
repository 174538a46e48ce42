"""The editing study's report section: the editors' tables and the per-block plots."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from palimpsest.experiments.editing.summary import KEPT
from palimpsest.plotting import plot_bars, plot_points
from palimpsest.report import Figure, Table, pm

if TYPE_CHECKING:  # the results class renders with this module's functions
    from palimpsest.experiments.editing.results import EditingStudyResults


def study_blocks(study: EditingStudyResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings, summary = study.settings, study.summary
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': per family a {settings.size} model pretrained from scratch "
        f"on {settings.data.corpus} mixed with the facts "
        f"({', '.join(settings.fact_sets)}; four templates each, every subject's held-out paraphrase "
        "left out). Then, per seed, counterfactual edits (a new object of the same relation) made by "
        "every method on the same requests and undone exactly before the next. A_M: exact match of the "
        "whole new object; A_F\\S: exact match on the unmodified facts (support facts excluded); "
        "paraphrase: A_M through the held-out template; efficacy / neighbourhood: P(new) > P(old) on the "
        "edits / P(true) > P(new) on the unmodified facts. Mean ± std over "
        f"{len(settings.seeds)} seed(s); 'before' is the model before any edit."
    ]
    blocks.append(
        Table(
            [
                "model",
                "pretraining updates",
                "facts known (recall)",
                "held-out paraphrase recall %",
                "validation loss",
            ],
            [
                [
                    f,
                    p.steps,
                    f"{100 * p.recall:.1f}% of {p.data.facts}",
                    100 * p.paraphrase_recall,
                    p.validation_loss,
                ]
                for f, p in study.pretrained.items()
            ],
        )
    )
    rows = [
        [
            r.family, r.edits, r.label, pm(r.metrics["A_M"]), pm(r.metrics[KEPT]),
            pm(r.metrics[KEPT + " before"]),
            pm(r.metrics["A_mean"]), pm(r.metrics["paraphrase"]), pm(r.metrics["efficacy"]),
            pm(r.metrics["neighbourhood"]), f"{r.steps[0]:.0f}", f"{r.seconds[0]:.2f}",
        ]
        for r in summary.rows
    ]  # fmt: skip
    headers = [
        "model", "edits", "method", "A_M", "A_F\\S", "A_F\\S before", "A mean", "paraphrase", "efficacy",
        "neighbourhood", "steps", "seconds",
    ]  # fmt: skip
    blocks.append(Table(headers, rows))
    blocks.append(summary.verdict)
    for family in settings.families:
        for edits in settings.edits:
            cell = [r for r in summary.rows if r.family == family and r.edits == edits]
            if not cell:
                continue
            path = plot_points(
                {r.label: (r.mean(KEPT), r.mean("A_M")) for r in cell},
                plots_dir / f"editing-frontier-{family}-{edits}.png",
                title=f"{family}, {edits} edits: edit success vs facts kept",
                xlabel="A_F\\S (unmodified facts still right)",
                ylabel="A_M (edits that took)",
                reference_x=cell[0].metrics[KEPT + " before"][0],
            )
            blocks.append(Figure(path, f"{family}, {edits} edits: the trade-off, one point per method"))
            single = sorted(
                (r for r in cell if isinstance(r.layers, list) and len(r.layers) == 1),
                key=lambda r: (r.norm, r.delta, r.layers[0]),
            )
            for metric, name in (("A_M", "A_M"), ("A_mean", "A mean")):
                if not single:
                    break
                groups: dict[str, dict[str, tuple[float, float]]] = {}
                for r in single:
                    bound = f"{r.norm} δ={r.delta:g}"
                    groups.setdefault(f"block {r.layers[0]}", {})[bound] = tuple(r.metrics[metric])
                path = plot_bars(
                    groups,
                    plots_dir / f"editing-layers-{metric}-{family}-{edits}.png",
                    title=f"{family}, {edits} edits: editing one block at a time",
                    ylabel=name,
                )
                blocks.append(
                    Figure(path, f"Per-layer effectiveness, {name} (constrained, FFN of one block)")
                )
    return blocks
