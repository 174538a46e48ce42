"""The knowledge study's report section: tables and plots of learning against keeping."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from palimpsest.experiments.knowledge.scales import ANCHORS
from palimpsest.plotting import plot_points
from palimpsest.recall import EVALUATION_PASSAGES
from palimpsest.report import Figure, Table, pm

if TYPE_CHECKING:  # the results class renders with this module's functions
    from palimpsest.experiments.knowledge.results import KnowledgeResults


def study_blocks(study: KnowledgeResults, plots_dir: Path) -> list[str | Table | Figure]:
    settings = study.settings
    memory = settings.memory
    blocks: list[str | Table | Figure] = [
        f"Scale '{study.scale}': {study.model}, nothing trained before. Per N and seed, "
        f"{100 * settings.counterfactual_share:.0f}% of the N taught facts are counterfactual edits of "
        f"facts it recalls, the rest true city -> country facts it gets wrong; {settings.kept} other "
        "recalled facts "
        f"are kept (never trained on). Every arm starts from the pretrained weights and takes the same "
        f"optimizer steps (max({settings.min_steps}, {settings.epochs} epochs) at batch "
        f"{settings.batch_size}; "
        "the editor's steps see every fact and stop when all have taken). Learned = exact match through the "
        f"taught template (after text: the same after each of {EVALUATION_PASSAGES} held-out passages of "
        "wiki-en); "
        "paraphrase = through the held-out template; generation = the greedy continuation "
        f"({settings.generation_tokens} tokens) names the answer; kept = the kept facts still recalled; "
        "perplexity on held-out wiki-en. Memory arms: a residual memory of "
        f"{memory.n_keys**2:,} slots at depth {memory.layers}, zero values (outputs unchanged). "
        "Slots outdated = the share of slots the new facts left untouched (Kim & Jung's outdated slots, the "
        "whole learning run as the window). "
        f"Mean ± std over {len(settings.seeds)} seed(s)"
        + "".join(f"; N={n} on seed(s) {', '.join(map(str, seeds))} only" for n, seeds in settings.size_seeds)
        + (
            f" (the editor on the first seed only from N={settings.editor_one_seed_from}: each of its steps "
            "sees every fact)."
            if settings.editor_one_seed_from is not None
            and max(settings.sizes) >= settings.editor_one_seed_from
            else "."
        ),
        Table(
            ["relation", "facts", "recalled", "recall %"],
            [[name, v.facts, v.recalled, f"{100 * v.recall:.0f}"] for name, v in study.known.items()],
        ),
    ]
    headers = [
        "N", "arm", "learned", "after text", "paraphrase", "generation", "kept", "kept after text",
        "kept lost (points)",
        "perplexity change %", "steps", "seconds", "peak MiB", "trained params", "changed params",
        "slots changed (read by wiki)", "slots outdated %", "seeds",
    ]  # fmt: skip
    table = []
    for r in study.summary.rows:
        slots = (
            f"{r.slots_changed[0]:,.0f} ({r.slots_changed_read_by_wiki[0]:,.0f})"
            if r.slots_changed is not None and r.slots_changed_read_by_wiki is not None
            else "-"
        )
        measures = ("learned", "learned_after_text", "paraphrase", "generation", "kept", "kept_after_text")
        shares = [r.after.get(m) for m in measures] + [r.kept_lost]
        table.append([
            r.size, r.arm, *(pm(share, scale=100, digits=0) for share in shares),
            pm(r.perplexity_change, digits=1), f"{r.steps[0]:.0f}", f"{r.seconds[0]:.0f}",
            f"{r.peak_mib[0]:.0f}" if r.peak_mib is not None else "-", f"{r.trained_parameters:,}",
            f"{r.changed_parameters[0]:,.0f}", slots,
            pm(r.slots_outdated, scale=100, digits=1) if r.slots_outdated is not None else "-", r.seeds,
        ])  # fmt: skip
    blocks.append(Table(headers, table))
    removals = [r for r in study.summary.rows if r.removal is not None]
    if removals:
        blocks.append(
            f"Removal (gated memory): {100 * settings.removal_share:.0f}% of the taught facts, spread "
            "over the draw, taken out as `memory forget` does; restored = the removed fact's recall (its "
            "taught answer, and a counterfactual's old object) is what the base model's was; others = the "
            "taught facts left, before and after; then every fact taken out and the logits on a wiki-en "
            "block compared with the base model's."
        )
        blocks.append(Table(REMOVAL_HEADERS, [_removal_row(r) for r in removals]))
    before = [r for r in study.summary.rows if r.arm == settings.arms[0].name]
    if before:
        blocks.append(
            Table(
                [
                    "N",
                    "learned before",
                    "after text",
                    "paraphrase before",
                    "kept before",
                    "kept after text",
                    "kept generation before",
                    "perplexity before",
                ],
                [
                    [
                        r.size,
                        *(
                            pm(r.before.get(m), scale=100, digits=0)
                            for m in (
                                "learned",
                                "learned_after_text",
                                "paraphrase",
                                "kept",
                                "kept_after_text",
                                "kept_generation",
                            )
                        ),
                        pm(r.before["perplexity"], digits=2),
                    ]
                    for r in before
                ],
            )
        )
    blocks.append(
        Table(
            ["anchor (Lin et al. 2025, not this model)", "NaturalQuestions F1 lost %"],
            [list(anchor) for anchor in ANCHORS],
        )
    )
    blocks.append(study.summary.verdict)
    for size in settings.sizes:
        cell = [r for r in study.summary.rows if r.size == size]
        if not cell:
            continue
        path = plot_points(
            {r.arm: (r.after["kept"][0], r.after["learned"][0]) for r in cell},
            plots_dir / f"knowledge-frontier-{size}.png",
            title=f"{study.model}: {size} new facts — learning vs forgetting",
            xlabel="kept facts still recalled (forgetting: left)", ylabel="taught facts recalled (learning)",
            reference_x=cell[0].before["kept"][0],
            reference_label="kept facts recalled before training",
            spread={r.arm: (r.after["kept"][1], r.after["learned"][1]) for r in cell},
            legend=True,
        )  # fmt: skip
        blocks.append(
            Figure(path, f"N={size}: one point per arm (mean ± std over seeds); dashed: before training")
        )
        path = plot_points(
            {r.arm: (r.perplexity_change[0], r.after["learned"][0]) for r in cell},
            plots_dir / f"knowledge-fluency-{size}.png",
            title=f"{study.model}: {size} new facts — learning vs wiki-en perplexity",
            xlabel="wiki-en perplexity change % (forgetting: right)",
            ylabel="taught facts recalled (learning)", legend=True, shares=False,
            spread={r.arm: (r.perplexity_change[1], r.after["learned"][1]) for r in cell},
        )  # fmt: skip
        blocks.append(Figure(path, f"N={size}: learning against the change of general-text perplexity"))
    return blocks


REMOVAL_HEADERS = [
    "N", "arm", "removed", "restored", "taught answer left", "others before", "others after", "kept after",
    "perplexity after", "slots zeroed", "seconds", "base model bit for bit",
]  # fmt: skip


def _removal_row(row) -> list[object]:
    removal = row.removal
    shares = ("restored", "removed_learned", "others_learned_before", "others_learned", "kept")
    return [
        row.size, row.arm, f"{removal['removed'][0]:.0f}",
        *(pm(removal[m], scale=100, digits=0) for m in shares), pm(removal["perplexity"], digits=2),
        f"{removal['slots_zeroed'][0]:,.0f}", f"{removal['seconds'][0]:.0f}",
        f"{100 * removal['base_identical_once_all_removed'][0]:.0f}% of seeds",
    ]  # fmt: skip
