"""The prepared GPU run (benchmarks/gpu.sh): its dry run on the CPU writes every section in the shape the
GPU run writes, and bad arguments get one line and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _run(*arguments: str, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), *arguments],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_asking_for_the_card_where_there_is_none_is_one_line_and_exit_2(tmp_path):
    done = _run("--device", "cuda", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "gpu.json").exists()


def test_an_out_folder_holding_other_files_is_refused_and_left_alone(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    done = _run("--device", "cpu", "--sections", "machine", "--out", str(tmp_path))
    assert done.returncode == 2 and "notes.txt" in done.stderr.strip().splitlines()[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    done = _run("--device", "cpu", "--sections", "machine", "--out", str(tmp_path / "notes.txt"))
    assert done.returncode == 2 and "not a folder" in done.stderr.strip().splitlines()[-1]
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_unknown_section_is_refused(tmp_path):
    done = _run("--device", "cpu", "--sections", "machine,speed", "--out", str(tmp_path))
    assert done.returncode == 2
    assert "speed" in done.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_the_machine_section_measures_this_machine(tmp_path):
    done = _run("--device", "cpu", "--sections", "machine", "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    document = json.loads((tmp_path / "gpu.json").read_text())
    result = document["sections"]["machine"]["result"]
    assert result["device"] == "cpu" and result["card"] is None
    assert result["rates"]["bandwidth_bytes_per_s"] > 0 and result["rates"]["matmul_flops_per_s"] > 0
    assert result["versions"]["torch"] == torch.__version__
    assert (tmp_path / "gpu.md").read_text().startswith("# GPU run (cpu")


@pytest.mark.slow
def test_the_dry_run_writes_every_section_as_the_gpu_run_does(tmp_path):
    done = _run("--device", "cpu", "--out", str(tmp_path), timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    sections = json.loads((tmp_path / "gpu.json").read_text())["sections"]
    assert set(sections) == {"machine", "tests", "memory", "training", "editing"}
    assert not [name for name, entry in sections.items() if "error" in entry]
    tests = sections["tests"]["result"]
    assert tests["failures"] == tests["errors"] == 0 and tests["passed"] > 0
    assert tests["skip_reasons"]  # the CUDA tests, each with its reason
    rows = {row["arm"]: row for row in sections["memory"]["result"]["rows"]}
    assert {"dense-ffn-equal-flops", "palimpsest", "palimpsest-sparse", "pkm-package"} <= set(rows)
    assert rows["palimpsest"]["bandwidth_share"] > 0 and rows["palimpsest"]["speedup_vs_pkm_package"] > 0
    assert rows["palimpsest"]["max_abs_diff_vs_naive"] < 1e-4
    training = sections["training"]["result"]["rows"]
    assert [row["arm"] for row in training] == ["no memory", "memory (torch ops)"]
    assert all(row["tokens_per_s"] > 0 for row in training)
    editing = sections["editing"]["result"]
    assert editing["edits"] == 8 and editing["edit_s"] > 0 and editing["statistics_s"] > 0
