"""Second probe for the issue "A memory only the taught facts read": can a *learnt* gate do what a
similarity radius cannot (``probe.py``: neighbours lie as close to a taught key as the taught
prompt after text)?

The gate here is the simplest learnt one: a logistic scorer on the FFN's input at the subject's
last token (block 15, centred by wiki-en's mean input), trained with the taught facts' prompts as
positives (the edit template, the edit template after two passages of text, every paraphrase
but the held-out one) and, as negatives, the neighbours' and same-subject prompts of those facts
and wiki-en tokens. It is scored on what it never saw: the held-out paraphrase and a third
passage before the edit prompt (positives), the neighbours of *other* benchmark cases (other
subjects of the same relations), and held-out wiki-en tokens (negatives).

    python results/gated-memory-probe-real/learned_gate.py [FACTS]     # default 128; ~5 min here
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from probe import HERE, block_inputs, subject_end, wiki_inputs

from palimpsest.data import load_tokenizer
from palimpsest.editing.benchmark import read_benchmark
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.storage import write_json

BLOCK = 15
PASSAGES = (
    "The river rises in the hills north of the town and flows south through farmland before it "
    "reaches the sea. Its valley has been settled since the Bronze Age. ",
    "The committee met on Tuesday to discuss the budget for the coming year, and the chair asked "
    "for a vote before the end of the month. ",
    "Bread is made from flour, water and yeast; the dough is kneaded, left to rise and baked in a "
    "hot oven until its crust is brown. ",
)


def main() -> None:
    facts_wanted = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    model = load_pretrained("smollm2-135m").eval()
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    cases = read_benchmark(HERE.parent / "many-edits-real" / "benchmark.jsonl")
    taught_cases, other_cases = cases[:facts_wanted], cases[facts_wanted : 3 * facts_wanted]
    taught = [case.request.new_fact for case in taught_cases]
    taught_pairs = {(fact.subject, fact.relation.name) for fact in taught}
    sets: dict[str, list[tuple[str, str]]] = {}

    def add(name: str, text: str, subject: str) -> None:
        sets.setdefault(name, []).append((text, subject))

    for case, fact in zip(taught_cases, taught, strict=True):
        held_out = fact.held_out_template(0)
        add("train +", fact.prompt(0), fact.subject)
        for passage in PASSAGES[:2]:
            add("train +", passage + fact.prompt(0), fact.subject)
        for template in range(1, len(fact.relation.templates)):
            add(
                "held-out paraphrase" if template == held_out else "train +",
                fact.prompt(template),
                fact.subject,
            )
        add("third passage", PASSAGES[2] + fact.prompt(0), fact.subject)
        for other in (*case.neighbours, *case.same_subject):
            if (other.subject, other.relation.name) not in taught_pairs:
                add("train -", other.prompt(0), other.subject)
    for case in other_cases:
        for other in case.neighbours:
            if (other.subject, other.relation.name) not in taught_pairs:
                add("other neighbours", other.prompt(0), other.subject)
    cache = HERE / f".states-{facts_wanted}.pt"  # the forward passes are most of the time
    if cache.is_file():
        states, wiki = torch.load(cache)
    else:
        states, wiki = _states(model, tokenizer, sets), wiki_inputs(model, tokenizer)[BLOCK]
        torch.save((states, wiki), cache)
    mean, half = wiki.mean(dim=0), len(wiki) // 2
    measured = {name: _fit_and_score(states, wiki, mean, half, **options) for name, options in GATES.items()}
    sizes = {name: len(rows) for name, rows in sets.items()} | {"held-out wiki-en tokens": len(wiki) - half}
    write_json(
        HERE / "learned_gate.json",
        {"facts": len(taught), "block": BLOCK, "gates": {k: str(v) for k, v in GATES.items()},
         "opened": measured, "sizes": sizes},
    )  # fmt: skip
    for gate, shares in measured.items():
        print(gate, "|", " | ".join(f"{name} {share:.1%}" for name, share in shares.items()))


#: The gates fitted: a logistic scorer with the classes weighted equally, unweighted, with the
#: taught facts' neighbours (hard negatives) weighted 5x, and a small MLP scorer (can a nonlinear
#: scorer learn *which* subjects were taught?).
GATES = {
    "linear, balanced": {"hidden": 0, "balanced": True, "hard": 1.0},
    "linear, unweighted": {"hidden": 0, "balanced": False, "hard": 1.0},
    "linear, neighbours x5": {"hidden": 0, "balanced": False, "hard": 5.0},
    "MLP 256, neighbours x5": {"hidden": 256, "balanced": False, "hard": 5.0},
}


def _states(model, tokenizer, sets: dict) -> dict[str, torch.Tensor]:
    return {
        name: block_inputs(
            model, tokenizer, [t for t, _ in rows], [subject_end(tokenizer, t, s) for t, s in rows]
        )[BLOCK]
        for name, rows in sets.items()
    }


def _fit_and_score(states, wiki, mean, half, *, hidden: int, balanced: bool, hard: float) -> dict[str, float]:
    torch.manual_seed(0)
    train_x = torch.cat([states["train +"], states["train -"], wiki[:half]]) - mean
    positives, hard_negatives = len(states["train +"]), len(states["train -"])
    train_y = torch.cat([torch.ones(positives), torch.zeros(hard_negatives + half)])
    weights = torch.cat([torch.ones(positives), torch.full((hard_negatives,), hard), torch.ones(half)])
    if balanced:  # wiki-en tokens outnumber the taught prompts: weight the two classes equally
        weights[:positives] *= weights[positives:].sum() / positives
    scale = train_x.norm(dim=-1).mean()
    dim = train_x.shape[1]
    scorer = (
        torch.nn.Linear(dim, 1)
        if hidden == 0
        else torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
    )
    optimizer = torch.optim.Adam(scorer.parameters(), lr=1e-2 if hidden == 0 else 3e-3, weight_decay=1e-4)
    for _ in range(500 if hidden == 0 else 1500):
        optimizer.zero_grad()
        logits = scorer(train_x / scale).squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, train_y, weight=weights)
        loss.backward()
        optimizer.step()

    def opened(x: torch.Tensor) -> float:
        with torch.no_grad():
            return float((scorer((x - mean) / scale).squeeze(-1) > 0).float().mean())

    return {
        "train +": opened(states["train +"]), "train -": opened(states["train -"]),
        "held-out paraphrase": opened(states["held-out paraphrase"]),
        "third passage": opened(states["third passage"]),
        "other neighbours": opened(states["other neighbours"]),
        "held-out wiki-en tokens": opened(wiki[half:]),
    }  # fmt: skip


if __name__ == "__main__":
    main()
