"""``palimpsest edit``: read a fact file, edit a saved model, write the edited model and results.

Nothing is written until the whole fact file has been read and checked and the edit has
succeeded; the edited model is saved to a temporary folder and moved into place, so an
interrupted or failed run never leaves a partial model behind.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from palimpsest.data import load_tokenizer
from palimpsest.editing.datasets import read_edit_file
from palimpsest.editing.editor import ConstrainedFinetune, EditConfig
from palimpsest.models import load_pretrained, resolve_pretrained
from palimpsest.storage import machine_info, write_json


def edit_saved_model(
    model_dir: str | Path,
    facts_path: str | Path,
    out: str | Path,
    config: EditConfig,
    *,
    sequential: bool = False,
) -> dict[str, Any]:
    """Edit the model at ``model_dir`` with the requests in ``facts_path``; write under ``out``."""
    requests, keep = read_edit_file(facts_path)
    model = load_pretrained(str(model_dir))
    tokenizer = load_tokenizer(resolve_pretrained(str(model_dir)))
    editor = ConstrainedFinetune(model, tokenizer, config=config)
    result = editor.apply(requests, unmodified=keep, sequential=sequential)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".model.partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(str(staging))
    tokenizer.save_pretrained(str(staging))
    shutil.rmtree(out / "model", ignore_errors=True)
    staging.rename(out / "model")
    from palimpsest.config import to_dict

    results = {
        "kind": "edit",
        "model": str(model_dir),
        "facts": str(facts_path),
        "edited_model": str(out / "model"),
        "config": to_dict(config),
        "sequential": sequential,
        "requests": [
            {
                "subject": r.fact.subject,
                "relation": r.fact.relation.name,
                "old": r.fact.object,
                "new": r.new_object,
            }
            for r in requests
        ],
        **result.as_dict(),
        "machine": machine_info(),
    }
    write_json(out / "results.json", results)
    return results
