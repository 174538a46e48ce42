"""A codebook of every taught phrasing's input against the fitted gate: which stays closed for subjects
it never saw, at the same recall of the taught facts' unseen phrasings?

    python results/gated-memory-probe-real/codebook.py 64      # ~4 min here

N many-edits facts taught as ``memory learn`` collects them (the memory's input at block 15 at the
subject's last token of the edit template, of every paraphrase but the held-out one, and after
two passages of wiki-en text). The codebook's keys are those inputs, centred by wiki-en's mean
input and normalised; an input opens it where its best cosine to a key reaches a threshold. Keys
and inputs at a sequence's first position are left out: the first token's input is the attention
sink's, alike for every token (cosine ~0.9999 whatever the token), so a key there would open every
prompt's first token and a query there matches every such key. Scored on what neither saw: the
held-out paraphrase, the edit template after three validation passages, the draw's neighbour
prompts whose subject was not taught (open if any token after the first opens) and wiki-en
validation tokens; beside it the fitted MLP gate (``GateTraining`` defaults) on the same inputs.
Writes ``codebook-N.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from palimpsest.experiments.many_edits.gated import facts_to_keep
from palimpsest.memory.gate import fit_gate
from palimpsest.memory.gated import (
    GateTraining,
    gate_texts,
    neighbour_facts,
    training_contexts,
)
from palimpsest.recall import PLAIN, after_text, text_passages

sys.path.insert(0, str(Path(__file__).parent))
from gate_variants import Setup, _Prompt

HERE = Path(__file__).parent
THRESHOLDS = (0.75, 0.8, 0.83, 0.86, 0.88, 0.9, 0.92, 0.95)


def main() -> None:
    facts = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    setup = Setup(facts)
    tokenizer, layer, cases, draw = setup.tokenizer, setup.layer, setup.cases, setup.draw
    taught, subjects, inputs = setup.taught, setup.subjects, setup.inputs

    def subject_rows(context, template_of):
        return setup.subject_rows(context, template_of, after_first=True)

    held_out = subject_rows(PLAIN, lambda fact: fact.held_out_template())
    after = torch.cat(
        [subject_rows(after_text(p), lambda _f: 0) for p in text_passages(3, seed=0, split="validation")]
    )
    unseen = [f for c in draw for f in c.neighbours if f.subject not in subjects]
    unseen_rows = [inputs([_Prompt(tokenizer(f.prompt(0))["input_ids"], None)])[1][1:] for f in unseen]
    wiki = inputs(
        [
            _Prompt(tokenizer(p)["input_ids"], None)
            for p in text_passages(60, words=48, seed=7, split="validation")
        ]
    )[1]
    settings = GateTraining()
    texts = gate_texts(
        tokenizer, taught, templates=[0], paraphrases=True, contexts=training_contexts(settings),
        closed_facts=neighbour_facts(taught, facts_to_keep(draw, cases[facts:]), settings), settings=settings,
    )  # fmt: skip
    positives, negatives, weights = inputs(texts)
    at_start = torch.tensor([text.open_at == 0 for text in texts if text.open_at is not None])
    centre = wiki.mean(dim=0)

    def normed(rows):
        rows = rows - centre
        return rows / rows.norm(dim=-1, keepdim=True)

    keys = normed(positives[~at_start])

    def best(rows):
        return (normed(rows) @ keys.T).max(dim=-1).values

    held, later = best(held_out), best(after)
    unseen_best = torch.tensor([best(rows).max().item() if len(rows) else -1.0 for rows in unseen_rows])
    wiki_first = torch.zeros(len(wiki), dtype=torch.bool)  # wiki's first positions: one per passage
    starts = [0]
    for text in [
        _Prompt(tokenizer(p)["input_ids"], None)
        for p in text_passages(60, words=48, seed=7, split="validation")
    ]:
        starts.append(starts[-1] + len(text.ids))
    wiki_first[starts[:-1]] = True
    wiki_best = best(wiki[~wiki_first])
    codebook = [
        {
            "threshold": threshold,
            "held_out_paraphrase_opened": (held >= threshold).float().mean().item(),
            "after_text_opened": (later >= threshold).float().mean().item(),
            "unseen_neighbour_prompts_opened": (unseen_best >= threshold).float().mean().item(),
            "wiki_tokens_opened": (wiki_best >= threshold).float().mean().item(),
        }
        for threshold in THRESHOLDS
    ]
    fit_gate(
        layer.gate, positives, negatives, negative_weights=weights, open_share=settings.open_share,
        centre=centre, seed=settings.seed,
    )  # fmt: skip
    with torch.no_grad():
        learned = {
            "held_out_paraphrase_opened": layer.gate(held_out).float().mean().item(),
            "after_text_opened": layer.gate(after).float().mean().item(),
            "unseen_neighbour_prompts_opened": sum(bool(layer.gate(r).any()) for r in unseen_rows if len(r))
            / len(unseen_rows),
            "wiki_tokens_opened": layer.gate(wiki[~wiki_first]).float().mean().item(),
        }
    document = {
        "facts": facts,
        "keys": len(keys),
        "keys_left_out_at_the_first_position": int(at_start.sum()),
        "held_out_paraphrases": len(held_out),
        "after_text_prompts": len(after),
        "unseen_neighbour_prompts": len(unseen_rows),
        "wiki_tokens": int((~wiki_first).sum()),
        "codebook": codebook,
        "fitted_mlp_gate": learned,
        "medians": {
            "held_out_paraphrase": held.median().item(),
            "after_text": later.median().item(),
            "unseen_neighbour_prompt": unseen_best.median().item(),
            "wiki_token": wiki_best.median().item(),
        },
    }
    (HERE / f"codebook-{facts}.json").write_text(json.dumps(document, indent=1))
    print(json.dumps(document, indent=1))


if __name__ == "__main__":
    main()
