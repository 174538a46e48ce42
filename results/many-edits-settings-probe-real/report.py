"""Write report.md and results.json of the settings probe from its output lines.

    python results/many-edits-settings-probe-real/report.py

Reads ``probe-output.jsonl`` beside this file (the lines ``probe.py`` appended, one per setting)
and the defaults' row, the study's own 100-at-once MEMIT unit (``many-edits-real-quick``).
"""

import json
from pathlib import Path

HERE = Path(__file__).parent
STUDY = HERE.parent / "many-edits-real-quick" / "results.json"
COLUMNS = [
    ("made", "made"), ("made@after-text", "made@after-text"), ("paraphrase", "paraphrase"),
    ("paraphrase@held-out", "paraphrase, held-out template"),
    ("neighbourhood_kept", "neighbourhood kept"), ("same_subject_kept", "same-subject kept"),
    ("generation@chat", "generation@chat"), ("fluency", "fluency"), ("perplexity", "perplexity"),
]  # fmt: skip


def main() -> None:
    lines = [json.loads(line) for line in (HERE / "probe-output.jsonl").read_text().splitlines() if line]
    study = json.loads(STUDY.read_text())
    wanted = ("memit", 100, "at once")
    unit = next(o for o in study["outcomes"] if (o["method"], o["edits"], o["mode"]) == wanted)
    before = next(b for b in study["baselines"] if (b["edits"], b["mode"]) == (100, "at once"))
    default = {**unit["metrics"], "setting": "defaults (blocks 3-7, norm limit 2x, 100k tokens)",
               "seconds": round(unit["seconds"], 1)}  # fmt: skip
    rows = [{**before["metrics"], "setting": "before any edit", "seconds": None}, default, *lines]

    def cell(key: str, value: float | None) -> str:
        if value is None:
            return "–"
        return f"{value:.2f}" if key in ("fluency", "perplexity") else f"{100 * value:.0f}%"

    table = ["| setting | " + " | ".join(name for _, name in COLUMNS) + " | seconds |"]
    table.append("|" + "---|" * (len(COLUMNS) + 2))
    for row in rows:
        cells = [cell(key, row.get(key)) for key, _ in COLUMNS]
        seconds = "–" if row.get("seconds") is None else f"{row['seconds']:.0f}"
        table.append(f"| {row['setting']} | " + " | ".join(cells) + f" | {seconds} |")
    (HERE / "results.json").write_text(json.dumps({
        "kind_note": "probe (not a palimpsest results kind): batch editor settings, 100 edits at once",
        "model": "smollm2-135m", "edits": 100, "method": "memit",
        "draw": "many-edits-real-quick/benchmark.jsonl shuffled with seed 0, its first 100 cases",
        "machine": "2-core dev box, torch 2.13.0+cpu, transformers 5.25.0; the probe shared the cores with "
                   "other jobs, so its seconds are upper bounds and not comparable with the defaults' row",
        "rows": rows,
    }, indent=1) + "\n")  # fmt: skip
    measured = "; ".join(line["setting"] for line in lines)
    text = (HERE / "report.template.md").read_text().format(table="\n".join(table), measured=measured)
    (HERE / "report.md").write_text(text)


if __name__ == "__main__":
    main()
