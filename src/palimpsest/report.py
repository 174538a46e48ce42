"""Reports: typed results -> ``report.md`` and a self-contained ``report.html``.

Each :class:`~palimpsest.results.Results` class renders its own section as blocks
(paragraphs, tables, figures); this module only renders those blocks, to Markdown and to
HTML from the same blocks, so the two reports always say the same thing. It knows no
study: results are matched to their class by ``kind`` (:func:`palimpsest.results.read_results`).
"""

from __future__ import annotations

import base64
import html
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palimpsest.claims import CLAIM_HEADERS, Claim, claim_rows
from palimpsest.results import Results, read_results
from palimpsest.storage import write_text


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[str | Table | Figure] = field(default_factory=list)


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers to short, stable text: 4 significant digits, thousands as integers."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{digits + 1}g}"
    return str(value)


def pm(pair: Any, scale: float = 1.0, digits: int = 3) -> str:
    """``mean ± std`` from a ``(mean, std)`` pair."""
    if not pair or pair[0] is None or (isinstance(pair[0], float) and math.isnan(pair[0])):
        return "–"
    return f"{scale * pair[0]:.{digits}f} ± {scale * pair[1]:.{digits}f}"


def mean_curve(curves: Sequence[Sequence[Sequence[float]]]) -> tuple[list, list, list]:
    """Mean curve and its ±std band over seeds (curves share their x values)."""
    xs = [point[0] for point in curves[0]]
    columns = list(zip(*[[point[1] for point in curve] for curve in curves], strict=False))
    means = [statistics.fmean(column) for column in columns]
    stds = [statistics.stdev(column) if len(column) > 1 else 0.0 for column in columns]
    xs = xs[: len(means)]
    return (
        list(zip(xs, means, strict=True)),
        [(x, m - d) for x, m, d in zip(xs, means, stds, strict=True)],
        [(x, m + d) for x, m, d in zip(xs, means, stds, strict=True)],
    )


def machine_line(machine: Mapping[str, Any]) -> str:
    return (
        f"Machine: {machine.get('platform')}, torch {machine.get('torch')}, "
        f"{machine.get('threads')} threads, {machine.get('device')}."
    )


def build_sections(results: Sequence[Results | Mapping[str, Any]], plots_dir: Path) -> list[Section]:
    """The verdict table of every claim the results bear on (if any), then one section per
    kind (in first-seen order), each built by its results class.

    Plain mappings (read from results.json files) are checked against their class first.
    """
    grouped: dict[type[Results], list[Results]] = {}
    claims: list[Claim] = []
    for result in results:
        typed = result if isinstance(result, Results) else read_results(result)
        grouped.setdefault(type(typed), []).append(typed)
        claims += typed.claims()
    sections = [claims_section(claims)] if claims else []
    return sections + [cls.report_section(group, plots_dir) for cls, group in grouped.items()]


def claims_section(claims: Sequence[Claim]) -> Section:
    """The table a report opens with: each claim, the paper's figure, this run's, the verdict."""
    return Section(
        "Verdicts",
        [
            "Each published claim this run bears on: what the paper reports, what was measured here, "
            "and the outcome — reproduced, partly, not reproduced, or not measurable here (this scale "
            "cannot show it either way; the committed run named beside it can). Details follow below.",
            Table(list(CLAIM_HEADERS), claim_rows(claims)),
        ],
    )


# --------------------------------------------------------------------------- rendering


def render_markdown(title: str, sections: Sequence[Section], root: Path, preface: str = "") -> str:
    lines = [f"# {title}", ""]
    if preface:
        lines += [preface, ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for block in section.blocks:
            if isinstance(block, Table):
                lines.append("| " + " | ".join(block.headers) + " |")
                lines.append("|" + "---|" * len(block.headers))
                lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in block.rows]
            elif isinstance(block, Figure):
                lines.append(f"![{block.caption}]({block.path.relative_to(root).as_posix()})")
                lines.append(f"*{block.caption}*")
            else:
                lines.append(block)
            lines.append("")
    return "\n".join(lines)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;
color:#1d1d1f;line-height:1.5}
table{border-collapse:collapse;margin:1rem 0;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
figure{margin:1rem 0}img{max-width:100%}figcaption{font-size:.85rem;color:#555}
"""


def _html_text(text: str) -> list[str]:
    """A text block as the markdown report reads it: paragraphs split by blank lines, and a
    paragraph whose lines all start with "- " as a list (the verdicts use both)."""
    parts = []
    for paragraph in (p.strip() for p in text.split("\n\n")):
        lines = paragraph.splitlines()
        if not lines:
            continue
        if all(line.startswith("- ") for line in lines):
            items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines)
            parts.append(f"<ul>{items}</ul>")
        elif len(lines) > 1 and all(line.startswith("- ") for line in lines[1:]):
            items = "".join(f"<li>{html.escape(line[2:])}</li>" for line in lines[1:])
            parts.append(f"<p>{html.escape(lines[0])}</p><ul>{items}</ul>")
        else:
            parts.append(f"<p>{html.escape(paragraph)}</p>")
    return parts


def render_html(title: str, sections: Sequence[Section], preface: str = "") -> str:
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if preface:
        parts.append(f"<p>{html.escape(preface)}</p>")
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
                body = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(fmt(v))}</td>" for v in row) + "</tr>"
                    for row in block.rows
                )
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(block, Figure):
                data = base64.b64encode(block.path.read_bytes()).decode("ascii")
                parts.append(
                    f"<figure><img alt='{html.escape(block.caption)}' src='data:image/png;base64,{data}'>"
                    f"<figcaption>{html.escape(block.caption)}</figcaption></figure>"
                )
            else:
                parts += _html_text(block)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    results: Sequence[Results | Mapping[str, Any]],
    out: str | Path,
    *,
    title: str = "palimpsest report",
    preface: str = "",
) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` (plots under ``out/plots``); return both paths."""
    out = Path(out)
    plots_dir = out / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    sections = build_sections(results, plots_dir)
    markdown_path, html_path = out / "report.md", out / "report.html"
    write_text(markdown_path, render_markdown(title, sections, out, preface))  # atomic, rank 0
    write_text(html_path, render_html(title, sections, preface))
    return markdown_path, html_path
