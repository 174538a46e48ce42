"""The knowledge study's summary: each arm over seeds per N, and the verdict in prose."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from palimpsest.experiments.common import mean_std, paired_direction
from palimpsest.experiments.knowledge.arms import ArmRun
from palimpsest.experiments.knowledge.facts import Baseline
from palimpsest.experiments.knowledge.scales import ANCHORS, KnowledgeScale

METRICS = (
    "learned", "learned_after_text", "paraphrase", "generation", "kept", "kept_after_text", "kept_generation",
    "perplexity",
)  # fmt: skip
#: Measures added after units were stored: a row has them only where every one of its runs measured them.
LATER_METRICS = ("learned_after_text", "kept_after_text")


@dataclass
class KnowledgeRow:
    """One arm at one N: mean ± std over seeds of every measure, its change, and the cost."""

    arm: str
    method: str
    size: int
    seeds: int
    after: dict[str, tuple[float, float]]
    before: dict[str, tuple[float, float]]
    #: kept recall lost (before - after) and perplexity change in percent, per seed then mean ± std.
    kept_lost: tuple[float, float]
    perplexity_change: tuple[float, float]
    steps: tuple[float, float]
    seconds: tuple[float, float]
    #: None where the platform cannot measure it.
    peak_mib: tuple[float, float] | None
    trained_parameters: int
    changed_parameters: tuple[float, float]
    slots_changed: tuple[float, float] | None = None
    slots_changed_read_by_wiki: tuple[float, float] | None = None
    #: Share of all memory slots wiki-en text reads (the background of the TF-IDF ranking).
    slots_used_by_wiki: tuple[float, float] | None = None
    #: Kim & Jung's "outdated" slots with the whole learning run as the window: the share of
    #: all slots whose values the new facts left untouched (still zero).
    slots_outdated: tuple[float, float] | None = None
    #: The seeds, and per seed (in that order) ``kept_lost`` and ``perplexity_change``: two arms
    #: are compared by their paired differences over the seeds both ran (None in results written
    #: before they were kept).
    seed_list: list[int] | None = None
    per_seed: dict[str, list[float]] | None = None
    #: Gated memory arms: the removal's measures (:func:`~palimpsest.experiments.knowledge.arms.run_arm`),
    #: mean ± std over the seeds that measured it.
    removal: dict[str, tuple[float, float]] | None = None

    def paired(self, other: KnowledgeRow, measure: str) -> tuple[list[float], list[float]]:
        """This row's and ``other``'s per-seed values of ``measure`` on the seeds both ran."""
        if (
            self.per_seed is None
            or other.per_seed is None
            or self.seed_list is None
            or other.seed_list is None
        ):
            return [], []
        mine = dict(zip(self.seed_list, self.per_seed[measure], strict=True))
        theirs = dict(zip(other.seed_list, other.per_seed[measure], strict=True))
        common = [seed for seed in self.seed_list if seed in theirs]
        return [mine[seed] for seed in common], [theirs[seed] for seed in common]


@dataclass
class KnowledgeSummary:
    rows: list[KnowledgeRow]
    verdict: str


def summarise(
    baselines: Sequence[Baseline], runs: Sequence[ArmRun], scale: KnowledgeScale
) -> KnowledgeSummary:
    before = {(b.size, b.seed): b.before for b in baselines}
    rows = []
    for size in scale.sizes:
        for arm in scale.arms:
            group = [r for r in runs if r.size == size and r.arm == arm.name]
            if not group:
                continue
            firsts = [before[(r.size, r.seed)] for r in group]
            pairs = list(zip(firsts, group, strict=True))
            lost = [b["kept"] - r.after["kept"] for b, r in pairs]
            moved = [100 * (r.after["perplexity"] / b["perplexity"] - 1) for b, r in pairs]
            memory = group[0].slots_changed is not None
            slots = scale.memory.n_keys**2 * len(scale.memory.layers)
            rows.append(
                KnowledgeRow(
                    arm=arm.name, method=arm.method, size=size, seeds=len(group),
                    after=_measures([r.after for r in group]), before=_measures(firsts),
                    kept_lost=mean_std(lost), perplexity_change=mean_std(moved),
                    seed_list=[r.seed for r in group],
                    per_seed={"kept_lost": lost, "perplexity_change": moved},
                    steps=mean_std(r.steps for r in group), seconds=mean_std(r.seconds for r in group),
                    peak_mib=mean_std(r.peak_mib for r in group) if group[0].peak_mib is not None else None,
                    trained_parameters=group[0].trained_parameters,
                    changed_parameters=mean_std(r.changed_parameters for r in group),
                    slots_changed=mean_std(r.slots_changed for r in group) if memory else None,
                    slots_used_by_wiki=mean_std(r.slots_used_by_wiki for r in group) if memory else None,
                    slots_changed_read_by_wiki=(
                        mean_std(r.slots_changed_read_by_wiki for r in group) if memory else None
                    ),
                    slots_outdated=mean_std(1 - r.slots_changed / slots for r in group) if memory else None,
                    removal=_removal(group),
                )
            )  # fmt: skip
    return KnowledgeSummary(rows=rows, verdict=_verdict(rows, scale))


def _measures(measured: Sequence[dict[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean ± std of each measure over the seeds; a later measure only where all of them have it."""
    return {
        m: mean_std(one[m] for one in measured)
        for m in METRICS
        if m not in LATER_METRICS or all(m in one for one in measured)
    }


def _removal(group: Sequence[ArmRun]) -> dict[str, tuple[float, float]] | None:
    measured = [r.removal for r in group if r.removal is not None]
    if not measured:
        return None
    return {name: mean_std(m[name] for m in measured) for name in measured[0]}


#: Two arms "learned equally" when their taught-fact recall differs by at most this much.
EQUAL_LEARNING = 0.15


def _described(row: KnowledgeRow) -> str:
    after = row.after
    text = (
        f" ({100 * after['learned_after_text'][0]:.0f}% after text)" if "learned_after_text" in after else ""
    )
    paraphrase = after["paraphrase"][0]
    return (
        f"{row.arm} learned {100 * after['learned'][0]:.0f}%{text} (paraphrase {100 * paraphrase:.0f}%), "
        f"kept {100 * after['kept'][0]:.0f}% (lost {100 * row.kept_lost[0]:+.0f} points), perplexity "
        f"{row.perplexity_change[0]:+.1f}%"
    )


def _verdict(rows: list[KnowledgeRow], scale: KnowledgeScale) -> str:
    parts = []
    for size in scale.sizes:
        cell = [r for r in rows if r.size == size]
        if not cell:
            continue
        described = "".join(f"\n- {_described(r)}" for r in cell)
        parts.append(
            f"N={size} (kept facts recalled before: {100 * cell[0].before['kept'][0]:.0f}%):{described}"
        )
        parts.append(_claim(cell, size))
        parts.append(_gated_memory(cell, size))
        parts.append(_specific_slots(cell, size))
    # paragraphs and lists: the report renders them (markdown as is, HTML by ``report._html_text``)
    return "\n\n".join(part for part in parts if part)


#: The issue "A memory only the taught facts read": learned and paraphrase at least, kept facts lost
#: (points) and perplexity change (%) at most.
GATED_GOALS = {"learned": 0.95, "paraphrase": 0.60, "kept_lost": 0.05, "perplexity_change": 0.5}
#: Its removal goals: removed facts back to their recall before teaching, the others' recall within
#: this many points of what it was before the removal.
REMOVAL_GOALS = {"restored": 0.95, "others_moved": 0.01}


def _gated_memory(cell: list[KnowledgeRow], size: int) -> str:
    """The gated memory against its goals and against the batch editor (the strongest weight editor)."""
    gated = [r for r in cell if r.method == "gated-memory"]
    editors = [r for r in cell if r.method == "batch-editor"]
    findings = []
    for mine in gated:
        learned, paraphrase = mine.after["learned"][0], mine.after["paraphrase"][0]
        lost, moved = mine.kept_lost[0], mine.perplexity_change[0]
        # the goals hold where users ask: the prompt as written and after preceding text (where measured)
        after_text = mine.after.get("learned_after_text", (None,))[0]
        text = f", {100 * after_text:.0f}% after text" if after_text is not None else ""
        missed = [
            name
            for name, met in (
                ("learned", learned >= GATED_GOALS["learned"]),
                ("learned after text", after_text is None or after_text >= GATED_GOALS["learned"]),
                ("paraphrase", paraphrase >= GATED_GOALS["paraphrase"]),
                ("kept lost", lost <= GATED_GOALS["kept_lost"]),
                ("perplexity", moved <= GATED_GOALS["perplexity_change"]),
            )
            if not met
        ]
        goals = "every goal met" if not missed else f"missed: {', '.join(missed)}"
        findings.append(
            f"{mine.arm}: learned {100 * learned:.0f}%{text} (goal >= 95%), paraphrase "
            f"{100 * paraphrase:.0f}% (>= 60%), kept facts lost {100 * lost:+.0f} points (<= 5), "
            f"perplexity {moved:+.1f}% (<= +0.5%): {goals}"
        )
        if mine.removal is not None:
            findings.append(_removal_finding(mine))
        for other in editors:
            kept = paired_direction(*mine.paired(other, "kept_lost"))
            gap = learned - other.after["learned"][0]
            words = {-1: "loses fewer kept facts", 0: "loses as many kept facts (within the spread)",
                     1: "loses more kept facts"}  # fmt: skip
            their_lost, their_learned = other.kept_lost[0], other.after["learned"][0]
            findings.append(
                f"{mine.arm} vs {other.arm}: {words[kept]} ({100 * lost:+.0f} vs {100 * their_lost:+.0f} "
                f"points), learns {100 * abs(gap):.1f} points {'more' if gap >= 0 else 'fewer'} "
                f"({100 * learned:.1f}% vs {100 * their_learned:.1f}%), perplexity {moved:+.1f}% vs "
                f"{other.perplexity_change[0]:+.1f}%"
                + (" (one seed: no spread to judge by)" if min(mine.seeds, other.seeds) < 2 else "")
            )
    if not findings:
        return ""
    return f"The gated memory at N={size}:" + "".join(f"\n- {line}" for line in findings)


def _specific_slots(cell: list[KnowledgeRow], size: int) -> str:
    """Did the memory arms write into slots ordinary text does not read (sparse fine-tuning's premise)?"""
    memory = [r for r in cell if r.slots_changed is not None and r.slots_used_by_wiki is not None]
    if not memory:
        return ""
    described = []
    for r in memory:
        changed, read = r.slots_changed[0], r.slots_changed_read_by_wiki[0]  # type: ignore[index]
        share = read / changed if changed else math.nan
        wiki_reads = r.slots_used_by_wiki[0]  # type: ignore[index]
        if not wiki_reads:  # a gated memory whose gate stays closed for ordinary text
            described.append(f"{r.arm}: {changed:,.0f} slots changed; wiki-en text reads no slot at all")
            continue
        described.append(
            f"{r.arm}: {changed:,.0f} slots changed, {100 * share:.0f}% of them read by wiki-en text "
            f"(which reads {100 * wiki_reads:.0f}% of all slots)"
        )
    return (
        f"Slots written at N={size} (the premise: new facts go to slots ordinary text leaves alone):"
        + "".join(f"\n- {line}" for line in described)
    )


def _claim(cell: list[KnowledgeRow], size: int) -> str:
    """'memory-only / sparse updates forget less at equal learning', judged at one N."""
    memory = [r for r in cell if r.method == "memory"]
    others = [r for r in cell if r.method in ("full", "lora")]
    if not memory or not others:
        sides = (("no memory arm", memory), ("no full fine-tuning or LoRA arm", others))
        absent = [words for words, arms in sides if not arms]
        return (
            f"N={size}: claim 'memory-only / sparse updates forget less at equal learning' not judged: "
            f"{' and '.join(absent)} ran at this N."
        )
    findings = []
    for mine in memory:
        for other in others:
            gap = mine.after["learned"][0] - other.after["learned"][0]
            if abs(gap) > EQUAL_LEARNING:
                findings.append(
                    f"{mine.arm} vs {other.arm}: not comparable "
                    f"(learned {100 * mine.after['learned'][0]:.0f}% vs "
                    f"{100 * other.after['learned'][0]:.0f}%)"
                )
                continue
            lost, other_lost = mine.kept_lost[0], other.kept_lost[0]
            fluency, other_fluency = mine.perplexity_change[0], other.perplexity_change[0]
            facts = paired_direction(*mine.paired(other, "kept_lost"))
            text = paired_direction(*mine.paired(other, "perplexity_change"))
            if facts == text == 0:
                outcome = "forgets as much (within the seed spread)"
            elif facts < 0 and text < 0:
                outcome = "forgets less (reproduced)"
            elif facts < 0 and text == 0:
                outcome = "loses fewer kept facts, moves perplexity as much (reproduced on facts only)"
            elif facts == 0 and text < 0:
                outcome = "moves perplexity less, loses as many kept facts (reproduced on general text only)"
            elif facts >= 0 and text >= 0:
                outcome = "forgets more (not reproduced)"
            elif facts > 0:
                outcome = "mixed: loses more kept facts, moves perplexity less"
            else:
                outcome = "mixed: loses fewer kept facts, moves perplexity more"
            lost_words = {-1: "fewer", 0: "as many (within the spread)", 1: "more"}
            moved_words = {-1: "less", 0: "as much (within the spread)", 1: "more"}
            outcome += f" — kept facts lost: {lost_words[facts]}, perplexity moved: {moved_words[text]}"
            if facts < 0 and other_lost > 0:  # how much less, beside the size of the paper's effect
                paper = dict(ANCHORS)
                reference = paper["LoRA" if other.method == "lora" else "full fine-tuning"]
                paper_cut = 100 * (1 - paper["sparse memory fine-tuning"] / reference)
                fewer = 100 * (1 - lost / other_lost)
                outcome += f", {fewer:.0f}% fewer (Lin et al.: {paper_cut:.0f}% less F1 lost)"
            findings.append(
                f"{mine.arm} vs {other.arm} at equal learning: {outcome} (kept lost {100 * lost:+.0f} vs "
                f"{100 * other_lost:+.0f} points, perplexity {fluency:+.1f}% vs {other_fluency:+.1f}%)"
            )
    single = [r.arm for r in [*memory, *others] if r.seeds < 2]
    caveat = (
        f" One seed only for {', '.join(single)}: no spread to judge a difference by, so these directions "
        "are not evidence."
        if single
        else ""
    )
    return f"Claim 'memory-only / sparse updates forget less at equal learning', N={size}.{caveat}" + "".join(
        f"\n- {finding}" for finding in findings
    )


def _removal_finding(row: KnowledgeRow) -> str:
    """The removal of part of the gated memory's facts against its goals."""
    removal = row.removal or {}
    restored = removal["restored"][0]
    moved = abs(removal["others_learned"][0] - removal["others_learned_before"][0])
    identical = removal["base_identical_once_all_removed"][0]
    missed = [
        name
        for name, met in (
            ("restored", restored >= REMOVAL_GOALS["restored"]),
            ("others unchanged", moved <= REMOVAL_GOALS["others_moved"]),
            ("base model once all removed", identical == 1.0),
        )
        if not met
    ]
    share = {name: 100 * removal[name][0] for name in ("removed_learned", "others_learned_before",
                                                       "others_learned", "kept")}  # fmt: skip
    goals = "every goal met" if not missed else f"missed: {', '.join(missed)}"
    return (
        f"{row.arm}, {removal['removed'][0]:.0f} of its facts taken out: {100 * restored:.0f}% back to "
        f"their recall before teaching (goal >= 95%; taught answer still recalled "
        f"{share['removed_learned']:.0f}%), the other taught facts {share['others_learned_before']:.0f}% -> "
        f"{share['others_learned']:.0f}% (within 1 point), kept facts {share['kept']:.0f}%, perplexity "
        f"{removal['perplexity'][0]:.2f}; every fact out: the base model's logits bit for bit on "
        f"{100 * identical:.0f}% of the seeds: {goals}"
    )
