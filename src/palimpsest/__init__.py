"""palimpsest: grow, forget and rewrite the memory of language models.

The package never configures logging itself: applications (the CLI included) decide
where log records go. Library modules only create loggers with ``logging.getLogger``.
"""

from palimpsest import hf_auto
from palimpsest.errors import PalimpsestError

# Models saved with palimpsest's additions (a memory) have a model type of their own; this lets
# plain transformers (AutoModel*, pipeline) load them whole once palimpsest is imported.
hf_auto.register()

__all__ = ["PalimpsestError", "__version__"]
__version__ = "0.1.0"
