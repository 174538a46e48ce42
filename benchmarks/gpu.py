"""One prepared GPU run: the CUDA tests, the memory on the card, SmolLM2-135M training with and without
a memory, and a 1,000-edit batch; one JSON and a short markdown table.

Sections (each timed; one that fails is recorded with its error and the run goes on):

* ``machine``: the card, the versions, and the measured memory bandwidth and bf16 matmul rate;
* ``tests``: ``tests/test_cuda.py`` and ``tests/test_gpu_kernels.py`` (every GPU path against its
  CPU reference), counted from pytest's JUnit report;
* ``memory``: ``benchmarks/memory_speed.py`` in bf16 at 262k, 1M and 16M slots — palimpsest with
  torch ops and with the Triton kernels (dense and sparse value updates), ``product-key-memory``
  0.3.0, a dense FFN of the same width and one of the memory's multiply-adds per token; step time,
  tokens/s, peak memory, value traffic as a share of the card's bandwidth;
* ``training``: palimpsest's Trainer on SmolLM2-135M (bf16 autocast) without a memory, with a
  262k-slot memory at mid-depth (torch ops) and with the Triton kernels: tokens/s and peak memory;
* ``editing``: MEMIT on SmolLM2-135M, 1,000 requests of ``results/many-edits-real/benchmark.jsonl``
  at once: the statistics (``C0``) and the edit, each timed.

SmolLM2-135M's weights (94 MB as the built-in package ships them) do not fit into what a GPU call
carries; where they are not installed the model is SmolLM2-135M's own config with random weights
(``benchmarks/gpu_prepare.sh`` brings its config and tokenizer): the same shapes and so the same
cost per step, which is what these sections time. The JSON says which was used.

``--device cpu`` is the dry run: the same sections and the same JSON shape at sizes a laptop
finishes in minutes (no Triton arms, fp32).

usage: benchmarks/gpu.sh [--device cuda|cpu] [--out DIR] [--sections machine,tests,...]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("machine", "tests", "memory", "training", "editing")
#: Every file a run writes into --out: a folder holding anything else is not this script's to write in.
OUTPUTS = frozenset({"gpu.json", "gpu.md", "cuda-tests.xml", "memory-speed.json"})
#: Where benchmarks/gpu_prepare.sh puts SmolLM2-135M's config and tokenizer (no weights).
PREPARED_MODEL = ROOT / ".gpu" / "smollm2-135m"


@dataclass(frozen=True)
class Plan:
    """The sizes one run measures at."""

    dtype: str
    memory_slots: str
    memory_arms: str
    memory_steps: int
    train_block: int
    train_batch: int
    train_steps: int
    train_warmup: int
    edits: int
    statistics_tokens: int
    target_steps: int | None  # None: the editor's default


PLANS = {
    "cuda": Plan(
        dtype="bfloat16",
        memory_slots="262k,1M,16M",
        memory_arms="dense-ffn,dense-ffn-equal-flops,palimpsest,palimpsest-triton,palimpsest-sparse,"
        "palimpsest-sparse-triton,pkm-package",
        memory_steps=8,
        train_block=512,
        train_batch=16,
        train_steps=30,
        train_warmup=5,
        edits=1000,
        statistics_tokens=100_000,
        target_steps=None,
    ),
    "cpu": Plan(
        dtype="float32",
        memory_slots="16k",
        memory_arms="dense-ffn,dense-ffn-equal-flops,palimpsest,palimpsest-sparse,pkm-package",
        memory_steps=2,
        train_block=64,
        train_batch=2,
        train_steps=4,
        train_warmup=1,
        edits=8,
        statistics_tokens=2_000,
        target_steps=2,
    ),
}


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None


def machine(device: str, plan: Plan, out: Path) -> dict:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from memory_speed import machine_rates

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("transformers", "triton", "peft", "accelerate", "datasets"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    card = None
    if device == "cuda":
        properties = torch.cuda.get_device_properties(0)
        card = {
            "name": properties.name,
            "memory_gib": properties.total_memory / 2**30,
            "multiprocessors": properties.multi_processor_count,
            "capability": f"{properties.major}.{properties.minor}",
        }
    rates = machine_rates(device, getattr(torch, plan.dtype))
    return {
        "device": device,
        "card": card,
        "versions": versions,
        "rates": rates,
        "cpu_threads": os.cpu_count(),
    }


def tests(device: str, plan: Plan, out: Path) -> dict:
    report = out / "cuda-tests.xml"
    command = [
        sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", "-n", "0",
        "tests/test_cuda.py", "tests/test_gpu_kernels.py", f"--junitxml={report}", "-rs",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, skipped = [], set()
    if report.exists():
        for suite in ElementTree.parse(report).getroot().iter("testsuite"):
            for key in counts:
                counts[key] += int(suite.get(key, 0))
            for case in suite.iter("testcase"):
                name = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
                for problem in (*case.findall("failure"), *case.findall("error")):
                    failed.append({"test": name, "message": (problem.get("message") or "")[:300]})
                for skip in case.findall("skipped"):
                    skipped.add(skip.get("message") or "")
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {
        **counts,
        "failed": failed,
        "skip_reasons": sorted(skipped),
        "exit_code": done.returncode,
        "output_tail": done.stdout[-2000:] + done.stderr[-1000:],
    }


def memory(device: str, plan: Plan, out: Path) -> dict:
    report = out / "memory-speed.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "memory_speed.py"), "--device", device,
        "--dtype", plan.dtype, "--slots", plan.memory_slots, "--arms", plan.memory_arms,
        "--steps", str(plan.memory_steps), "--json", str(report),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode or not report.exists():
        raise RuntimeError(f"memory_speed.py failed ({done.returncode}): {done.stderr[-1500:]}")
    document = json.loads(report.read_text(encoding="utf-8"))
    document["failed_arms"] = [line for line in done.stderr.splitlines() if ": failed" in line]
    return document


def smollm2(device: str, dtype: torch.dtype | None = None):
    """SmolLM2-135M and its tokenizer: the built-in weights where installed, else its config with random
    weights (see the module doc); and which of the two it is."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        from palimpsest.data import load_tokenizer
        from palimpsest.models import load_pretrained, resolve_pretrained

        tokenizer = load_tokenizer(resolve_pretrained("smollm2-135m"))
        model = load_pretrained("smollm2-135m")
        weights = "pretrained"
    except Exception as error:  # the model package is not installed here
        if not PREPARED_MODEL.is_dir():
            raise RuntimeError(
                f"SmolLM2-135M is neither installed ({error}) nor prepared (run benchmarks/gpu_prepare.sh)"
            ) from None
        tokenizer = AutoTokenizer.from_pretrained(PREPARED_MODEL)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(PREPARED_MODEL))
        weights = "random (SmolLM2-135M's config)"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)
    return model, tokenizer, weights


def training(device: str, plan: Plan, out: Path) -> dict:
    from transformers import TrainerCallback

    from palimpsest.data import encode_blocks, load_corpus
    from palimpsest.memory import PKMConfig
    from palimpsest.memory.extension import MemoryExtension
    from palimpsest.training import TrainingConfig, train

    class StepClock(TrainerCallback):
        """Started once the warm-up steps are done, stopped at the last step (synchronised)."""

        def __init__(self) -> None:
            self.started = self.stopped = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in (plan.train_warmup, state.max_steps):
                synchronize(device)
                now = time.perf_counter()
                if state.global_step == plan.train_warmup:
                    self.started = now
                else:
                    self.stopped = now

    arms = {"no memory": None, "memory (torch ops)": "torch"}
    if device == "cuda":
        arms["memory (Triton kernels)"] = "triton"
    rows = []
    weights = None
    for arm, kernels in arms.items():
        model, tokenizer, weights = smollm2(device)
        extensions = []
        if kernels is not None:
            extension = MemoryExtension(PKMConfig(layers=[0.5], zero_values=True, gpu_kernels=kernels))
            model = extension.prepare_model(model)
            extensions.append(extension)
        corpus = load_corpus("wiki-en", max_documents=2000)
        needed = plan.train_steps * plan.train_batch
        blocks = encode_blocks(corpus, tokenizer, plan.train_block)
        blocks = blocks.select(range(min(needed, len(blocks))))
        config = TrainingConfig(
            steps=plan.train_steps, batch_size=plan.train_batch, save_every=None, eval_every=None,
            log_every=plan.train_steps, learning_rate=3e-4,
        )  # fmt: skip
        clock = StepClock()
        reset_peak(device)
        with tempfile.TemporaryDirectory() as scratch:
            train(
                model, tokenizer, blocks, config, scratch, objective="clm", callbacks=[clock],
                extensions=extensions, resume=False, training_arguments={"bf16": device == "cuda"},
            )  # fmt: skip
        seconds = clock.stopped - clock.started
        tokens = (plan.train_steps - plan.train_warmup) * plan.train_batch * plan.train_block
        rows.append(
            {
                "arm": arm,
                "tokens_per_s": tokens / seconds,
                "step_ms": 1000 * seconds / (plan.train_steps - plan.train_warmup),
                "peak_mib": peak_mib(device),
                "parameters": sum(p.numel() for p in model.parameters()),
            }
        )
        del model
    base = rows[0]["tokens_per_s"]
    for row in rows:
        row["vs_no_memory"] = row["tokens_per_s"] / base
    return {
        "weights": weights,
        "block": plan.train_block,
        "batch": plan.train_batch,
        "timed_steps": plan.train_steps - plan.train_warmup,
        "precision": "bf16 autocast" if device == "cuda" else "fp32",
        "rows": rows,
    }


def editing(device: str, plan: Plan, out: Path) -> dict:
    from palimpsest.editing.benchmark import read_benchmark
    from palimpsest.editing.memit import BatchEditConfig, BatchEditor

    cases = read_benchmark(ROOT / "results" / "many-edits-real" / "benchmark.jsonl")
    requests = [case.request for case in cases[: plan.edits]]
    model, tokenizer, weights = smollm2(device)
    settings = {"method": "memit", "statistics_tokens": plan.statistics_tokens}
    if plan.target_steps is not None:
        settings["target_steps"] = plan.target_steps
    kept = os.environ.get("PALIMPSEST_MODEL_CACHE")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["PALIMPSEST_MODEL_CACHE"] = cache  # a cold statistics cache
        editor = BatchEditor(model, tokenizer, config=BatchEditConfig(**settings))
        reset_peak(device)
        synchronize(device)
        started = time.perf_counter()
        editor._statistics()
        synchronize(device)
        statistics_s = time.perf_counter() - started
        started = time.perf_counter()
        editor.apply(requests, measure=False)
        synchronize(device)
        edit_s = time.perf_counter() - started
    if kept is None:
        os.environ.pop("PALIMPSEST_MODEL_CACHE", None)
    else:
        os.environ["PALIMPSEST_MODEL_CACHE"] = kept
    return {
        "weights": weights,
        "method": "memit",
        "edits": len(requests),
        "statistics_tokens": plan.statistics_tokens,
        "statistics_s": statistics_s,
        "edit_s": edit_s,
        "edits_per_s": len(requests) / edit_s,
        "peak_mib": peak_mib(device),
    }


def markdown(document: dict) -> str:
    """The short table of the run (the JSON holds everything)."""
    lines = [f"# GPU run ({document['device']}, {document['plan']['dtype']})", ""]
    machine_section = document["sections"].get("machine", {})
    card = (machine_section.get("result") or {}).get("card")
    rates = (machine_section.get("result") or {}).get("rates")
    if card:
        lines.append(f"Card: {card['name']} ({card['memory_gib']:.0f} GiB).")
    if rates:
        lines.append(
            f"Measured: {rates['bandwidth_bytes_per_s'] / 1e9:,.0f} GB/s memory bandwidth, "
            f"{rates['matmul_flops_per_s'] / 1e12:,.1f} TFLOP/s matmul."
        )
    for name, section in document["sections"].items():
        if section.get("error"):
            lines += ["", f"**{name}: failed** — `{section['error'].splitlines()[-1]}`"]
    result = document["sections"].get("tests", {}).get("result")
    if result:
        lines += [
            "",
            f"Tests: {result['passed']} passed, {result['failures'] + result['errors']} failed, "
            f"{result['skipped']} skipped.",
        ]
        lines += [f"- failed: `{f['test']}`: {f['message']}" for f in result["failed"]]
    result = document["sections"].get("memory", {}).get("result")
    if result:
        lines += ["", "| slots | arm | step ms | tokens/s | peak MiB | vs pkg | x eq-FLOP FFN | bandwidth |"]
        lines.append("|---|---|---|---|---|---|---|---|")
        for row in result["rows"]:
            cells = [
                row["slots"],
                row["arm"],
                f"{row['train_step_ms']:.2f}",
                f"{row['train_tokens_per_s']:,.0f}",
            ]
            cells.append(f"{row['peak_mib']:,.0f}")
            for key, spec in (
                ("speedup_vs_pkm_package", ".2f"),
                ("x_dense_ffn_equal_flops", ".2f"),
                ("bandwidth_share", ".0%"),
            ):
                cells.append("–" if row.get(key) is None else format(row[key], spec))
            lines.append("| " + " | ".join(cells) + " |")
    result = document["sections"].get("training", {}).get("result")
    if result:
        lines += [
            "",
            f"Training SmolLM2-135M ({result['weights']}, {result['precision']}, "
            f"{result['batch']} x {result['block']} tokens):",
            "",
            "| arm | tokens/s | step ms | peak MiB | vs no memory |",
            "|---|---|---|---|---|",
        ]
        for row in result["rows"]:
            peak = "–" if row["peak_mib"] is None else f"{row['peak_mib']:,.0f}"
            lines.append(
                f"| {row['arm']} | {row['tokens_per_s']:,.0f} | {row['step_ms']:.1f} | {peak} | "
                f"{row['vs_no_memory']:.2f} |"
            )
    result = document["sections"].get("editing", {}).get("result")
    if result:
        lines += [
            "",
            f"Editing ({result['weights']}): MEMIT, {result['edits']:,} requests at once: statistics over "
            f"{result['statistics_tokens']:,} tokens {result['statistics_s']:.1f} s, the edit "
            f"{result['edit_s']:.1f} s ({result['edits_per_s']:.1f} edits/s).",
        ]
    seconds = sum(section.get("seconds", 0) for section in document["sections"].values())
    lines += ["", f"Whole run: {seconds:.0f} s."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--out", default="gpu-run")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"of {', '.join(SECTIONS)}")
    args = parser.parse_args()
    wanted = args.sections.split(",")
    unknown = [name for name in wanted if name not in SECTIONS]
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)} (of {', '.join(SECTIONS)})")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: this machine has no CUDA device (--device cpu is the dry run)")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"--out {out}: a file is there, not a folder")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS) if out.is_dir() else []
    if foreign:
        parser.error(
            f"--out {out}: holds files this run did not write ({', '.join(foreign[:3])}); name a new folder"
        )
    out.mkdir(parents=True, exist_ok=True)
    plan = PLANS[args.device]
    document = {"benchmark": "gpu", "device": args.device, "plan": asdict(plan), "sections": {}}
    runners = {"machine": machine, "tests": tests, "memory": memory, "training": training, "editing": editing}
    for name in wanted:
        started = time.perf_counter()
        entry: dict = {}
        try:
            entry["result"] = runners[name](args.device, plan, out)
        except Exception:  # recorded, and the run goes on to the next section
            entry["error"] = traceback.format_exc(limit=4)
        entry["seconds"] = time.perf_counter() - started
        document["sections"][name] = entry
        state = "failed" if "error" in entry else "done"
        print(f"{name}: {state} in {entry['seconds']:.0f} s", file=sys.stderr, flush=True)
        (out / "gpu.json").write_text(json.dumps(document, indent=2), encoding="utf-8")  # each section kept
    (out / "gpu.md").write_text(markdown(document), encoding="utf-8")
    print(markdown(document))
    tested = document["sections"].get("tests", {}).get("result") or {}
    if tested.get("failures") or tested.get("errors"):
        print(f"tests: {tested['failures'] + tested['errors']} failed (see gpu.json)", file=sys.stderr)
    if any("error" in entry for entry in document["sections"].values()) or tested.get("exit_code"):
        sys.exit(1)


if __name__ == "__main__":
    main()
