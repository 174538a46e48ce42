"""Reports: ``results.json`` dicts -> ``report.md`` and a self-contained ``report.html``.

A results dict names its ``kind``; a section builder per kind turns it into blocks
(paragraphs, tables, figures) that render both to Markdown and to HTML, so the two
reports always say the same thing. Later capabilities add their builders to
:data:`SECTION_BUILDERS`.
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palimpsest.plotting import plot_bars, plot_curves, plot_points


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Figure] = field(default_factory=list)


SectionBuilder = Callable[[Sequence[dict[str, Any]], Path], Section]


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers to short, stable text: 4 significant digits, thousands as integers."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits + 1}g}"
    return str(value)


# --------------------------------------------------------------------------- sections


def pretrain_section(runs: Sequence[dict[str, Any]], plots_dir: Path) -> Section:
    section = Section("Pretraining")
    section.blocks.append(
        "Each model is trained from scratch on the corpus shown and scored on a held-out "
        "validation split. Perplexity is token-level, on exactly the positions the unigram "
        "baseline is scored on (masked positions for masked LMs, next tokens for causal LMs); "
        "the unigram baseline predicts add-one-smoothed training-token frequencies."
    )
    rows = []
    for run in runs:
        m = run["metrics"]
        rows.append(
            [
                run["name"],
                run["model"]["objective"],
                run["data"]["corpus"],
                run["model"]["parameters"],
                m["steps"],
                m["validation_perplexity"],
                m["unigram_perplexity"],
                m["unigram_perplexity"] / m["validation_perplexity"],
                m["tokens_per_second"],
            ]
        )
    section.blocks.append(
        Table(
            [
                "run",
                "objective",
                "corpus",
                "parameters",
                "steps",
                "val. ppl",
                "unigram ppl",
                "unigram/val",
                "tokens/s",
            ],
            rows,
        )
    )
    for run in runs:
        curves = {
            "train loss": run["curves"]["train_loss"],
            "validation loss": run["curves"]["eval_loss"],
        }
        slug = "".join(c if c.isalnum() else "-" for c in run["name"])
        path = plot_curves(
            curves,
            plots_dir / f"pretrain-{slug}.png",
            title=f"{run['name']}: training curves",
            ylabel="cross-entropy (nats/token)",
            reference_lines={"unigram baseline": run["metrics"]["unigram_loss"]},
        )
        section.blocks.append(Figure(path, f"{run['name']}: training and validation loss vs step"))
    machine = runs[0].get("machine", {}) if runs else {}
    if machine:
        section.blocks.append(
            f"Machine: {machine.get('platform')}, torch {machine.get('torch')}, "
            f"{machine.get('threads')} threads, {machine.get('device')}."
        )
    return section


def evaluate_section(runs: Sequence[dict[str, Any]], plots_dir: Path) -> Section:
    rows = [
        [
            r["model"],
            r["corpus"],
            r["metrics"]["perplexity"],
            r["metrics"]["unigram_perplexity"],
            r["metrics"]["tokens"],
        ]
        for r in runs
    ]
    return Section("Evaluation", [Table(["model", "corpus", "ppl", "unigram ppl", "tokens"], rows)])


def pm(pair: Any, scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± std`` from a ``(mean, std)`` pair."""
    if not pair or pair[0] is None or (isinstance(pair[0], float) and math.isnan(pair[0])):
        return "–"
    return f"{scale * pair[0]:.{digits}f} ± {scale * pair[1]:.{digits}f}"


def plasticity_section(studies: Sequence[dict[str, Any]], plots_dir: Path) -> Section:
    section = Section("Forget: active forgetting and relearning (Chen et al. 2023)")
    for study in studies:
        settings, summary = study["settings"], study["summary"]
        section.blocks.append(
            f"Scale '{study['scale']}': a {settings['size']} {settings['family']} pretrained "
            f"{settings['pretrain_steps']} steps on {settings['corpus']} twice — standard, and with the "
            f"token embeddings reset every {settings['reset_every']} updates. Then, per new language, "
            f"token budget and seed ({len(settings['seeds'])} seeds), only the embeddings are relearned "
            f"for {settings['adapt_steps']} steps (body frozen), and the assembled model classifies "
            "topics zero-shot (task head trained on English with embeddings frozen). Spread is over "
            "language-adaptation seeds; "
            "each variant is pretrained once."
        )
        pre = study["pretrain"]
        section.blocks.append(
            Table(
                ["pretraining", "English val. loss", "unigram loss", "English topic acc. (task step)"],
                [
                    [
                        v,
                        pre[v]["validation_loss"],
                        pre[v]["unigram_loss"],
                        summary["english_task_accuracy"][v],
                    ]
                    for v in ("standard", "forgetting")
                ],
            )
        )
        rows = []
        for cell in summary["cells"]:
            s, f = cell["standard"], cell["forgetting"]
            thresholds = cell["steps_to_standard_final"]
            rows.append(
                [
                    cell["language"],
                    cell["budget"],
                    f"{pm(cell['early_gap'])} (step {cell['early_step']})",
                    pm(s["final_loss"]),
                    pm(f["final_loss"]),
                    "/".join("–" if x is None else str(x) for x in thresholds["forgetting"])
                    + " vs "
                    + "/".join("–" if x is None else str(x) for x in thresholds["standard"]),
                    pm(s["zero_shot_accuracy"], 100, 1),
                    pm(f["zero_shot_accuracy"], 100, 1),
                    100 * s["majority_baseline"],
                    f"{100 * cell['relative_gain']:+.1f}%",
                ]
            )
        section.blocks.append(
            Table(
                [
                    "language",
                    "tokens",
                    "early gap (std − forget, nats)",
                    "final loss std",
                    "final loss forget",
                    "steps to std final: forget vs std (per seed)",
                    "zero-shot acc. std %",
                    "zero-shot acc. forget %",
                    "majority %",
                    "rel. gain",
                ],
                rows,
            )
        )
        section.blocks.append(summary["verdict"])
        for cell in summary["cells"]:
            steps = cell["steps"]
            curves, bands = {}, {}
            for variant in ("standard", "forgetting"):
                mean, std = cell[variant]["curve_mean"], cell[variant]["curve_std"]
                curves[variant] = list(zip(steps, mean, strict=True))
                bands[variant] = (
                    [(x, m - d) for x, m, d in zip(steps, mean, std, strict=True)],
                    [(x, m + d) for x, m, d in zip(steps, mean, std, strict=True)],
                )
            name = f"relearning-{cell['language']}-{cell['budget']}"
            path = plot_curves(
                curves,
                plots_dir / f"{name}.png",
                title=f"Relearning {cell['language']} ({cell['budget']:,} tokens): embeddings only",
                ylabel="validation loss (nats/token)",
                bands=bands,
            )
            section.blocks.append(
                Figure(path, f"{cell['language']}, {cell['budget']:,} tokens: mean ± std over seeds")
            )
        groups = {
            f"{c['language']}\n{c['budget']:,}": {
                "standard": tuple(c["standard"]["zero_shot_accuracy"]),
                "forgetting": tuple(c["forgetting"]["zero_shot_accuracy"]),
            }
            for c in summary["cells"]
        }
        majority = statistics.fmean(c["standard"]["majority_baseline"] for c in summary["cells"])
        path = plot_bars(
            groups,
            plots_dir / "plasticity-zero-shot.png",
            title="Zero-shot topic accuracy after relearning",
            ylabel="accuracy",
            reference_lines={"majority class (mean)": majority},
        )
        section.blocks.append(Figure(path, "Zero-shot topic accuracy (mean ± std over seeds)"))
    return section


def evaluate_task_section(runs: Sequence[dict[str, Any]], plots_dir: Path) -> Section:
    rows = [
        [
            r["model"],
            r["corpus"],
            r["metrics"]["accuracy"],
            r["metrics"]["majority_baseline"],
            r["metrics"]["examples"],
        ]
        for r in runs
    ]
    return Section(
        "Topic classification", [Table(["model", "corpus", "accuracy", "majority", "documents"], rows)]
    )


def memory_stats_section(runs: Sequence[dict[str, Any]], plots_dir: Path) -> Section:
    section = Section("Memory usage")
    section.blocks.append(
        "Per memory layer, on validation text: share of slots selected at least once, KL divergence "
        "from uniform of selection counts and of softmax-weight mass (0 = even), Gini of the mass, and "
        "the share of slots holding 50/90/99% of the mass."
    )
    columns = ["used", "kl_counts", "kl_weights", "gini", "slots_50", "slots_90", "slots_99"]
    rows = [
        [f"{run['model']} · {name}", run["slots"][name], *(metrics[c] for c in columns)]
        for run in runs
        for name, metrics in run["layers"].items()
    ]
    section.blocks.append(Table(["layer", "slots", *columns], rows))
    for run in runs:
        for plot in run.get("plots", []):
            section.blocks.append(Figure(Path(plot), "Cumulative weight mass over slots, most used first"))
    return section


def _mean_curve(curves: Sequence[Sequence[Sequence[float]]]) -> tuple[list, list, list]:
    """Mean curve and its ±std band over seeds (curves share their x values)."""
    xs = [point[0] for point in curves[0]]
    columns = list(zip(*[[point[1] for point in curve] for curve in curves], strict=False))
    means = [statistics.fmean(column) for column in columns]
    stds = [statistics.stdev(column) if len(column) > 1 else 0.0 for column in columns]
    xs = xs[: len(means)]
    return (
        list(zip(xs, means, strict=True)),
        [(x, m - d) for x, m, d in zip(xs, means, stds, strict=True)],
        [(x, m + d) for x, m, d in zip(xs, means, stds, strict=True)],
    )


def memory_study_section(studies: Sequence[dict[str, Any]], plots_dir: Path) -> Section:
    section = Section("Grow: product-key memory from scratch or from a pretrained model (Kim & Jung 2020)")
    for study in studies:
        settings, data, summary = study["settings"], study["data"], study["summary"]
        section.blocks.append(
            f"Scale '{study['scale']}': a {settings['size']} {settings['family']} trained "
            f"{settings['steps']} updates (batch {settings['batch_size']} x {settings['block_size']} tokens) "
            f"on {settings['corpus']} mixed with {data['cities']:,} city facts ({data['statements']:,} "
            f"statements, {data['fact_tokens']:,} of {data['train_tokens']:,} training tokens). The memory "
            f"({settings['n_keys'] ** 2:,} slots, {settings['heads']} heads, k={settings['k']}) sits in "
            f"block {settings['layer']}, instead of its FFN (replace) or beside it (residual); '-pretrained' "
            f"arms start from the no-memory run at update "
            f"{round(settings['steps'] * settings['pretrained_fraction'])} and train the remaining updates, "
            "so every arm makes the same number of updates. Validation loss is on held-out wiki text; "
            "recall is the exact match of the country for every city (all its tokens, greedy); answering "
            f"every city with the most common country scores {100 * data['majority_recall']:.1f}%. Usage is "
            f"measured on validation text; 'outdated' is the share of slots not selected in the last "
            f"{settings['usage_window']} updates at the end of training. Mean ± std over "
            f"{len(settings['seeds'])} seed(s)."
        )
        arms = summary["arms"]
        rows = []
        for arm, row in arms.items():
            usage = "kl_weights" in row
            rows.append(
                [
                    arm,
                    row["parameters"][0],
                    pm(row["validation_loss"]),
                    pm(row["recall"], 100, 1),
                    pm(row["kl_weights"]) if usage else "–",
                    pm(row["slots_90"], 100, 1) if usage else "–",
                    pm(row["gini"]) if usage else "–",
                    pm(row["outdated"], 100, 1) if usage else "–",
                    row["train_seconds"][0],
                ]
            )
        section.blocks.append(
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
        section.blocks.append(summary["verdict"])
        by_arm: dict[str, list[dict[str, Any]]] = {}
        for unit in study["units"]:
            by_arm.setdefault(unit["arm"], []).append(unit)
        curves, bands = {}, {}
        for arm, units in by_arm.items():
            curves[arm], low, high = _mean_curve([u["eval_curve"] for u in units])
            bands[arm] = (low, high)
        path = plot_curves(
            curves,
            plots_dir / "memory-study-validation.png",
            title="Validation loss on wiki text (mean ± std over seeds)",
            ylabel="cross-entropy (nats/token)",
            bands=bands,
        )
        section.blocks.append(Figure(path, "Validation loss vs update, per arm"))
        groups = {arm: {"recall": tuple(arms[arm]["recall"])} for arm in arms}
        path = plot_bars(
            groups,
            plots_dir / "memory-study-recall.png",
            title="City -> country recall",
            ylabel="exact match",
        )
        section.blocks.append(Figure(path, "Fact recall per arm (mean ± std over seeds)"))
        memory_arms = [arm for arm, units in by_arm.items() if "slot_mass_curve" in units[0]]
        if memory_arms:
            path = plot_curves(
                {arm: by_arm[arm][0]["slot_mass_curve"] for arm in memory_arms},
                plots_dir / "memory-study-slot-usage.png",
                title="Slot usage: cumulative weight mass (first seed)",
                xlabel="% of slots (most used first)",
                ylabel="% of weight mass",
            )
            section.blocks.append(
                Figure(path, "How evenly each memory is read: the closer to the diagonal, the more even")
            )
            outdated = {
                arm: _mean_curve([u["outdated_curve"] for u in by_arm[arm]])[0]
                for arm in memory_arms
                if by_arm[arm][0]["outdated_curve"]
            }
            if outdated:
                path = plot_curves(
                    outdated,
                    plots_dir / "memory-study-outdated.png",
                    title=f"Outdated slots (not selected in the last {settings['usage_window']} updates)",
                    ylabel="share of slots",
                )
                section.blocks.append(
                    Figure(path, "Share of outdated slots during training (mean over seeds)")
                )
    return section


def edit_section(runs: Sequence[dict[str, Any]], plots_dir: Path) -> Section:
    section = Section("Rewrite: fact edits (constrained fine-tuning, Zhu et al. 2020)")
    section.blocks.append(
        "A_M: exact match of the whole new object on the edited facts; A_F\\S: exact match of the true "
        "object on the facts kept; efficacy / paraphrase efficacy: share with P(new) > P(old) through "
        "the edit template / a held-out paraphrase; neighbourhood: share of kept facts with "
        "P(true) > P(a new object of the same relation). Every metric before the edit beside after it."
    )
    for run in runs:
        config = run["config"]
        bound = "unconstrained" if config["norm"] is None else f"{config['norm']} ≤ {config['delta']:g}"
        order = " one after another" if run["sequential"] else ""
        section.blocks.append(
            f"{run['model']}: {len(run['requests'])} edit(s){order}, "
            f"layers {config['layers']} ({', '.join(config['modules'])}), {bound}, objective "
            f"{config['objective']}, lr {config['learning_rate']:g}: {run['steps']} steps in "
            f"{run['seconds']:.1f} s; "
            f"largest weight change {run['max_abs_change']:.2e} (L-inf), {run['max_l2_change']:.2e} (L2)."
        )
        keys = [key for key, value in run["after"].items() if isinstance(value, float)]
        section.blocks.append(
            Table(
                ["metric", "before", "after"], [[key, run["before"][key], run["after"][key]] for key in keys]
            )
        )
        section.blocks.append(
            Table(
                ["subject", "relation", "old", "new"],
                [[r["subject"], r["relation"], r["old"], r["new"]] for r in run["requests"][:20]],
            )
        )
    return section


def editing_study_section(studies: Sequence[dict[str, Any]], plots_dir: Path) -> Section:
    section = Section("Rewrite: modifying facts while keeping the rest (Zhu et al. 2020)")
    kept = "A_F\\S"
    for study in studies:
        settings, summary = study["settings"], study["summary"]
        section.blocks.append(
            f"Scale '{study['scale']}': per family a {settings['size']} model pretrained from scratch "
            f"on {settings['corpus']} mixed with the facts "
            f"({', '.join(settings['fact_sets'])}; four templates each, every subject's held-out paraphrase "
            "left out). Then, per seed, counterfactual edits (a new object of the same relation) made by "
            "every method on the same requests and undone exactly before the next. A_M: exact match of the "
            "whole new object; A_F\\S: exact match on the unmodified facts (support facts excluded); "
            "paraphrase: A_M through the held-out template; efficacy / neighbourhood: P(new) > P(old) on the "
            "edits / P(true) > P(new) on the unmodified facts. Mean ± std over "
            f"{len(settings['seeds'])} seed(s); 'before' is the model before any edit."
        )
        section.blocks.append(
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
                        p["steps"],
                        f"{100 * p['recall']:.1f}% of {p['data']['facts']}",
                        100 * p["paraphrase_recall"],
                        p["validation_loss"],
                    ]
                    for f, p in study["pretrained"].items()
                ],
            )
        )
        rows = [
            [
                r["family"], r["edits"], r["label"], pm(r["A_M"]), pm(r[kept]), pm(r[kept + " before"]),
                pm(r["A_mean"]), pm(r["paraphrase"]), pm(r["efficacy"]), pm(r["neighbourhood"]),
                f"{r['steps'][0]:.0f}", f"{r['seconds'][0]:.2f}",
            ]
            for r in summary["rows"]
        ]  # fmt: skip
        section.blocks.append(
            Table(
                [
                    "model",
                    "edits",
                    "method",
                    "A_M",
                    "A_F\\S",
                    "A_F\\S before",
                    "A mean",
                    "paraphrase",
                    "efficacy",
                    "neighbourhood",
                    "steps",
                    "seconds",
                ],
                rows,
            )
        )
        section.blocks.append(summary["verdict"])
        for family in settings["families"]:
            for edits in settings["edits"]:
                cell = [r for r in summary["rows"] if r["family"] == family and r["edits"] == edits]
                if not cell:
                    continue
                path = plot_points(
                    {r["label"]: (r[kept][0], r["A_M"][0]) for r in cell},
                    plots_dir / f"editing-frontier-{family}-{edits}.png",
                    title=f"{family}, {edits} edits: edit success vs facts kept",
                    xlabel="A_F\\S (unmodified facts still right)",
                    ylabel="A_M (edits that took)",
                    reference_x=cell[0][kept + " before"][0],
                )
                section.blocks.append(
                    Figure(path, f"{family}, {edits} edits: the trade-off, one point per method")
                )
                single = sorted(
                    (r for r in cell if isinstance(r["layers"], list) and len(r["layers"]) == 1),
                    key=lambda r: (r["norm"], r["delta"], r["layers"][0]),
                )
                for metric, name in (("A_M", "A_M"), ("A_mean", "A mean")):
                    if not single:
                        break
                    groups: dict[str, dict[str, tuple[float, float]]] = {}
                    for r in single:
                        bound = f"{r['norm']} δ={r['delta']:g}"
                        groups.setdefault(f"block {r['layers'][0]}", {})[bound] = tuple(r[metric])
                    path = plot_bars(
                        groups,
                        plots_dir / f"editing-layers-{metric}-{family}-{edits}.png",
                        title=f"{family}, {edits} edits: editing one block at a time",
                        ylabel=name,
                    )
                    section.blocks.append(
                        Figure(path, f"Per-layer effectiveness, {name} (constrained, FFN of one block)")
                    )
    return section


def _editing_real_section(studies: Sequence[dict[str, Any]], plots_dir: Path) -> Section:
    from palimpsest.experiments.editing_real import report_section  # the study owns its section

    return report_section(studies, plots_dir)


SECTION_BUILDERS: dict[str, SectionBuilder] = {
    "editing-real": _editing_real_section,
    "editing-study": editing_study_section,
    "edit": edit_section,
    "memory-study": memory_study_section,
    "memory-stats": memory_stats_section,
    "pretrain": pretrain_section,
    "evaluate": evaluate_section,
    "evaluate-task": evaluate_task_section,
    "plasticity": plasticity_section,
}


def build_sections(results: Sequence[dict[str, Any]], plots_dir: Path) -> list[Section]:
    """Group results by kind (in first-seen order) and build one section per kind."""
    grouped: dict[str, list[dict[str, Any]]] = {}
    for result in results:
        grouped.setdefault(result.get("kind", "unknown"), []).append(result)
    sections = []
    for kind, group in grouped.items():
        builder = SECTION_BUILDERS.get(kind)
        if builder is None:
            sections.append(Section(kind, [f"No report section is defined for results of kind '{kind}'."]))
        else:
            sections.append(builder(group, plots_dir))
    return sections


# --------------------------------------------------------------------------- rendering


def render_markdown(title: str, sections: Sequence[Section], root: Path, preface: str = "") -> str:
    lines = [f"# {title}", ""]
    if preface:
        lines += [preface, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(block.headers) + " |")
                lines.append("|" + "---|" * len(block.headers))
                lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in block.rows]
            elif isinstance(block, Figure):
                lines.append(f"![{block.caption}]({block.path.relative_to(root).as_posix()})")
                lines.append(f"*{block.caption}*")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1d1d1f;line-height:1.5}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0}img{max-width:100%}figcaption{font-size:.85rem;color:#555}
"""


def render_html(title: str, sections: Sequence[Section], preface: str = "") -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if preface:
        parts.append(f"<p>{html.escape(preface)}</p>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                    for row in block.rows
                )
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                parts.append(
                    f"<figure><img alt='{html.escape(block.caption)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
                )
            else:
                parts.append(f"<p>{html.escape(block)}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    results: Sequence[dict[str, Any]], out: str | Path, *, title: str = "palimpsest report", preface: str = ""
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (plots under ``out/plots``); return both paths."""
    out = Path(out)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    sections = build_sections(results, plots_dir)
    markdown_path, html_path = out / "report.md", out / "report.html"
    markdown_path.write_text(render_markdown(title, sections, out, preface), encoding="utf-8")
    html_path.write_text(render_html(title, sections, preface), encoding="utf-8")
    return markdown_path, html_path
