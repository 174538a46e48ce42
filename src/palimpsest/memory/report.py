"""Memory usage of a saved model, as results, a plot of slot usage and a report section."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from palimpsest.data import load_tokenizer
from palimpsest.errors import ConfigError, ModelError
from palimpsest.memory.inject import load_memory, memories, memory_handle
from palimpsest.memory.usage import memory_usage, recording, validation_batches
from palimpsest.models import fit_block_size, load_pretrained
from palimpsest.plotting import plot_curves
from palimpsest.report import Figure, Section, Table, write_report
from palimpsest.results import Results


def load_with_memory(model_dir: str | Path, memory_dir: str | Path | None = None) -> Any:
    """A model with its memories: merged folder, or base folder + memory adapter folder."""
    model = load_pretrained(str(model_dir))
    if memory_dir is not None:
        return load_memory(model, memory_dir)
    if memory_handle(model) is None:
        raise ModelError(f"'{model_dir}' holds no product-key memory (its config names none); pass --memory")
    return model


@torch.no_grad()
def slot_mass(model: Any, batches: Sequence[dict[str, torch.Tensor]]) -> dict[str, list[float]]:
    """Per layer, the slots' shares of the weight mass, largest first (for the usage plot)."""
    model.eval()
    device = next(model.parameters()).device
    with recording(model) as layers:
        mass = {name: torch.zeros(layer.size, dtype=torch.float64) for name, layer in layers.items()}
        for batch in batches:
            model(**{key: value.to(device) for key, value in batch.items()})
            for name, layer in layers.items():
                selection = layer.last_selection
                indices, weights = selection.indices, selection.weights
                rows = selection.rows()  # a gated memory: the tokens that read it
                if rows is not None:
                    indices, weights = indices[rows], weights[rows]
                mass[name].index_add_(0, indices.reshape(-1).cpu(), weights.double().reshape(-1).cpu())
    return {name: (m.sort(descending=True).values / m.sum()).tolist() for name, m in mass.items()}


@dataclass
class UsageConfig:
    """What ``palimpsest memory stats`` reads: blocks of a corpus's validation split."""

    corpus: str = "wiki-en"
    block_size: int = 128
    max_blocks: int = 128
    batch_size: int = 16

    def __post_init__(self) -> None:
        for name in ("block_size", "max_blocks", "batch_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")


def memory_stats_of_saved(
    model_dir: str | Path,
    memory_dir: str | Path | None,
    settings: UsageConfig | None = None,
    *,
    out: str | Path | None = None,
) -> MemoryStats:
    """Usage metrics of each memory of a saved model on a corpus's validation split."""
    settings = settings or UsageConfig()
    corpus_name, block_size = settings.corpus, settings.block_size
    max_blocks, batch_size = settings.max_blocks, settings.batch_size
    model = load_with_memory(model_dir, memory_dir)
    tokenizer = load_tokenizer(model_dir)
    block_size = fit_block_size(model, block_size)
    batches = validation_batches(
        tokenizer, corpus_name, block_size=block_size, max_blocks=max_blocks, batch_size=batch_size
    )
    results = MemoryStats(
        model=str(model_dir),
        corpus=corpus_name,
        tokens=sum(batch["input_ids"].numel() for batch in batches),
        slots={name: layer.size for name, layer in memories(model).items()},
        layers=memory_usage(model, batches),
    )
    if out is not None:
        out = Path(out)
        curves = {name: cumulative_curve(shares) for name, shares in slot_mass(model, batches).items()}
        path = plot_curves(
            curves, out / "plots" / "memory-usage.png", title="Slot usage: cumulative weight mass",
            xlabel="% of slots (most used first)", ylabel="% of weight mass",
        )  # fmt: skip
        results.plots = [str(path)]
        results.write(out / "results.json")
        write_report([results], out, title="palimpsest memory stats")
    return results


@dataclass
class MemoryStats(Results):
    """``palimpsest memory stats``: per memory layer, how evenly its slots are used."""

    KIND: ClassVar[str] = "memory-stats"

    model: str
    corpus: str
    tokens: int
    slots: dict[str, int]
    #: per layer, the metrics of :func:`~palimpsest.memory.usage.memory_usage`
    layers: dict[str, dict[str, float]]
    plots: list[str] = field(default_factory=list)

    @classmethod
    def report_section(cls, runs: Sequence[MemoryStats], plots_dir: Path) -> Section:
        section = Section("Memory usage")
        section.blocks.append(
            "Per memory layer, on validation text: share of slots selected at least once, KL divergence "
            "from uniform of selection counts and of softmax-weight mass (0 = even), Gini of the mass, and "
            "the share of slots holding 50/90/99% of the mass."
        )
        columns = ["used", "kl_counts", "kl_weights", "gini", "slots_50", "slots_90", "slots_99"]
        rows = [
            [f"{run.model} · {name}", run.slots[name], *(metrics[c] for c in columns)]
            for run in runs
            for name, metrics in run.layers.items()
        ]
        section.blocks.append(Table(["layer", "slots", *columns], rows))
        for run in runs:
            for plot in run.plots:
                section.blocks.append(
                    Figure(Path(plot), "Cumulative weight mass over slots, most used first")
                )
        return section


def cumulative_curve(shares: list[float], points: int = 400) -> list[tuple[float, float]]:
    """``(% of slots, % of mass)`` for the most-used slots first, thinned to ~``points`` points."""
    curve, running = [], 0.0
    for index, share in enumerate(shares, start=1):
        running += share
        curve.append((100 * index / len(shares), 100 * running))
    step = max(1, len(curve) // points)
    return curve[::step] + ([curve[-1]] if curve and (len(curve) - 1) % step else [])
