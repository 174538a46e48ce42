"""The real editing study's report section."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from palimpsest.experiments.editing_real.scales import ANCHORS, KEPT
from palimpsest.experiments.editing_real.summary import one_line
from palimpsest.plotting import plot_bars, plot_points
from palimpsest.report import Figure, Table, pm

if TYPE_CHECKING:  # the results class renders with this module's functions
    from palimpsest.experiments.editing_real.results import RealEditingResults


def study_blocks(study: RealEditingResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings, rows = study.settings, study.summary.rows
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': {study.model} ({study.blocks} blocks), nothing trained before. "
        f"Edits are counterfactual (another subject's object of the same relation) drawn from the "
        f"{study.editable_facts} facts of {', '.join(settings.edit_sets)} it recalls; A_F\\S is "
        f"measured on up to {settings.kept} other recalled facts (never trained on), generation = the "
        f"greedy continuation ({settings.generation_tokens} tokens) names the new object, generation "
        "kept = the kept facts' continuations still name theirs, perplexity on held-out wiki-en. "
        f"Mean ± std over {len(settings.seeds)} seed(s) of draws (single edits: "
        f"{settings.singles} per seed, each made and undone alone); seconds: the median over draws."
    ]
    blocks.append(
        Table(
            ["relation", "facts", "recalled", "recall %"],
            [[name, v.facts, v.known, 100 * v.recall] for name, v in study.knowledge.items()],
        )
    )
    headers = [
        "edits", "mode", "method", "A_M", "A_F\\S", "A_F\\S before", "paraphrase", "generation",
        "generation kept",
        "perplexity", "perplexity before", "steps", "seconds", "draws",
    ]  # fmt: skip
    table = [
        [
            r.edits, r.family, r.label, pm(r.metrics["A_M"]), pm(r.metrics[KEPT]),
            pm(r.metrics[KEPT + " before"]),
            pm(r.metrics["paraphrase"]), pm(r.metrics["generation"]), pm(r.metrics["generation_kept"]),
            pm(r.metrics["perplexity"], digits=2), pm(r.metrics["perplexity before"], digits=2),
            f"{r.steps[0]:.0f}", f"{r.seconds[0]:.1f}", r.draws,
        ]
        for r in rows
    ]  # fmt: skip
    blocks.append(Table(headers, table))
    blocks.append(
        Table(
            ["anchor (not this model)", "edit success %", "locality / neighbourhood %"],
            [list(anchor) for anchor in ANCHORS],
        )
    )
    blocks.append(study.summary.verdict)
    examples = [r for r in study.runs if r.size == min(settings.sizes) and not r.sequential]
    shown = [r for r in examples if r.label in ("default", "ft-m") and r.seed == settings.seeds[0]]
    if shown:
        lines = []
        for run in shown[:6]:
            pairs = (
                ("edit", run.examples.before, run.examples.after),
                ("kept", run.examples.kept_before, run.examples.kept_after),
            )
            for kind, befores, afters in pairs:
                for b, a in zip(befores, afters, strict=False):
                    lines.append(
                        [run.label, kind, b.prompt, one_line(b.continuation), one_line(a.continuation)]
                    )
        blocks.append(Table(["method", "prompt", "prompt text", "before", "after"], lines))
    for size in sorted({r.edits for r in rows}):
        for sequential in (False, True):
            cell = [r for r in rows if r.edits == size and r.sequential == sequential]
            if not cell:
                continue
            mode = "sequential" if sequential else "batch"
            path = plot_points(
                {r.label: (r.mean(KEPT), r.mean("A_M")) for r in cell if " block " not in r.label},
                plots_dir / f"editing-real-frontier-{mode}-{size}.png",
                title=f"SmolLM2-135M, {size} edit(s) ({mode}): edits made vs facts kept",
                xlabel="A_F\\S (recalled facts still right)", ylabel="A_M (edits that took)",
                reference_x=cell[0].metrics[KEPT + " before"][0],
            )  # fmt: skip
            blocks.append(
                Figure(path, f"{size} edit(s), {mode}: one point per method (per-block runs: next plot)")
            )
            single = [r for r in cell if r.norm and isinstance(r.layers, list) and len(r.layers) == 1]
            if single:
                groups: dict[str, dict[str, tuple[float, float]]] = {}
                for r in sorted(single, key=lambda r: r.layers[0]):
                    groups.setdefault(str(r.layers[0]), {})[r.label.rsplit(" block", 1)[0]] = tuple(
                        r.metrics["A_mean"]
                    )
                path = plot_bars(
                    groups, plots_dir / f"editing-real-depth-{size}.png",
                    title=f"SmolLM2-135M, {size} edit(s): one block's MLP at a time (by block)",
                    ylabel="A mean (edits made and facts kept)",
                )  # fmt: skip
                blocks.append(Figure(path, f"{size} edit(s): A mean by depth"))
    return blocks
