"""Speed and memory of the product-key memory layer, side by side with the alternatives.

One run, the same settings for every arm (d=256, 4 heads, k=32, half-keys of 128, batch
16 x 128 tokens, LayerNorm queries, MSE loss to a fixed target, fused AdamW as the
Trainer uses, values in their own group at lr 1e-3 without decay):

* ``dense-ffn``: a dense FFN of the same width (256 -> 1024 -> 256, GELU);
* ``palimpsest``: :class:`ProductKeyMemory`, dense value gradients;
* ``palimpsest-sparse``: the same layer with ``sparse_updates=True`` and :class:`LazyAdamW`
  (only the value rows read are updated);
* ``pkm-package``: lucidrains' ``product-key-memory`` (``bench`` extra) with LayerNorm
  queries (its BatchNorm option normalises over the wrong axis in 0.3.0);
* ``pkm-package-adam``: the same package with plain ``torch.optim.Adam``, as its README
  trains it (context for figures measured that way).

at 16k, 65k and 262k slots (n_keys 128, 256, 512). Each arm runs in its own process, so
its peak resident memory (``ru_maxrss`` above the process's size before the arm was built)
is its own. Reported per arm: training step (forward + backward + optimizer step) in ms,
training and inference tokens/s, peak memory, share of value rows read per step, and for
the palimpsest layer the largest difference from a naive reference (every one of the
n_keys**2 keys scored, top-k, softmax, weighted sum). Ratios are to the dense FFN and to
``pkm-package`` of the same size.

usage: python benchmarks/memory_speed.py [--slots 16k,65k,262k] [--steps 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

DIM, HEADS, K, K_DIM, BATCH, SEQ = 256, 4, 32, 256, 16, 128
SIZES = {"16k": 128, "65k": 256, "262k": 512}
ARMS = ("dense-ffn", "palimpsest", "palimpsest-sparse", "pkm-package", "pkm-package-adam")


def build(arm: str, n_keys: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    from palimpsest.memory import ProductKeyMemory
    from palimpsest.optim import LazyAdamW

    torch.manual_seed(0)
    if arm == "dense-ffn":
        module = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))
        return module, torch.optim.AdamW(module.parameters(), lr=1e-3, fused=True)
    if arm.startswith("palimpsest"):
        module = ProductKeyMemory(
            DIM, n_keys=n_keys, heads=HEADS, k=K, k_dim=K_DIM, sparse_updates=arm == "palimpsest-sparse"
        )
        values = [module.values.weight]
    else:
        from product_key_memory import PKM

        module = PKM(DIM, heads=HEADS, num_keys=n_keys, topk=K, dim_head=K_DIM // 2, use_layernorm=True)
        values = [module.values.weight]
    rest = [p for p in module.parameters() if all(p is not v for v in values)]
    groups = [{"params": rest}, {"params": values, "lr": 1e-3, "weight_decay": 0.0}]
    if arm == "pkm-package-adam":
        return module, torch.optim.Adam(groups, lr=1e-3)
    return module, LazyAdamW(groups, lr=1e-3, fused=True)


def naive_difference(memory: nn.Module, hidden: torch.Tensor, tokens: int = 64) -> float:
    """Largest |layer - naive reference| over the first ``tokens`` positions."""
    with torch.no_grad():
        flat = hidden.reshape(-1, DIM)[:tokens]
        output = memory(flat.unsqueeze(0)).squeeze(0)
        queries = memory.query_norm(memory.query(flat)).view(tokens, HEADS, 2, K_DIM // 2)
        first = torch.einsum("thd,hnd->thn", queries[:, :, 0], memory.keys[:, 0])
        second = torch.einsum("thd,hnd->thn", queries[:, :, 1], memory.keys[:, 1])
        every = (first.unsqueeze(-1) + second.unsqueeze(-2)).flatten(-2)  # all n_keys**2 slots
        scores, slots = every.topk(K, dim=-1)
        weights = torch.softmax(scores, dim=-1)
        reference = (weights.unsqueeze(-1) * memory.values.weight[slots]).sum(dim=(1, 2))
        return float((output - reference).abs().max())


def worker(arm: str, size: str, steps: int) -> dict:
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    module, optimizer = build(arm, SIZES[size])
    hidden = torch.randn(BATCH, SEQ, DIM, generator=torch.Generator().manual_seed(1))
    target = torch.randn(BATCH, SEQ, DIM, generator=torch.Generator().manual_seed(2))
    result: dict = {"arm": arm, "slots": size}
    if arm.startswith("palimpsest"):
        result["max_abs_diff_vs_naive"] = naive_difference(module, hidden)
        module.record_selection = True
    times = []
    for step in range(steps + 2):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = (module(hidden) - target).pow(2).mean()
        loss.backward()
        optimizer.step()
        if step >= 2:  # two warm-up steps
            times.append(time.perf_counter() - started)
    if arm.startswith("palimpsest"):
        rows = module.last_selection.indices.unique().numel()
        result["value_rows_read"] = rows / module.size
        module.record_selection = False
    module.eval()
    with torch.no_grad():
        module(hidden)
        passes = []
        for _ in range(7):
            started = time.perf_counter()
            module(hidden)
            passes.append(time.perf_counter() - started)
        inference = statistics.median(passes)
    step_seconds = statistics.median(times)
    result.update(
        {
            "train_step_ms": 1000 * step_seconds,
            "train_tokens_per_s": BATCH * SEQ / step_seconds,
            "inference_tokens_per_s": BATCH * SEQ / inference,
            "peak_mib": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024,
            "parameters": sum(p.numel() for p in module.parameters()),
        }
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", default=",".join(SIZES))
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--json")
    parser.add_argument("--worker", nargs=2, metavar=("ARM", "SLOTS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.steps)))
        return
    rows = []
    for size in args.slots.split(","):
        for arm in args.arms.split(","):
            command = [sys.executable, __file__, "--worker", arm, size, "--steps", str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                print(f"{arm} at {size}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    by_key = {(r["slots"], r["arm"]): r for r in rows}
    for row in rows:
        dense = by_key.get((row["slots"], "dense-ffn"))
        package = by_key.get((row["slots"], "pkm-package"))
        row["step_vs_dense_ffn"] = row["train_step_ms"] / dense["train_step_ms"] if dense else None
        row["speedup_vs_pkm_package"] = package["train_step_ms"] / row["train_step_ms"] if package else None
        row["inference_vs_pkm_package"] = (
            row["inference_tokens_per_s"] / package["inference_tokens_per_s"] if package else None
        )
    header = (
        f"{'slots':>5} {'arm':>18} {'step ms':>8} {'train tok/s':>11} {'infer tok/s':>11} {'peak MiB':>8} "
        f"{'x dense':>7} {'speedup vs pkg':>14} {'rows read':>9} {'|diff| naive':>12}"
    )
    print(header)
    for r in rows:
        diff = r.get("max_abs_diff_vs_naive")
        print(
            f"{r['slots']:>5} {r['arm']:>18} {r['train_step_ms']:8.1f} {r['train_tokens_per_s']:11,.0f} "
            f"{r['inference_tokens_per_s']:11,.0f} {r['peak_mib']:8.0f} {r['step_vs_dense_ffn'] or 0:7.2f} "
            f"{r['speedup_vs_pkm_package'] or 0:14.2f} {r.get('value_rows_read', float('nan')):9.2f} "
            f"{'' if diff is None else f'{diff:.1e}':>12}"
        )
    document = {
        "benchmark": "memory_speed",
        "settings": {"dim": DIM, "heads": HEADS, "k": K, "k_dim": K_DIM, "batch": BATCH, "seq": SEQ},
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)


if __name__ == "__main__":
    main()
