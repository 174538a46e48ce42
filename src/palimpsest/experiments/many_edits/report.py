"""The many-edits study's report section: the benchmark, the table, learning against keeping."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from palimpsest.experiments.many_edits.summary import COLUMNS
from palimpsest.plotting import plot_curves
from palimpsest.report import Figure, Table, pm

if TYPE_CHECKING:  # the results class renders with this module's functions
    from palimpsest.experiments.many_edits.results import ManyEditsResults


def study_blocks(study: ManyEditsResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings = study.settings
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': {study.model}. Benchmark of {study.benchmark_cases} cases: "
        f"{study.kinds.get('counterfactual', 0)} counterfactual edits of facts the model recalls, "
        f"{study.kinds.get('correction', 0)} corrections of facts it gets wrong (at least "
        f"{settings.benchmark.corrections:.0%} corrections; more where too few facts are recalled), "
        f"{settings.benchmark.neighbours} neighbours each. "
        "Every figure is exact-match recall of the prompt as a user writes it (no token in front) unless "
        "marked @after-text (after a passage of unrelated text); kept = recalled before any edit and still "
        f"recalled. Mean ± std over {len(settings.seeds)} seed(s) of draws; seconds and peak memory of the "
        "edit alone (memory: resident set growth on CPU).",
        Table(
            ["relation", "facts", "usable", "recalled"],
            [[name, c["facts"], c["usable"], c["recalled"]] for name, c in study.benchmark.items()],
        ),
    ]
    table = [
        [r.edits, r.mode, r.batch, r.method, *(pm(r.metrics.get(c), digits=2) for c in COLUMNS),
         f"{r.seconds[0]:.0f}", f"{r.peak_memory_mb[0]:.0f}"]
        for r in study.rows
    ]  # fmt: skip
    blocks.append(Table(["edits", "mode", "batch", "method", *COLUMNS, "seconds", "peak MB"], table))
    at_once = [r for r in study.rows if r.mode == "at once" and r.method != "before"]
    curves: dict[str, list[tuple[float, float]]] = {}
    for row in sorted(at_once, key=lambda r: r.edits):
        curves.setdefault(f"{row.method} made", []).append((row.edits, row.metrics["made"][0]))
        if "neighbourhood_kept" in row.metrics:
            kept = row.metrics["neighbourhood_kept"][0]
            curves.setdefault(f"{row.method} kept", []).append((row.edits, kept))
    if len({row.edits for row in at_once}) > 1:  # a curve needs two sizes at least
        methods = list(dict.fromkeys(name.rsplit(" ", 1)[0] for name in curves))
        styles = {
            f"{method} {what}": (f"C{index % 10}", style)
            for index, method in enumerate(methods)
            for what, style in (("made", "-"), ("kept", "--"))
        }
        path = plot_curves(
            curves, plots_dir / f"many-edits-{study.scale}.png",
            title=f"{study.model}: edits made (solid) and neighbours kept (dashed), at once",
            xlabel="edits at once", ylabel="share (exact match, plain prompt)",
            logx=True, styles=styles, legend_outside=True,
        )  # fmt: skip
        blocks.append(Figure(path, "learning vs keeping over the number of edits made at once"))
    blocks.append(study.headline())
    return blocks
