"""Plots for reports, drawn with matplotlib's object API (no pyplot, no global backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.figure import Figure

Curve = Sequence[Sequence[float]]  # [(x, y), ...]


def plot_curves(
    curves: Mapping[str, Curve],
    path: str | Path,
    *,
    title: str,
    xlabel: str = "step",
    ylabel: str = "loss",
    reference_lines: Mapping[str, float] | None = None,
    bands: Mapping[str, tuple[Curve, Curve]] | None = None,
    logy: bool = False,
    logx: bool = False,
    styles: Mapping[str, tuple[str, str]] | None = None,
    legend_outside: bool = False,
) -> Path:
    """Line plot of named ``[(x, y)]`` curves; ``bands`` shade a (low, high) range per name;
    ``styles`` give a curve its (colour, line style), so that pairs of curves read as pairs;
    ``legend_outside`` puts the legend right of the axes, where it covers no line."""
    figure = Figure(figsize=(8.4 if legend_outside else 6.4, 4.0), dpi=110)
    axes = figure.add_subplot()
    for index, (name, points) in enumerate(curves.items()):
        if not points:
            continue
        color, style = (styles or {}).get(name, (f"C{index % 10}", "-"))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        axes.plot(xs, ys, label=name, color=color, linestyle=style, linewidth=1.6, marker="o", markersize=3)
        if bands and name in bands:
            low, high = bands[name]
            axes.fill_between(
                [p[0] for p in low], [p[1] for p in low], [p[1] for p in high], color=color, alpha=0.2
            )
    for index, (name, value) in enumerate((reference_lines or {}).items()):
        axes.axhline(value, linestyle="--", linewidth=1.0, color=f"C{(index + len(curves)) % 10}", label=name)
    if logy:
        axes.set_yscale("log")
    if logx:
        axes.set_xscale("log")
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    if legend_outside:
        axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    else:
        axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, path)
    return path


def plot_bars(
    groups: Mapping[str, Mapping[str, tuple[float, float]]],
    path: str | Path,
    *,
    title: str,
    ylabel: str,
    reference_lines: Mapping[str, float] | None = None,
) -> Path:
    """Grouped bars with error bars: ``{group: {series: (mean, std)}}``."""
    figure = Figure(figsize=(6.4, 4.0), dpi=110)
    axes = figure.add_subplot()
    group_names = list(groups)
    series_names = list(dict.fromkeys(s for values in groups.values() for s in values))  # first-seen order
    width = 0.8 / max(len(series_names), 1)
    for index, series in enumerate(series_names):
        xs = [g + (index - (len(series_names) - 1) / 2) * width for g in range(len(group_names))]
        means = [groups[name].get(series, (float("nan"), 0.0))[0] for name in group_names]
        errors = [groups[name].get(series, (float("nan"), 0.0))[1] for name in group_names]
        axes.bar(xs, means, width=width, yerr=errors, capsize=3, label=series, color=f"C{index % 10}")
    for index, (name, value) in enumerate((reference_lines or {}).items()):
        axes.axhline(
            value, linestyle="--", linewidth=1.0, color=f"C{(index + len(series_names)) % 10}", label=name
        )
    axes.set_xticks(range(len(group_names)), group_names, fontsize=8)
    axes.set_title(title)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3, axis="y")
    axes.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, path)
    return path


def plot_points(
    points: Mapping[str, tuple[float, float]],
    path: str | Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    reference_x: float | None = None,
    reference_label: str = "before the edit",
    spread: Mapping[str, tuple[float, float]] | None = None,
    legend: bool | None = None,
    shares: bool = True,
) -> Path:
    """A labelled scatter plot (``{label: (x, y)}``), e.g. a trade-off frontier of methods; a dashed
    vertical line at ``reference_x`` (e.g. where the model stood before). ``spread`` adds error bars
    (``{label: (x std, y std)}``); ``legend`` names the points in a legend instead of beside them;
    None (the default) does so where two points crowd together, so no two labels overlap.
    ``shares``: both axes are fractions in [0, 1]; otherwise the x axis fits the data."""
    if legend is None:
        legend = _crowded(list(points.values()), shares)
    figure = Figure(figsize=(6.4, 4.8), dpi=110)
    axes = figure.add_subplot()
    markers = "osD^vP*Xhp"
    for index, (label, (x, y)) in enumerate(points.items()):
        style = {"color": f"C{index % 10}", "marker": markers[index % len(markers)] if legend else "o"}
        if spread is not None and label in spread:
            x_err, y_err = spread[label]
            axes.errorbar([x], [y], xerr=[x_err], yerr=[y_err], linestyle="none", capsize=2, alpha=0.7,
                          markersize=5, label=label if legend else None, **style)  # fmt: skip
        else:
            axes.scatter([x], [y], s=28, label=label if legend else None, **style)
        if not legend:
            below = y > 0.9  # a label above a point at the top would run into the frame
            axes.annotate(
                label, (x, y), fontsize=8, xytext=(4, -11 if below else 4), textcoords="offset points"
            )
    if reference_x is not None:
        axes.axvline(reference_x, linestyle="--", linewidth=1.0, color="grey", label=reference_label)
    if legend or reference_x is not None:
        axes.legend(fontsize=7 if legend else 8, loc="lower left")
    if shares:
        axes.set_xlim(-0.02, 1.02)
    axes.set_ylim(-0.02, 1.02)
    axes.set_title(title)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    axes.grid(alpha=0.3)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _save(figure, path)
    return path


#: Two points closer than this (as a share of each axis's range) would have overlapping labels.
CROWDED = 0.08


def _crowded(points: Sequence[tuple[float, float]], shares: bool) -> bool:
    """Whether any two points sit within :data:`CROWDED` of each other on both axes."""
    xs = [x for x, _ in points]
    x_range = 1.0 if shares else (max(xs, default=0.0) - min(xs, default=0.0)) or 1.0
    return any(
        abs(a[0] - b[0]) / x_range < CROWDED and abs(a[1] - b[1]) < CROWDED
        for index, a in enumerate(points)
        for b in points[index + 1 :]
    )


def _save(figure: Figure, path: Path) -> None:
    """PNG under a temporary name, then renamed: a kill never leaves a torn plot."""
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png")
    tmp.replace(path)
