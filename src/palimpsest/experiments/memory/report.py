"""The memory study's report section: tables and plots of the arms and their memories' use."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from palimpsest.experiments.memory.summary import MemoryUnit
from palimpsest.plotting import plot_bars, plot_curves
from palimpsest.report import Figure, Table, mean_curve, pm

if TYPE_CHECKING:  # the results class renders with this module's functions
    from palimpsest.experiments.memory.results import MemoryStudyResults


def study_blocks(study: MemoryStudyResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings, data, summary, memory = study.settings, study.data, study.summary, study.settings.memory
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': a {settings.model.size} {settings.model.family} trained "
        f"{settings.training.steps} updates (batch {settings.training.batch_size} x "
        f"{settings.data.block_size} tokens) on {settings.data.corpus} mixed with {data.cities:,} city facts "
        f"({data.statements:,} statements, {data.fact_tokens:,} of {data.train_tokens:,} training tokens). "
        f"The memory ({memory.n_keys**2:,} slots, {memory.heads} heads, k={memory.k}) sits in "
        f"block {settings.layer}, instead of its FFN (replace) or beside it (residual); '-pretrained' "
        f"arms start from the no-memory run at update "
        f"{round(settings.training.steps * settings.pretrained_fraction)} and train the remaining updates, "
        "so every arm makes the same number of updates. Validation loss is on held-out wiki text; "
        "recall is the exact match of the country for every city (all its tokens, greedy); answering "
        f"every city with the most common country scores {100 * data.majority_recall:.1f}%. Usage is "
        f"measured on validation text; 'outdated' is the share of slots not selected in the last "
        f"{settings.usage_window} updates at the end of training. Mean ± std over "
        f"{len(settings.seeds)} seed(s)."
    ]
    arms = summary.arms
    rows = []
    for arm, row in arms.items():
        usage = row.kl_weights is not None
        rows.append(
            [
                arm,
                row.parameters[0],
                pm(row.validation_loss),
                pm(row.recall, 100, 1),
                pm(row.kl_weights) if usage else "–",
                pm(row.slots_90, 100, 1) if usage else "–",
                pm(row.gini) if usage else "–",
                pm(row.outdated, 100, 1) if usage else "–",
                row.train_seconds[0],
            ]
        )
    blocks.append(
        Table(
            [
                "arm",
                "parameters",
                "val. loss",
                "recall %",
                "KL from uniform (weights)",
                "% slots for 90% of weight",
                "Gini",
                "% outdated",
                "train s",
            ],
            rows,
        )
    )
    blocks.append(summary.verdict)
    by_arm: dict[str, list[MemoryUnit]] = {}
    for unit in study.units:
        by_arm.setdefault(unit.arm, []).append(unit)
    curves, bands = {}, {}
    for arm, units in by_arm.items():
        curves[arm], low, high = mean_curve([u.eval_curve for u in units])
        bands[arm] = (low, high)
    path = plot_curves(
        curves,
        plots_dir / "memory-study-validation.png",
        title="Validation loss on wiki text (mean ± std over seeds)",
        ylabel="cross-entropy (nats/token)",
        bands=bands,
    )
    blocks.append(Figure(path, "Validation loss vs update, per arm"))
    path = plot_bars(
        {arm: {"recall": tuple(arms[arm].recall)} for arm in arms},
        plots_dir / "memory-study-recall.png",
        title="City -> country recall",
        ylabel="exact match",
    )
    blocks.append(Figure(path, "Fact recall per arm (mean ± std over seeds)"))
    memory_arms = [arm for arm, units in by_arm.items() if units[0].slot_mass_curve is not None]
    if memory_arms:
        path = plot_curves(
            {arm: by_arm[arm][0].slot_mass_curve or [] for arm in memory_arms},
            plots_dir / "memory-study-slot-usage.png",
            title="Slot usage: cumulative weight mass (first seed)",
            xlabel="% of slots (most used first)",
            ylabel="% of weight mass",
        )
        blocks.append(
            Figure(path, "How evenly each memory is read: the closer to the diagonal, the more even")
        )
        outdated = {
            arm: mean_curve([u.outdated_curve or [] for u in by_arm[arm]])[0]
            for arm in memory_arms
            if by_arm[arm][0].outdated_curve
        }
        if outdated:
            path = plot_curves(
                outdated,
                plots_dir / "memory-study-outdated.png",
                title=f"Outdated slots (not selected in the last {settings.usage_window} updates)",
                ylabel="share of slots",
            )
            blocks.append(Figure(path, "Share of outdated slots during training (mean over seeds)"))
    return blocks
