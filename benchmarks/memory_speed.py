"""Speed and memory of the product-key memory layer, side by side with the alternatives and the floor.

One run, the same settings for every arm (d=256, 4 heads, k=32, half-keys of 128, batch
16 x 128 tokens, LayerNorm queries, MSE loss to a fixed target, fused AdamW as the
Trainer uses, values in their own group at lr 1e-3 without decay):

* ``dense-ffn``: a dense FFN of the same width (256 -> 1024 -> 256, GELU);
* ``dense-ffn-equal-flops``: a dense FFN whose hidden width makes its multiply-adds per token the
  memory's of that size (query, every half-key's score, the k values per head);
* ``palimpsest``: :class:`ProductKeyMemory`, dense value gradients;
* ``palimpsest-sparse``: the same layer with ``sparse_updates=True`` and :class:`LazyAdamW`
  (only the value rows read are updated);
* ``palimpsest-triton``, ``palimpsest-sparse-triton``: the same two with the Triton kernels of
  :mod:`palimpsest.gpu_kernels` (value read, its backward, the lazy row update; GPU only);
* ``pkm-package``: lucidrains' ``product-key-memory`` (``bench`` extra) with LayerNorm
  queries (its BatchNorm option normalises over the wrong axis in 0.3.0);
* ``pkm-package-adam``: the same package with plain ``torch.optim.Adam``, as its README
  trains it (context for figures measured that way).

at 262k and 1M slots by default (n_keys 512, 1024; 16k, 65k and 16M on request). On a CPU each
arm runs in its own process, so its peak memory is its own (``ru_maxrss`` above the process's size
before the arm was built); on a GPU they run in one process (no start-up per arm), each with
CUDA's peak allocation counted from its own start.

**The floor.** A first process measures this machine's memory bandwidth (a large in-place
update: bytes read + written per second) and matmul rate (the key-scoring shape). The floor
of a memory step is then the bytes it must touch over the bandwidth plus the FLOPs it must
do over the matmul rate:

* bytes: every slot read is one value row read in the forward pass and one again for the
  gradient of its weight; every distinct row read gets its gradient written once and an
  AdamW update (value, gradient, two moments read; value, two moments written) — 8 row
  accesses; the dense path's floor puts the whole table through the gradient and optimizer;
* FLOPs: the query projection (forward and backward), scoring every half-key (forward; only
  the k best scores per half get a gradient, so that backward is k / n_keys of it), and the
  weighted sum of the values (forward and backward).

Each arm is reported as a ratio to the floor of its size (from the share of rows the
palimpsest layer reads there; the package reads as many). The FFN's floor is its FLOPs.

usage: python benchmarks/memory_speed.py [--slots 262k,1M] [--arms ...] [--steps 8]
       [--device cpu|cuda] [--dtype float32|bfloat16] [--json out.json]
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
SIZES = {"16k": 128, "65k": 256, "262k": 512, "1M": 1024, "16M": 4096}
DEFAULT_SIZES = "262k,1M"
ARMS = (
    "dense-ffn", "dense-ffn-equal-flops", "palimpsest", "palimpsest-sparse", "palimpsest-triton",
    "palimpsest-sparse-triton", "pkm-package", "pkm-package-adam",
)  # fmt: skip
DEFAULT_ARMS = "dense-ffn,palimpsest,palimpsest-sparse,pkm-package"
TOKENS = BATCH * SEQ


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_seconds(run, device: str, repeats: int = 5) -> float:
    run()
    synchronize(device)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - started)
    return min(times)


def machine_rates(device: str, dtype: torch.dtype) -> dict:
    """Memory bandwidth (bytes/s of an in-place update of 512 MiB: read + write) and matmul rate
    in ``dtype`` (FLOP/s of one head's key scores at 1M slots), best of five."""
    table = torch.randn(128 * 2**20, device=device)
    seconds = best_seconds(lambda: table.mul_(1.0), device)
    bandwidth = 2 * table.numel() * table.element_size() / seconds
    queries = torch.randn(TOKENS, K_DIM // 2, device=device, dtype=dtype)
    keys = torch.randn(K_DIM // 2, 1024, device=device, dtype=dtype)
    seconds = best_seconds(lambda: queries @ keys, device, repeats=20)
    return {"bandwidth_bytes_per_s": bandwidth, "matmul_flops_per_s": 2 * queries.numel() * 1024 / seconds}


def floor_seconds(
    n_keys: int, rows_read_share: float, rates: dict, element: int, *, dense_table: bool = False
) -> dict:
    """The least a memory training step must take here (see the module doc); ``element`` bytes."""
    slots, reads = n_keys**2, TOKENS * HEADS * K
    row = DIM * element
    rows_updated = slots if dense_table else rows_read_share * slots
    moved = 2 * reads * row + 8 * rows_updated * row
    half = K_DIM // 2
    flops = (
        3 * 2 * TOKENS * DIM * HEADS * K_DIM  # query projection, forward + backward
        + 2 * TOKENS * HEADS * 2 * half * n_keys  # every half-key scored
        + 2 * 2 * TOKENS * HEADS * 2 * half * K  # backward of the k best scores per half
        + 3 * 2 * reads * DIM  # weighted sum of the values, forward + backward
    )
    memory_s, compute_s = moved / rates["bandwidth_bytes_per_s"], flops / rates["matmul_flops_per_s"]
    return {"floor_ms": 1000 * (memory_s + compute_s), "bytes": moved, "flops": flops}


def ffn_floor_seconds(rates: dict, width: int = 4 * DIM) -> dict:
    flops = 3 * 2 * TOKENS * 2 * DIM * width
    return {"floor_ms": 1000 * flops / rates["matmul_flops_per_s"], "bytes": 0, "flops": flops}


def equal_flops_width(n_keys: int) -> int:
    """The hidden width of a dense FFN (two projections) with the memory's multiply-adds per token."""
    from palimpsest.memory import ProductKeyMemory

    memory = ProductKeyMemory(DIM, n_keys=2, heads=HEADS, k=2, k_dim=K_DIM)  # the count only
    memory.n_keys, memory.k = n_keys, K
    return max(1, round(memory.multiply_adds_per_token() / (2 * DIM)))


def build(arm: str, n_keys: int, device: str, dtype: torch.dtype) -> tuple[nn.Module, torch.optim.Optimizer]:
    from palimpsest.memory import ProductKeyMemory
    from palimpsest.optim import LazyAdamW

    torch.manual_seed(0)
    if arm.startswith("dense-ffn"):
        width = equal_flops_width(n_keys) if arm == "dense-ffn-equal-flops" else 4 * DIM
        module = nn.Sequential(nn.Linear(DIM, width), nn.GELU(), nn.Linear(width, DIM)).to(device, dtype)
        return module, torch.optim.AdamW(module.parameters(), lr=1e-3, fused=True)
    kernels = "triton" if arm.endswith("-triton") else "torch"
    if arm.startswith("palimpsest"):
        module = ProductKeyMemory(
            DIM, n_keys=n_keys, heads=HEADS, k=K, k_dim=K_DIM, sparse_updates="sparse" in arm,
            gpu_kernels=kernels,
        )  # fmt: skip
    else:
        from product_key_memory import PKM

        module = PKM(DIM, heads=HEADS, num_keys=n_keys, topk=K, dim_head=K_DIM // 2, use_layernorm=True)
    module = module.to(device, dtype)
    values = [module.values.weight]
    rest = [p for p in module.parameters() if all(p is not v for v in values)]
    groups = [{"params": rest}, {"params": values, "lr": 1e-3, "weight_decay": 0.0}]
    if arm == "pkm-package-adam":
        return module, torch.optim.Adam(groups, lr=1e-3)
    return module, LazyAdamW(groups, lr=1e-3, fused=True, gpu_kernels=kernels)


def naive_difference(memory: nn.Module, hidden: torch.Tensor, tokens: int = 64) -> float:
    """Largest |layer - naive reference| over the first ``tokens`` positions."""
    with torch.no_grad():
        flat = hidden.reshape(-1, DIM)[:tokens].float()
        memory = memory.float()
        output = memory(flat.unsqueeze(0)).squeeze(0)
        queries = memory.query_norm(memory.query(flat)).view(tokens, HEADS, 2, K_DIM // 2)
        first = torch.einsum("thd,hnd->thn", queries[:, :, 0], memory.keys[:, 0])
        second = torch.einsum("thd,hnd->thn", queries[:, :, 1], memory.keys[:, 1])
        every = (first.unsqueeze(-1) + second.unsqueeze(-2)).flatten(-2)  # all n_keys**2 slots
        scores, slots = every.topk(K, dim=-1)
        weights = torch.softmax(scores, dim=-1)
        reference = (weights.unsqueeze(-1) * memory.values.weight[slots]).sum(dim=(1, 2))
        return float((output - reference).abs().max())


def peak_mib(device: str, baseline: int) -> float:
    if device.startswith("cuda"):
        return (torch.cuda.max_memory_allocated() - baseline) / 2**20
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024


def memory_baseline(device: str) -> int:
    """Where an arm's peak memory is counted from: CUDA's allocation (its peak reset) or the process's."""
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(arm: str, size: str, steps: int, device: str, dtype: torch.dtype) -> dict:
    if arm.endswith("-triton") and not device.startswith("cuda"):
        raise ValueError(f"{arm}: the Triton kernels run on a CUDA device")
    baseline = memory_baseline(device)
    module, optimizer = build(arm, SIZES[size], device, dtype)
    hidden = torch.randn(BATCH, SEQ, DIM, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    target = torch.randn(BATCH, SEQ, DIM, generator=torch.Generator().manual_seed(2)).to(device, dtype)
    result: dict = {"arm": arm, "slots": size}
    if arm.startswith("palimpsest"):
        module.record_selection = True
    times = []
    for step in range(steps + 2):
        synchronize(device)
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = (module(hidden) - target).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        synchronize(device)
        if step >= 2:  # two warm-up steps
            times.append(time.perf_counter() - started)
    if arm.startswith("palimpsest"):
        rows = module.last_selection.indices.unique().numel()
        result["value_rows_read"] = rows / module.size
        module.record_selection = False
    module.eval()
    with torch.no_grad():
        inference = best_seconds(lambda: module(hidden), device, repeats=7)
    step_seconds = statistics.median(times)
    result.update(
        {
            "train_step_ms": 1000 * step_seconds,
            "train_tokens_per_s": TOKENS / step_seconds,
            "inference_ms": 1000 * inference,
            "inference_tokens_per_s": TOKENS / inference,
            "peak_mib": peak_mib(device, baseline),
            "parameters": sum(p.numel() for p in module.parameters()),
        }
    )
    if arm.startswith("palimpsest"):
        # the naive reference scores every slot: (tokens, heads, slots) floats, so few tokens at 16M
        result["max_abs_diff_vs_naive"] = naive_difference(
            module, hidden, tokens=64 if SIZES[size] <= 1024 else 8
        )
    if arm == "dense-ffn-equal-flops":
        result["ffn_width"] = equal_flops_width(SIZES[size])
    return result


def run_worker(arguments: list[str]) -> dict | None:
    """One arm in a process of its own (on a GPU: in this one, see the module doc)."""

    def option(name: str, default: str) -> str:
        return arguments[arguments.index(name) + 1] if name in arguments else default

    device = option("--device", "cpu")
    if device.startswith("cuda"):
        dtype = getattr(torch, option("--dtype", "float32"))
        try:
            if arguments[0] == "--rates":
                return machine_rates(device, dtype)
            arm, size = arguments[1], arguments[2]
            return worker(arm, size, int(option("--steps", "8")), device, dtype)
        except Exception as error:  # an arm that fails (out of memory, a kernel) is reported, not fatal
            print(f"{' '.join(arguments)}: failed: {error}", file=sys.stderr)
            return None
        finally:
            torch.cuda.empty_cache()
    done = subprocess.run([sys.executable, __file__, *arguments], capture_output=True, text=True, check=False)
    if done.returncode:
        print(f"{' '.join(arguments)}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(rows: list[dict], rates: dict, dtype: torch.dtype) -> None:
    """Add to each row its floor, its ratios to the floor, the FFNs and the package, and (memory arms)
    the value traffic its step moved per second, as a share of the card's or machine's bandwidth."""
    by_key = {(r["slots"], r["arm"]): r for r in rows}
    element = torch.empty((), dtype=dtype).element_size()
    for row in rows:
        size = row["slots"]
        dense = by_key.get((size, "dense-ffn"))
        equal = by_key.get((size, "dense-ffn-equal-flops"))
        package = by_key.get((size, "pkm-package"))
        readers = [by_key.get((size, arm)) for arm in ARMS if arm.startswith("palimpsest")]
        reader = next((r for r in readers if r is not None), None)
        if row["arm"] == "dense-ffn":
            row["floor"] = ffn_floor_seconds(rates)
        elif row["arm"] == "dense-ffn-equal-flops":
            row["floor"] = ffn_floor_seconds(rates, row["ffn_width"])
        elif reader is not None:
            share = reader["value_rows_read"]
            row["floor"] = floor_seconds(SIZES[size], share, rates, element)
            row["dense_table_floor"] = floor_seconds(SIZES[size], share, rates, element, dense_table=True)
            # the bytes this arm's path must move: the rows read (sparse) or the whole table (dense)
            moved = row["floor" if "sparse" in row["arm"] else "dense_table_floor"]["bytes"]
            row["value_traffic_bytes_per_s"] = moved / (row["train_step_ms"] / 1000)
            row["bandwidth_share"] = row["value_traffic_bytes_per_s"] / rates["bandwidth_bytes_per_s"]
        row["x_floor"] = row["train_step_ms"] / row["floor"]["floor_ms"] if "floor" in row else None
        row["x_dense_ffn"] = row["train_step_ms"] / dense["train_step_ms"] if dense else None
        row["x_dense_ffn_equal_flops"] = row["train_step_ms"] / equal["train_step_ms"] if equal else None
        row["speedup_vs_pkm_package"] = package["train_step_ms"] / row["train_step_ms"] if package else None
        row["inference_vs_pkm_package"] = (
            row["inference_tokens_per_s"] / package["inference_tokens_per_s"] if package else None
        )


def number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[dict]) -> None:
    print(
        f"{'slots':>5} {'arm':>24} {'step ms':>8} {'floor ms':>8} {'x floor':>7} {'x FFN':>6} {'x eqFFN':>7} "
        f"{'vs pkg':>6} {'infer tok/s':>11} {'infer vs pkg':>12} {'peak MiB':>8} {'rows read':>9} "
        f"{'BW share':>8} {'|diff| naive':>12}"
    )
    for r in rows:
        floor = r.get("floor", {}).get("floor_ms")
        diff = r.get("max_abs_diff_vs_naive")
        print(
            f"{r['slots']:>5} {r['arm']:>24} {r['train_step_ms']:8.1f} {number(floor, '8.1f'):>8} "
            f"{number(r['x_floor'], '7.2f'):>7} {number(r['x_dense_ffn'], '6.2f'):>6} "
            f"{number(r['x_dense_ffn_equal_flops'], '7.2f'):>7} "
            f"{number(r['speedup_vs_pkm_package'], '6.2f'):>6} {r['inference_tokens_per_s']:11,.0f} "
            f"{number(r['inference_vs_pkm_package'], '12.2f'):>12} {r['peak_mib']:8.0f} "
            f"{number(r.get('value_rows_read'), '9.2f'):>9} {number(r.get('bandwidth_share'), '8.2f'):>8} "
            f"{number(diff, '12.1e'):>12}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slots", default=DEFAULT_SIZES, help=f"of {', '.join(SIZES)}")
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"of {', '.join(ARMS)}")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--json")
    parser.add_argument("--worker", nargs=2, metavar=("ARM", "SLOTS"), help=argparse.SUPPRESS)
    parser.add_argument("--rates", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    unknown = [s for s in args.slots.split(",") if s not in SIZES] + [
        a for a in args.arms.split(",") if a not in ARMS
    ]
    if unknown:
        known = f"slots: {', '.join(SIZES)}; arms: {', '.join(ARMS)}"
        parser.error(f"unknown slots or arms: {', '.join(unknown)} ({known})")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: this machine has no CUDA device")
    dtype = getattr(torch, args.dtype)
    if args.rates:
        print(json.dumps(machine_rates(args.device, dtype)))
        return
    if args.worker:
        print(json.dumps(worker(args.worker[0], args.worker[1], args.steps, args.device, dtype)))
        return
    common = ["--steps", str(args.steps), "--device", args.device, "--dtype", args.dtype]
    rates = run_worker(["--rates", *common])
    if rates is None:
        sys.exit(1)
    print(
        f"this machine: {rates['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s memory bandwidth, "
        f"{rates['matmul_flops_per_s'] / 1e9:.0f} GFLOP/s matmul in {args.dtype} ({args.device}, "
        f"{torch.get_num_threads()} threads)",
        file=sys.stderr,
    )
    rows = []
    for size in args.slots.split(","):
        for arm in args.arms.split(","):
            row = run_worker(["--worker", arm, size, *common])
            if row is not None:
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    summarise(rows, rates, dtype)
    print_table(rows)
    from palimpsest.kernels import cpu_kernels
    from palimpsest.memory.layer import AUTO_SPARSE_SHARE, auto_prefers_sparse, expected_share_read

    compiled = args.device == "cpu" and dtype == torch.float32 and cpu_kernels() is not None
    rule = "always, with the compiled loops" if compiled else f"sparse below {AUTO_SPARSE_SHARE:.0%}"
    auto = {}
    for size in dict.fromkeys(r["slots"] for r in rows):
        share = expected_share_read(TOKENS * HEADS * K, SIZES[size] ** 2)
        auto[size] = (
            "sparse" if auto_prefers_sparse(TOKENS * HEADS * K, SIZES[size] ** 2, compiled) else "dense"
        )
        print(
            f"{size}: a batch reads ~{share:.0%} of the rows; sparse_updates='auto' (palimpsest's trainer) "
            f"takes the {auto[size]} path ({rule})"
        )
    document = {
        "benchmark": "memory_speed",
        "auto_path": auto,
        "settings": {"dim": DIM, "heads": HEADS, "k": K, "k_dim": K_DIM, "batch": BATCH, "seq": SEQ},
        "device": args.device,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine_rates": rates,
        "rows": rows,
    }
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)


if __name__ == "__main__":
    main()
