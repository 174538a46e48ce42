"""Can a gate key a sequence's first position by the token there? SmolLM2-135M, block 15's MLP input
(the gated memory's input).

    python results/gated-memory-probe-real/first_position.py     # ~2 min here

First-position inputs of 1,573 tokens (the single-token subjects of the built-in fact tables and
random vocabulary tokens), each alone; centred by their mean and normalised: each token's best cosine
to another token; the same tokens first in longer prompts of a padded batch against their own; the
later positions of 40 wiki-en validation passages against every first-position input.
Writes ``first_position.json``.
"""

import json
from pathlib import Path

import torch

from palimpsest.data import load_tokenizer
from palimpsest.data.facts import FACT_SETS, builtin_facts, city_facts
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.recall import text_passages

torch.manual_seed(0)
path = resolve_pretrained("smollm2-135m")
model = load_pretrained(str(path)).eval()
tok = load_tokenizer(str(path))
block = model.model.layers[15].mlp
cap = {}
block.register_forward_pre_hook(lambda m, a: cap.__setitem__("x", a[0]))

subjects = sorted(
    {f.subject for n in FACT_SETS for f in builtin_facts(n)} | {f.subject for f in city_facts(2000)}
)
single = [s for s in subjects if len(tok(s)["input_ids"]) == 1]
print("subjects", len(subjects), "single-token", len(single))
ids = [tok(s)["input_ids"][0] for s in single]
rng = torch.Generator().manual_seed(0)
extra = torch.randint(200, tok.vocab_size, (1500,), generator=rng).tolist()
all_ids = sorted(set(ids + extra))
with torch.no_grad():
    states = []
    for i in range(0, len(all_ids), 256):
        chunk = torch.tensor(all_ids[i : i + 256]).unsqueeze(1)
        model(input_ids=chunk)
        states.append(cap["x"][:, 0].float())
    first = torch.cat(states)
    centre0 = first.mean(0)

    def normed(r, c):
        r = r - c
        return r / r.norm(dim=-1, keepdim=True)

    k = normed(first, centre0)
    cos = k @ k.T
    cos.fill_diagonal_(-2)
    best = cos.max(dim=1).values
    raw = first / first.norm(dim=-1, keepdim=True)
    rc = raw @ raw.T
    rc.fill_diagonal_(-2)
    # the same token first in a longer prompt, in a padded batch
    prompts = [f"{s} is a city in" for s in single[:64]] + ["x " * 9 for _ in range(8)]
    enc = tok(prompts, return_tensors="pt", padding=True) if tok.pad_token else None
    if enc is None:
        tok.pad_token = tok.eos_token
        enc = tok(prompts, return_tensors="pt", padding=True)
    model(**enc)
    again = cap["x"][:64, 0].float()
    idx = [all_ids.index(i) for i in ids[:64]]
    same = (normed(again, centre0) * k[idx]).sum(-1)
    # later positions of wiki text against the first-position keys
    passages = text_passages(40, words=48, seed=7, split="validation")
    later = []
    for p in passages:
        e = tok(p, return_tensors="pt")
        model(**e)
        later.append(cap["x"][0, 1:].float())
    later = torch.cat(later)
    against = (normed(later, centre0) @ k.T).max(dim=1).values
    out = {
        "tokens": len(all_ids),
        "single_token_subjects": len(single),
        "subjects": len(subjects),
        "raw_cosine_between_tokens": {
            "median": rc.max(1).values.median().item(),
            "min_best": rc.max(1).values.min().item(),
        },
        "centred_best_cosine_to_another_token": {q: best.quantile(q).item() for q in (0.5, 0.9, 0.99, 1.0)},
        "same_token_in_a_padded_prompt": {"min": same.min().item(), "median": same.median().item()},
        "later_positions_best_cosine_to_a_first_key": {
            q: against.quantile(q).item() for q in (0.5, 0.99, 1.0)
        },
    }
(Path(__file__).parent / "first_position.json").write_text(json.dumps(out, indent=1) + "\n")
print(json.dumps(out, indent=1))
