"""The plasticity study's report section: tables and plots of curves, gaps and accuracies."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from palimpsest.experiments.plasticity.scales import VARIANTS
from palimpsest.models import FAMILY_OBJECTIVE
from palimpsest.plotting import plot_bars, plot_curves
from palimpsest.report import Figure, Table, pm

if TYPE_CHECKING:  # the results class renders with this module's functions
    from palimpsest.experiments.plasticity.results import PlasticityResults


def _objective_words(family: str) -> str:
    return "next-token loss" if FAMILY_OBJECTIVE.get(family) == "clm" else "masked-LM loss"


def study_blocks(study: PlasticityResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings, summary, pretrain = study.settings, study.summary, study.settings.pretrain
    family = pretrain.model.family  # plots of an encoder and a decoder study side by side in one report
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': a {pretrain.model.size} {pretrain.model.family} pretrained "
        f"{pretrain.training.steps} steps ({_objective_words(pretrain.model.family)}) on "
        f"{pretrain.data.corpus} twice — standard, and "
        f"with the token embeddings reset every {settings.forgetting.reset_every} updates. Then, per new "
        f"language, token budget and seed ({len(settings.seeds)} seeds), only the embeddings are relearned "
        f"for {settings.adaptation.training.steps} steps (body frozen), and the assembled model classifies "
        "topics zero-shot (task head trained on English with embeddings frozen). Spread is over "
        "language-adaptation seeds; "
        "each variant is pretrained once."
    ]
    blocks.append(
        Table(
            [
                "pretraining",
                "English val. loss",
                "unigram loss",
                "English topic acc. (task step)",
                "majority",
            ],
            [
                [
                    v,
                    study.pretrain[v].validation_loss,
                    study.pretrain[v].unigram_loss,
                    summary.english_task_accuracy[v],
                    (summary.english_task_majority or {}).get(v, "-"),
                ]
                for v in VARIANTS
            ],
        )
    )
    rows = []
    for cell in summary.cells:
        s, f = cell.standard, cell.forgetting
        thresholds = cell.steps_to_standard_final
        rows.append(
            [
                cell.language,
                cell.budget,
                f"{pm(cell.early_gap)} (step {cell.early_step}, {cell.early_gap_positive_seeds}/"
                f"{len(settings.seeds)} seeds)",
                "–" if cell.crossover_step is None else cell.crossover_step,
                pm(s.final_loss),
                pm(f.final_loss),
                "/".join("–" if x is None else str(x) for x in thresholds["forgetting"])
                + " vs "
                + "/".join("–" if x is None else str(x) for x in thresholds["standard"]),
                pm(s.zero_shot_accuracy, 100, 1),
                pm(f.zero_shot_accuracy, 100, 1),
                100 * s.majority_baseline,
                f"{100 * cell.relative_gain:+.1f}%",
            ]
        )
    blocks.append(
        Table(
            [
                "language",
                "tokens",
                "gap at first eval (std − forget, nats)",
                "std first lower at step",
                "best loss std",
                "best loss forget",
                "steps to std final: forget vs std (per seed)",
                "zero-shot acc. std %",
                "zero-shot acc. forget %",
                "majority %",
                "rel. gain",
            ],
            rows,
        )
    )
    blocks.append(summary.verdict)
    for cell in summary.cells:
        curves, bands = {}, {}
        for variant in VARIANTS:
            mean, std = getattr(cell, variant).curve_mean, getattr(cell, variant).curve_std
            curves[variant] = list(zip(cell.steps, mean, strict=True))
            bands[variant] = (
                [(x, m - d) for x, m, d in zip(cell.steps, mean, std, strict=True)],
                [(x, m + d) for x, m, d in zip(cell.steps, mean, std, strict=True)],
            )
        path = plot_curves(
            curves,
            plots_dir / f"relearning-{family}-{cell.language}-{cell.budget}.png",
            title=f"Relearning {cell.language} ({cell.budget:,} tokens): embeddings only",
            ylabel="validation loss (nats/token)",
            bands=bands,
        )
        blocks.append(Figure(path, f"{cell.language}, {cell.budget:,} tokens: mean ± std over seeds"))
    if any(cell.gap_mean for cell in summary.cells):
        gap_curves = {
            f"{c.language} {c.budget:,}": list(zip(c.steps, c.gap_mean, strict=True)) for c in summary.cells
        }
        gap_bands = {
            f"{c.language} {c.budget:,}": (
                [(x, m - d) for x, m, d in zip(c.steps, c.gap_mean, c.gap_std, strict=True)],
                [(x, m + d) for x, m, d in zip(c.steps, c.gap_mean, c.gap_std, strict=True)],
            )
            for c in summary.cells
        }
        path = plot_curves(
            gap_curves,
            plots_dir / f"relearning-gap-{family}.png",
            title="Standard minus forgetting validation loss while relearning",
            ylabel="loss gap (nats/token; > 0 favours forgetting)",
            bands=gap_bands,
            reference_lines={"no difference": 0.0},
        )
        blocks.append(Figure(path, "The relearning gap per language and budget: mean ± std over seeds"))
    groups = {
        f"{c.language}\n{c.budget:,}": {
            "standard": tuple(c.standard.zero_shot_accuracy),
            "forgetting": tuple(c.forgetting.zero_shot_accuracy),
        }
        for c in summary.cells
    }
    majority = statistics.fmean(c.standard.majority_baseline for c in summary.cells)
    path = plot_bars(
        groups,
        plots_dir / f"plasticity-zero-shot-{family}.png",
        title="Zero-shot topic accuracy after relearning",
        ylabel="accuracy",
        reference_lines={"majority class (mean)": majority},
    )
    blocks.append(Figure(path, "Zero-shot topic accuracy (mean ± std over seeds)"))
    return blocks
