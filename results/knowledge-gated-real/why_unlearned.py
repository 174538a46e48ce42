"""Which of the N=128 draw's facts the gated memory does not learn, and whether its gate opens at them.

    python results/knowledge-gated-real/why_unlearned.py [N] [SEED] ['{gate settings}']   # ~15 min, 1 thread

Teaches the knowledge study's draw (seed 0, N=128) exactly as its gated-memory arm does (no removal),
then per taught fact: recalled or not, whether the gate opens at its prompt as written
(``memory list``'s "opens"), the slots it reads and owns, its relation and how its subject is
tokenised. ``gate settings`` (``GateTraining`` fields, JSON) replace the study's for this run, and the
file is then named after them. Writes ``why_unlearned-N[-settings].json`` beside this file.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import replace
from pathlib import Path

from palimpsest.data import load_tokenizer
from palimpsest.experiments.common import wiki_perplexity_set
from palimpsest.experiments.knowledge import SCALES, Arm, run_arm
from palimpsest.experiments.knowledge.facts import draw, survey
from palimpsest.memory.gated import taught_fact_rows
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.recall import fact_recall

HERE = Path(__file__).parent


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    changed = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    scale = replace(SCALES["real"], removal_share=0.0)
    scale = replace(scale, gate=replace(scale.gate, **changed))
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    model = load_pretrained("smollm2-135m").eval()
    _known, recalled, wrong = survey(model, tokenizer, scale, stored=HERE / "units" / "survey.json")
    chosen = draw(recalled, wrong, size, seed, scale)
    perplexity = wiki_perplexity_set(tokenizer, scale.block_size, scale.perplexity_blocks)
    named = "".join(f"-{key}-{value}" for key, value in sorted(changed.items()))
    work = Path("runs") / f"why-unlearned-{size}{named}"
    run = run_arm(model, tokenizer, Arm("gated memory", "gated-memory"), chosen, perplexity, scale, work,
                  size=size, seed=seed)  # fmt: skip
    hits = fact_recall(model, tokenizer, chosen.taught).recalled
    rows = {(row.subject, row.relation): row for row in taught_fact_rows(model, tokenizer)}
    facts = []
    for fact, previous, hit in zip(chosen.taught, chosen.previous, hits, strict=True):
        row = rows.get((fact.subject, fact.relation.name))
        facts.append({
            "subject": fact.subject, "relation": fact.relation.name, "answer": fact.object,
            "counterfactual": previous is not None, "recalled": hit,
            "gate_opens": row.opens if row else None, "slots": row.slots if row else None,
            "own_slots": row.own_slots if row else None,
            "subject_tokens": len(tokenizer(fact.subject)["input_ids"]),
            "subject_opens_prompt": fact.prompt(0).startswith(fact.subject),
        })  # fmt: skip

    def share(group, key):
        return sum(f[key] for f in group) / len(group) if group else None

    summary = {}
    for name, group in {
        "all": facts, "recalled": [f for f in facts if f["recalled"]],
        "not recalled": [f for f in facts if not f["recalled"]],
        "gate opens": [f for f in facts if f["gate_opens"]],
        "gate closed": [f for f in facts if not f["gate_opens"]],
        "counterfactual": [f for f in facts if f["counterfactual"]],
        "correction": [f for f in facts if not f["counterfactual"]],
    }.items():  # fmt: skip
        summary[name] = {"facts": len(group), "recalled": share(group, "recalled"),
                         "gate_opens": share(group, "gate_opens")}  # fmt: skip
    record = {
        "size": size,
        "seed": seed,
        "gate": changed,
        "after": run.after,
        "summary": summary,
        "facts": facts,
    }
    path = HERE / f"why_unlearned-{size}{named}.json"
    path.write_text(json.dumps(record, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
