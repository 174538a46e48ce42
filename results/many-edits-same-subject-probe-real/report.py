"""Write results.json and report.md of the same-subject probe from the logs ``probe.py`` printed.

    python results/many-edits-same-subject-probe-real/report.py

``logs/memit-defaults.log``: MEMIT's settings; ``logs/other-relations.log``: ``keep_prompts:
other-relations`` at KL weights 0.0625, 1 and 4 (one ``=== SETTINGS`` block each, the settings
besides ``keep_prompts``); ``logs/more.log``: further variants, each block naming all its
settings. The prose around the table is ``report.template.md``.
"""

import json
import re
from pathlib import Path

HERE = Path(__file__).parent
LOGS = HERE / "logs"


def parse(text: str) -> dict:
    """One variant's figures from the lines ``probe.py`` printed for it."""
    out: dict = {}
    for line in text.splitlines():
        if line.startswith("targets"):
            out["target_seconds"] = int(line.split()[1])
        elif line.startswith("steer:"):
            values = line.split()
            out["steer_made"], out["steer_same_kept"] = float(values[2]), float(values[5])
        elif line.startswith("weights:"):
            values = line.split()
            out["weights_made"], out["weights_same_kept"] = float(values[2]), float(values[5])
        elif " base True " in line or " base False " in line:
            match = re.match(r"(.*) (\S+) (.*) base (\S+) steer (\S+) weights (\S+)$", line)
            out.setdefault("facts", []).append({
                "subject_relation_object": line.split(" base ")[0],
                "steer": match.group(5) == "True", "weights": match.group(6) == "True",
            })  # fmt: skip
        elif line.endswith("same-subject facts"):
            out["cases"] = int(line.split()[0])
    return out


def blocks(path: Path) -> list[tuple[dict, dict]]:
    """(settings, figures) of each finished ``=== SETTINGS`` block of a log."""
    found = []
    for block in path.read_text().split("=== ")[1:]:
        head, _, body = block.partition("\n")
        parsed = parse(body)
        if "weights_same_kept" in parsed:
            found.append((json.loads(head), parsed))
    return found


def main() -> None:
    variants = [{"settings": {"keep_prompts": "none"}, **parse((LOGS / "memit-defaults.log").read_text())}]
    for settings, parsed in blocks(LOGS / "other-relations.log"):
        variants.append({"settings": {"keep_prompts": "other-relations", **settings}, **parsed})
    for settings, parsed in blocks(LOGS / "more.log"):
        variants.append({"settings": settings, **parsed})
    (HERE / "results.json").write_text(json.dumps({
        "kind_note": "probe (not a palimpsest results kind): where MEMIT's same-subject damage comes from",
        "model": "smollm2-135m", "method": "memit", "blocks": [3, 4, 5, 6, 7],
        "draw": "many-edits-real-quick/benchmark.jsonl shuffled with seed 0, first 100 cases, those with "
                "same-subject facts (19), edited at once",
        "machine": "2-core dev box, torch 2.13.0+cpu, one thread, sharing the cores with another job",
        "variants": variants,
    }, indent=1) + "\n")  # fmt: skip
    rows = []
    for variant in variants:
        settings = variant["settings"]
        cells = [settings["keep_prompts"], f"{settings.get('kl_factor', 0.0625):g}"]
        cells += [
            f"{100 * variant[k]:.0f}%"
            for k in ("steer_made", "steer_same_kept", "weights_made", "weights_same_kept")
        ]
        rows.append("| " + " | ".join([*cells, str(variant["target_seconds"])]) + " |")
    header = (
        "| KL prompts (`keep_prompts`) | KL weight (`kl_factor`) | made, target alone | same-subject kept, "
        "target alone | made, written | same-subject kept, written | target search (s) |"
    )
    table = "\n".join([header, "|---|---|---|---|---|---|---|", *rows])
    (HERE / "report.md").write_text((HERE / "report.template.md").read_text().format(table=table))


if __name__ == "__main__":
    main()
