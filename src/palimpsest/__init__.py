"""palimpsest: grow, forget and rewrite the memory of language models.

The package never configures logging itself: applications (the CLI included) decide
where log records go. Library modules only create loggers with ``logging.getLogger``.
"""

from palimpsest.errors import PalimpsestError

__all__ = ["PalimpsestError", "__version__"]
__version__ = "0.1.0"
