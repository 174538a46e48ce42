"""grow: product-key memory layers for language models (Lample et al. 2019; Kim & Jung 2020).

:class:`ProductKeyMemory` is the layer: multi-head product keys, exact top-k, softmax
weights in fp32, values read through an ``EmbeddingBag``.
"""

from palimpsest.memory.layer import MaskedBatchNorm, ProductKeyMemory, Selection

__all__ = ["MaskedBatchNorm", "ProductKeyMemory", "Selection"]
