"""End-to-end studies that reproduce each paper's effect at small scale.

Every study runs on one skeleton (:mod:`palimpsest.experiments.study`): resumable units, typed
results (:mod:`palimpsest.results`) rendered by their report section and verdict table. The
registry below names each one; :func:`get_study` imports only the study asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

from palimpsest.errors import ConfigError

#: ``palimpsest experiment`` name -> ``module:class`` of the study.
STUDIES = {
    "plasticity": "palimpsest.experiments.plasticity:PlasticityStudy",
    "memory": "palimpsest.experiments.memory:MemoryStudy",
    "editing": "palimpsest.experiments.editing:EditingStudy",
    "editing-real": "palimpsest.experiments.editing_real:RealEditingStudy",
    "many-edits": "palimpsest.experiments.many_edits:ManyEditsStudy",
    "knowledge": "palimpsest.experiments.knowledge:KnowledgeStudy",
}


def get_study(name: str, **options: Any) -> Any:
    """The study registered as ``name``, made with its ``options`` (a :class:`~.study.Study`)."""
    if name not in STUDIES:
        raise ConfigError(f"unknown study '{name}' (known: {', '.join(STUDIES)})")
    module, cls = STUDIES[name].split(":")
    return getattr(importlib.import_module(module), cls)(**options)
