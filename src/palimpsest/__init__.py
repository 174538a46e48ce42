"""palimpsest: grow, forget and rewrite the memory of language models.

The common jobs are one call each (:mod:`palimpsest.api`, read on first use so that this import
stays cheap)::

    import palimpsest as ps

    model, tokenizer = ps.load("smollm2-135m")
    editor = ps.edit(model, tokenizer, [ps.request("Spain", "capital", "Madrid", "Barcelona")])
    editor.undo()

The package never configures logging itself: applications (the CLI included) decide
where log records go. Library modules only create loggers with ``logging.getLogger``.
"""

from typing import Any

from palimpsest import hf_auto
from palimpsest.errors import PalimpsestError

# Models saved with palimpsest's additions (a memory) have a model type of their own; this lets
# plain transformers (AutoModel*, pipeline) load them whole once palimpsest is imported.
hf_auto.register()

#: The front door's names (:mod:`palimpsest.api`), resolved when first used.
API = (
    "ActiveForgettingCallback", "BatchEditConfig", "EditConfig", "EditRequest", "Fact", "PKMConfig",
    "PretrainConfig", "Relation", "add_memory", "edit", "evaluate", "forget_embeddings", "load",
    "pretrain", "remove_memory", "request", "save",
)  # fmt: skip

__all__ = ["PalimpsestError", "__version__", *API]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in API:
        from palimpsest import api

        return getattr(api, name)
    raise AttributeError(f"module 'palimpsest' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
