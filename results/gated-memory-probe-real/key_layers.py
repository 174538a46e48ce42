"""Which block's states tell a taught subject's unseen phrasings from the subjects it was not taught?

    python results/gated-memory-probe-real/key_layers.py [N] [SEED]     # ~10 min here

The gated memory's codebook keeps, for each taught fact, the memory's input (block 15's FFN input) at
the subject's last token of every phrasing it was taught through, and opens where an input lies
within a cosine of a key. Through the phrasing each fact holds out, the knowledge study's gate opens
for about half the facts (``results/knowledge-gated-real/gate_fit-128.json``): the city relation's
held-out "The city of {subject} lies in" puts words in front of the subject, and a deep block's
state at the subject mixes them in. An early block's state is more the subject's own tokens. This
probe measures, on the knowledge study's draw (N facts, seed) and with nothing trained, for the
residual stream entering each of a range of blocks and for its FFN's input (each centred by its
mean over wiki-en tokens): the
keys (each taught fact through its taught templates as written and after the gate's two training
passages), then the share of inputs within cosine t of any key, for t on a grid, for the held-out
paraphrase, the edit prompt after three validation passages, the 64 kept facts' prompts (every
template; those whose subject was taught through another relation apart) and 256 cities neither
taught nor drawn (every template). For each block it reports the paraphrase and after-text shares
at the lowest t that opens at most 5% of the kept facts of other subjects and of the other cities.
Writes ``key_layers-N.json``.
"""

from __future__ import annotations

import json
import logging
import random
import sys
from pathlib import Path

import torch

from palimpsest.data import load_tokenizer
from palimpsest.data.facts import city_facts
from palimpsest.experiments.common import wiki_perplexity_set
from palimpsest.experiments.knowledge import SCALES
from palimpsest.experiments.knowledge.facts import draw, survey
from palimpsest.memory.gated import GateTraining, fact_templates, training_contexts
from palimpsest.models import load_pretrained, resolve_pretrained, transformer_blocks
from palimpsest.recall import PLAIN, after_text, build_probe, text_passages

HERE = Path(__file__).parent
BLOCKS = (1, 2, 3, 4, 6, 8, 11, 15)
SOURCES = ("residual", "ffn_input")
THRESHOLDS = [round(0.50 + 0.02 * step, 2) for step in range(25)]
#: The most of the kept and other prompts a threshold may open.
NEGATIVE_BUDGET = 0.05


@torch.no_grad()
def block_states(model, ids):
    """``{source: [len(BLOCKS), tokens, dim]}`` for one sequence: the residual stream entering each
    block of ``BLOCKS`` and the input of its FFN (the normed state the gated memory reads; SmolLM2's
    blocks call it ``mlp``)."""
    _, blocks = transformer_blocks(model)
    seen: dict[int, torch.Tensor] = {}

    def keep(block):
        return lambda _module, args: seen.__setitem__(block, args[0])

    hooks = [blocks[block].mlp.register_forward_pre_hook(keep(block)) for block in BLOCKS]
    try:
        hidden = model(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
    finally:
        for hook in hooks:
            hook.remove()
    return {"residual": torch.stack([hidden[block][0] for block in BLOCKS]),
            "ffn_input": torch.stack([seen[block][0] for block in BLOCKS])}  # fmt: skip


def subject_states(model, tokenizer, rows):
    """Per row ``(fact, template, context)``, at the subject's last token: ``{source: [len(BLOCKS),
    rows, dim]}`` (rows that cannot be probed left out)."""
    states: dict[str, list[torch.Tensor]] = {source: [] for source in SOURCES}
    for fact, template, context in rows:
        probe = build_probe(tokenizer, fact, template=template, causal=True, context=context)
        if probe is None or not probe.subject_positions:
            continue
        for source, tensor in block_states(model, probe.input_ids[: probe.answer_positions[0]]).items():
            states[source].append(tensor[:, probe.subject_positions[-1]])
    return {source: torch.stack(rows, dim=1) for source, rows in states.items()}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    scale = SCALES["real"]
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    model = load_pretrained("smollm2-135m").eval()
    _known, recalled, wrong = survey(
        model, tokenizer, scale, stored=HERE.parent / "knowledge-gated-real" / "units" / "survey.json"
    )
    chosen = draw(recalled, wrong, size, seed, scale)
    taught_subjects = {fact.subject for fact in chosen.taught}
    contexts = training_contexts(GateTraining(seed=seed))
    key_rows = [(fact, template, PLAIN) for fact in chosen.taught
                for template in fact_templates(fact, [0], True)]  # fmt: skip
    key_rows += [(fact, 0, context) for fact in chosen.taught for context in contexts[1:]]
    held_out = [(fact, fact.held_out_template(), PLAIN) for fact in chosen.taught
                if fact.held_out_template() is not None]  # fmt: skip
    after = [(fact, 0, after_text(passage)) for passage in text_passages(3, seed=0, split="validation")
             for fact in chosen.taught]  # fmt: skip
    others = [fact for fact in city_facts(2000) if fact.subject not in taught_subjects]
    others = random.Random(seed).sample(others, 256)
    kept_rows = {
        name: [(fact, t, PLAIN) for fact in facts for t in range(len(fact.relation.templates))]
        for name, facts in (
            ("kept_same_subject", [f for f in chosen.kept if f.subject in taught_subjects]),
            ("kept_other_subjects", [f for f in chosen.kept if f.subject not in taught_subjects]),
        )
    }
    other_rows = [(fact, t, PLAIN) for fact in others for t in range(len(fact.relation.templates))]

    wiki = [block_states(model, list(block["input_ids"]))
            for block in wiki_perplexity_set(tokenizer, scale.block_size, 8)]  # fmt: skip
    centres = {
        source: torch.cat([states[source] for states in wiki], dim=1).mean(dim=1) for source in SOURCES
    }

    def directions(states):
        centred = {source: states[source] - centres[source][:, None, :] for source in SOURCES}
        return {source: c / c.norm(dim=-1, keepdim=True).clamp_min(1e-12) for source, c in centred.items()}

    sets = [("held_out_paraphrase", held_out), ("after_text", after), *kept_rows.items(),
            ("other_cities", other_rows)]  # fmt: skip
    keys = directions(subject_states(model, tokenizer, key_rows))
    measured = {name: directions(subject_states(model, tokenizer, rows)) for name, rows in sets}
    negatives = ("kept_other_subjects", "other_cities")
    counts = {name: measured[name]["residual"].shape[1] for name, _ in sets}
    record = {"size": size, "seed": seed, "keys": keys["residual"].shape[1], "counts": counts,
              "negative_budget": NEGATIVE_BUDGET, "budget_of": list(negatives), "sources": {}}  # fmt: skip
    for source in SOURCES:
        for index, block in enumerate(BLOCKS):
            nearest = {name: (states[source][index] @ keys[source][index].T).max(dim=-1).values
                       for name, states in measured.items()}  # fmt: skip
            curve = {str(t): {name: float((near >= t).float().mean()) for name, near in nearest.items()}
                     for t in THRESHOLDS}  # fmt: skip
            allowed = [t for t in THRESHOLDS if max(curve[str(t)][n] for n in negatives) <= NEGATIVE_BUDGET]
            best = min(allowed) if allowed else None
            record["sources"].setdefault(source, {})[str(block)] = {
                "threshold_within_budget": best,
                "at_that_threshold": curve.get(str(best)),
                "median_nearest": {name: float(near.median()) for name, near in nearest.items()},
                "curve": curve,
            }
            logging.info("%s, block %d: threshold %s -> %s", source, block, best, curve.get(str(best)))
    (HERE / f"key_layers-{size}.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
