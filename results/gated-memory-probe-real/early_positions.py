"""Are inputs at a sequence's early positions alike for every token, as at the first? (Why a rule that
opens the gate for inputs within cosine 0.999 of a key opened ordinary text: README, "The knowledge
study".)

    python results/gated-memory-probe-real/early_positions.py      # ~2 min here

The memory's input (block 15's FFN input, as the gated memory reads it) on 64 wiki-en blocks of 128
tokens, centred by the mean over every position; per position 0-7 and 32: each block's best centred
cosine to the same position of another block whose tokens there differ. Writes
``early_positions.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from palimpsest.data import load_tokenizer
from palimpsest.experiments.common import wiki_perplexity_set
from palimpsest.models import load_pretrained, resolve_pretrained

HERE = Path(__file__).parent


@torch.no_grad()
def main() -> None:
    model = load_pretrained("smollm2-135m").eval()
    tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
    blocks = wiki_perplexity_set(tokenizer, 128, 64)
    ids = torch.tensor(blocks["input_ids"])
    captured = {}
    layer = model.model.layers[len(model.model.layers) // 2].mlp
    hook = layer.register_forward_pre_hook(lambda _m, args: captured.__setitem__("x", args[0]))
    model(input_ids=ids)
    hook.remove()
    inputs = captured["x"].float()
    centred = inputs - inputs.reshape(-1, inputs.shape[-1]).mean(dim=0)
    directions = centred / centred.norm(dim=-1, keepdim=True)
    record = {}
    for position in (*range(8), 32):
        rows = directions[:, position]
        cosine = rows @ rows.T
        same = (ids[:, : position + 1].unsqueeze(1) == ids[:, : position + 1].unsqueeze(0)).all(dim=-1)
        cosine[same] = -1.0
        best = cosine.max(dim=1).values
        record[str(position)] = {
            "median": float(best.median()), "max": float(best.max()),
            "share_at_least_0.999": float((best >= 0.999).float().mean()),
            "share_at_least_0.95": float((best >= 0.95).float().mean()),
        }  # fmt: skip
    (HERE / "early_positions.json").write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
