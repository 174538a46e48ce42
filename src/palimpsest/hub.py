"""Whether the Hugging Face hub can be reached, asked once before anything that would retry.

Offline, ``from_pretrained`` and ``load_dataset`` retry for a long time and log every try;
a hub id or ``hf:`` corpus that cannot be fetched is one line at once instead.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse


def hub_reachable(timeout: float = 2.0) -> bool:
    """Whether the hub's host answers (False at once in offline mode)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True
