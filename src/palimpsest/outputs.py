"""What a command owns in its output folder, so it never deletes or overwrites anything else.

Every command that writes ``--out`` declares an :class:`OutputKind`: its name and the
top-level entries it writes (``model``, ``results.json``, ``checkpoint-*``). Before any
work, :func:`claim_output` looks at the folder:

- empty or new: it is this command's; a manifest (``.palimpsest-output.json``) records
  which command owns it;
- the output of another command (its manifest, or the ``results.json`` / ``config.yaml``
  of a folder written before manifests existed): refused, naming that command;
- entries that match none of the command's patterns (a user's ``notes.txt``, an
  ``old-run/``): refused, naming them — palimpsest did not write them, so it does not
  know they are safe to replace.

Commands that resume (``pretrain``, ``memory learn``, ``adapt``) also record their run's
identity (settings and inputs) in the manifest: a second run with another identity into the
same folder is refused unless the user asks to replace it (:meth:`OutputClaim.same_run`),
because resuming another run's checkpoint would save that run's model under this run's name.
"""

from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from palimpsest.errors import DataError
from palimpsest.storage import OutputLock, as_stored, write_json

MANIFEST = ".palimpsest-output.json"
#: palimpsest's own bookkeeping files in an output folder (never a user's, never an output).
BOOKKEEPING = (MANIFEST, OutputLock.NAME)

#: What ``save_pretrained`` of a model and its tokenizer (or a memory adapter) writes into a folder.
MODEL_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt", "*.model", "chat_template.jinja",
    "chat_template.json", "memory_config.json", "memory.safetensors",
)  # fmt: skip
#: What a report writes (``write_report``).
REPORT_FILES = ("report.md", "report.html", "plots")


@dataclass(frozen=True)
class OutputKind:
    """A command's output: its name and the top-level entries (glob patterns) it writes."""

    command: str
    owns: tuple[str, ...]
    #: ``results.json`` kinds this command writes: how a folder written before manifests
    #: existed is recognised as this command's.
    results_kinds: tuple[str, ...] = ()

    def owned(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.owns)


@dataclass
class OutputClaim:
    """A folder a command may write: what it found there, and how to record this run."""

    folder: Path
    kind: OutputKind
    #: The run identity found in the folder (None: a fresh folder, or a run that recorded none).
    previous_identity: Any = None
    #: Whether the folder held this command's earlier output.
    existing: bool = False

    def record(self, identity: Any = None) -> None:
        """Write the manifest: this folder is ``kind.command``'s (and this run's, if ``identity``)."""
        document: dict[str, Any] = {"command": self.kind.command}
        if identity is not None:
            document["identity"] = as_stored(identity)
        write_json(self.folder / MANIFEST, document)

    def same_run(self, identity: Any, *, overwrite: bool, option: str = "--overwrite") -> bool:
        """Whether the folder holds this very run (resume it), recording ``identity`` either way.

        Another run of the same command (other settings or inputs) is refused, naming what
        differs, unless ``overwrite``: then the caller starts over (and replaces only
        what the command owns, see :func:`clear_owned`).
        """
        identity = as_stored(identity)
        previous = self.previous_identity
        if self.existing and previous is not None and previous != identity and not overwrite:
            differing = _differing_keys(previous, identity)
            raise DataError(
                f"{self.folder} holds another `palimpsest {self.kind.command}` run "
                f"(other {', '.join(differing[:6]) or 'settings'}); choose another --out, or {option} "
                "to replace it"
            )
        same = self.existing and previous == identity
        self.record(identity)
        return same

    def start_run(self, settings: Any, *, overwrite: bool, **inputs: str | Path | None) -> bool:
        """Claim the folder for the run of these ``settings`` and ``inputs`` (files, folders and
        names, by :func:`input_fingerprint`); returns whether it continues that very run. A run
        of other settings or inputs is refused unless ``overwrite``, which first clears what the
        command owns: another run's checkpoint is never resumed under this run's name."""
        from palimpsest.config import to_dict

        identity = {
            name: input_fingerprint(value) if value is not None else None for name, value in inputs.items()
        }
        same = self.same_run({**identity, "settings": to_dict(settings)}, overwrite=overwrite)
        if not same:
            clear_owned(self)
        return same


def claim_output(folder: str | Path, kind: OutputKind) -> OutputClaim:
    """Check ``folder`` may be written by ``kind.command`` (see the module docstring); nothing
    is written here. Refusals are one line naming the other command or the foreign entries."""
    folder = Path(folder)
    if not folder.is_dir():
        return OutputClaim(folder, kind)
    entries = sorted(entry.name for entry in folder.iterdir() if entry.name not in BOOKKEEPING)
    manifest = _read_manifest(folder)
    owner = manifest.get("command") if manifest else _legacy_owner(folder)
    if not entries and owner is None:
        return OutputClaim(folder, kind)
    if owner is not None and owner != kind.command:
        raise DataError(
            f"{folder} holds the output of `palimpsest {owner}`; choose another --out "
            f"(`palimpsest {kind.command}` never writes over another command's output)"
        )
    foreign = [name for name in entries if not kind.owned(name)]
    if foreign or owner is None:
        shown = ", ".join(
            f"{name}/" if (folder / name).is_dir() else name for name in (foreign or entries)[:5]
        )
        more = f" and {len(foreign or entries) - 5} more" if len(foreign or entries) > 5 else ""
        raise DataError(
            f"{folder} holds files palimpsest did not write ({shown}{more}); choose an empty or new "
            "--out (palimpsest never deletes or overwrites them)"
        )
    return OutputClaim(folder, kind, previous_identity=(manifest or {}).get("identity"), existing=True)


def input_fingerprint(name: str | Path) -> Any:
    """What identifies an input of a run: a file by its content's hash, a folder by its files'
    names, sizes and modification times (a model re-saved there is another input), anything
    else (a built-in name, a hub id) by its name."""
    import hashlib

    path = Path(name)
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        return {"file": str(name), "sha256": digest.hexdigest()}
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name not in BOOKKEEPING)
        return {
            "folder": str(name),
            "files": [[str(p.relative_to(path)), p.stat().st_size, int(p.stat().st_mtime)] for p in files],
        }
    return {"name": str(name)}


def is_empty_output(folder: Path) -> bool:
    """Whether ``folder`` holds nothing but palimpsest's bookkeeping (a run that wrote nothing)."""
    return folder.is_dir() and all(entry.name in BOOKKEEPING for entry in folder.iterdir())


def clear_owned(claim: OutputClaim) -> None:
    """Remove the entries of the folder that its command owns (before a run starts over)."""
    import shutil

    for entry in claim.folder.iterdir():
        if entry.name not in BOOKKEEPING and claim.kind.owned(entry.name):
            shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink()


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        document = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) and isinstance(document.get("command"), str) else None


#: results.json kinds of the commands, for folders written before manifests existed.
_LEGACY_KINDS = {
    "pretrain": "pretrain", "evaluate": "evaluate", "evaluate-task": "evaluate", "edit": "edit",
    "memory-stats": "memory stats", "memory-learn": "memory learn", "plasticity": "experiment plasticity",
    "memory-study": "experiment memory", "editing-study": "experiment editing",
    "editing-real": "experiment editing", "knowledge": "experiment knowledge",
    "adapt-language": "adapt language", "adapt-task": "adapt task",
}  # fmt: skip


def _legacy_owner(folder: Path) -> str | None:
    """The command that wrote a folder without a manifest, read from its results or config."""
    try:
        document = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        document = None
    if isinstance(document, dict):
        if isinstance(document.get("kind"), str):
            return _LEGACY_KINDS.get(document["kind"])
        if isinstance(document.get("results"), list):
            return "demo"
    if (folder / "config.yaml").is_file() and (folder / "tokenizer").is_dir():
        return "pretrain"  # a pretraining run interrupted before its results.json
    return None


def _differing_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [prefix.rstrip(".") or "settings"] if a != b else []
    keys: list[str] = []
    for key in sorted(set(a) | set(b), key=str):
        keys += _differing_keys(a.get(key), b.get(key), f"{prefix}{key}.")
    return keys
