"""Compiled CPU loops for the product-key memory and its lazy optimizer (optional, built on first use).

Part of the spine, beside :mod:`palimpsest.optim`, whose lazy AdamW uses the row update below
and which no pillar may be below; the memory layer (:mod:`palimpsest.memory.layer`) uses the rest.

With torch ops, a CPU step of the memory spends most of its time on temporaries and on work the
selection makes unnecessary. Plain loops need neither:

* the selection (:func:`product_key_select`): per token and head, the k best of each half's
  scores (a threshold from group maxima, then a partial sort of the few values above it) and
  the k best of their sums by a heap over the two sorted lists — one pass instead of two
  top-k calls, a table of candidate pairs and a third top-k;
* its backward (:func:`key_score_backward`): only the k selected scores per head have a
  gradient, so the queries' gradient reads k keys per half and the keys' gradient is added to
  the selected rows (threads own ranges of rows: no atomics) — instead of a mostly-zero score
  gradient through two dense matmuls;
* the values' dense gradient, each thread owning a range of table rows; the sparse one by
  segments of the reads sorted by slot; the weights' gradient, a dot product per read;
* the lazy AdamW update of the rows read (:class:`palimpsest.optim.LazyAdamW`), one pass per row.

Reads of random rows from a table far larger than the caches fetch the row a few reads ahead.
What they save is measured by ``benchmarks/memory_speed.py`` (README, "Benchmarks").

They are compiled with torch's C++ extension loader the first time a CPU fp32 memory runs (a
C++ compiler and ninja are needed; ~30 s, then cached per CPU model and source, since the
build targets this CPU). Where that is not possible the layer keeps its torch-op path, which
computes the same results (tested against each other).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import platform
from pathlib import Path
from types import ModuleType

logger = logging.getLogger(__name__)

#: The C++ of the loops, beside this module (package data).
_SOURCE = (Path(__file__).parent / "kernels.cpp").read_text(encoding="utf-8")


def _cpu_identity() -> str:
    """A short name for this CPU model, its instruction sets (the build targets them) and the source."""
    flags = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        lines = cpuinfo.read_text(errors="replace").splitlines()
        flags = next((line for line in lines if line.startswith(("flags", "Features"))), "")
    return hashlib.sha256(f"{platform.machine()}|{flags}|{_SOURCE}".encode()).hexdigest()[:10]


@functools.cache
def cpu_kernels() -> ModuleType | None:
    """The compiled loops, or None (said once in the log) where they cannot be built."""
    try:
        from torch.utils.cpp_extension import load_inline

        native = ["-march=native"] if platform.machine() in ("x86_64", "AMD64") else []
        return load_inline(
            name=f"palimpsest_memory_kernels_{_cpu_identity()}",
            cpp_sources=_SOURCE,
            functions=[
                "value_gradient",
                "weight_gradient",
                "segment_value_gradient",
                "lazy_adamw_rows",
                "product_key_select",
                "key_score_backward",
            ],
            extra_cflags=["-O3", "-fopenmp", "-fno-math-errno", *native],
            extra_ldflags=["-fopenmp"],
            verbose=False,
        )
    except Exception as error:  # no compiler or ninja, a read-only cache, an unknown toolchain...
        logger.info("compiled memory kernels unavailable here (%s); using torch ops", error)
        return None
