"""The published claims of Chen et al. 2023 the plasticity study bears on, each judged by one rule."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from palimpsest.claims import Claim, Outcome, outcome_of
from palimpsest.experiments.plasticity.summary import BODY_MARGIN, ahead_early

if TYPE_CHECKING:  # the results class renders with this module's functions
    from palimpsest.experiments.plasticity.results import PlasticityResults

#: A pretrained body must model its language at least this much better than the unigram
#: distribution (nats/token) before relearning on it says anything: a body at the unigram level
#: has nothing for new embeddings to fit.
BODY_LOSS_MARGIN = 0.5


#: Where the committed runs show each claim at a scale that can judge it.
EVIDENCE = "results/plasticity-cpu-gpt2/"


def plasticity_claims(study: PlasticityResults) -> list[Claim]:
    """Chen et al.'s claims as this run measured them (see :mod:`palimpsest.claims`)."""
    summary, seeds = study.summary, len(study.settings.seeds)
    cells = summary.cells
    weak = [
        f"{v} {digest.validation_loss:.2f} vs unigram {digest.unigram_loss:.2f}"
        for v, digest in study.pretrain.items()
        if digest.validation_loss > digest.unigram_loss - BODY_LOSS_MARGIN
    ]
    if weak:
        faster_measured = f"bodies at the unigram level (val. loss {'; '.join(weak)} nats)"
        faster_outcome, faster_evidence = Outcome.NOT_MEASURABLE, EVIDENCE
    else:
        ahead = [ahead_early(c, seeds) for c in cells]
        gaps = [c.early_gap[0] for c in cells]
        faster_measured = (
            f"{min(gaps, default=math.nan):+.2f} to {max(gaps, default=math.nan):+.2f} nats lower at step "
            f"{cells[0].early_step if cells else '-'}; ahead in every seed in {sum(ahead)}/{len(cells)} "
            "language cells"
        )
        faster_outcome = outcome_of(ahead)
        faster_evidence = "" if all(ahead) and ahead else EVIDENCE
    task = summary.english_task_accuracy
    majority = max((summary.english_task_majority or {}).values(), default=math.nan)
    body_margin = min(task.values(), default=math.nan) - majority
    working = [
        c
        for c in cells
        if max(c.standard.zero_shot_accuracy[0], c.forgetting.zero_shot_accuracy[0])
        > c.standard.majority_baseline + 0.02
    ]
    gains = "; ".join(
        f"{100 * gain[0]:+.0f}% at {int(budget):,} tokens"
        for budget, gain in summary.relative_gain_by_budget.items()
    )
    if weak or not body_margin >= BODY_MARGIN:
        transfer_measured = (
            f"English task body {100 * min(task.values(), default=math.nan):.0f}% vs majority "
            f"{100 * majority:.0f}%: too weak a body to judge transfer"
        )
        transfer_outcome = Outcome.NOT_MEASURABLE
    elif not working:
        transfer_measured = f"no assembled model beats the majority class ({gains}: not evidence)"
        transfer_outcome = Outcome.NOT_MEASURABLE
    else:
        transfer_measured = f"relative gain {gains} (cells above majority: {len(working)}/{len(cells)})"
        transfer_outcome = outcome_of(c.relative_gain > 0 for c in working)
    budgets = sorted({c.budget for c in cells})
    if len(budgets) < 2 or weak:
        reversal_measured = "one token budget only" if len(budgets) < 2 else "bodies at the unigram level"
        reversal_outcome, reversal_evidence = Outcome.NOT_MEASURABLE, EVIDENCE
    else:
        behind = [c.final_gap_positive_seeds == 0 for c in cells if c.budget == budgets[-1]]
        reversal_measured = (
            f"at {budgets[-1]:,} tokens the standard model keeps the lower loss in "
            f"{sum(behind)}/{len(behind)} languages (every seed)"
        )
        reversal_outcome, reversal_evidence = outcome_of(behind), ""
    return [
        Claim(
            "forget", "pretraining with forgetting relearns a new language faster",
            "adaptation loss converges faster (Chen et al. 2023)",
            faster_measured, faster_outcome, faster_evidence,
        ),
        Claim(
            "forget", "zero-shot transfer to the new language improves",
            "+21.2% relative XNLI accuracy, mean of 14 languages at 5M tokens",
            transfer_measured, transfer_outcome, EVIDENCE,
        ),
        Claim(
            "forget", "the advantage reverses with plenty of data",
            "Thai: ahead at 5M tokens (57.4 vs 33.5), behind at 5B (61.0 vs 67.6)",
            reversal_measured, reversal_outcome, reversal_evidence,
        ),
    ]  # fmt: skip
