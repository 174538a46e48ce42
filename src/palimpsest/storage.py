"""Writing results and models safely: atomically, and once under multi-process training.

Under ``torchrun`` / ``accelerate launch`` every process runs the same pipeline code; only
the main process (rank 0) writes, and the others wait at a barrier until the files exist,
so no two processes write the same file and nobody reads a half-written one. Without
``torch.distributed`` these are plain writes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_file

from palimpsest.errors import DataError, ModelError, StorageError

logger = logging.getLogger(__name__)

T = TypeVar("T")

SINGLE_FILE = "model.safetensors"
#: Files of palimpsest's own bookkeeping that a folder keeps when :func:`atomic_folder`
#: replaces it (the output manifest of :mod:`palimpsest.outputs`, the writer's lock).
KEPT_ON_REPLACE = (".palimpsest-output.json", ".palimpsest.lock")
SHARD_INDEX = "model.safetensors.index.json"


def is_main_process() -> bool:
    """Rank 0 (or not distributed at all)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("RANK", "0")) == 0


def wait_for_everyone() -> None:
    """A barrier across processes, when there are several."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (a kill mid-write never leaves a truncated file), on rank 0."""
    path = Path(path)
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        _write_then_rename(tmp, path, json.dumps(data, indent=2, default=str))
    wait_for_everyone()


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (a temporary name, then a rename), on rank 0."""
    path = Path(path)
    if is_main_process():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_then_rename(path.with_name(f".{path.name}.tmp"), path, text)
    wait_for_everyone()


def _write_then_rename(tmp: Path, path: Path, text: str) -> None:
    """``text`` into ``tmp``, then renamed to ``path``; a failed write (a full disk) removes
    ``tmp`` and leaves ``path`` as it was."""
    try:
        tmp.write_text(text, encoding="utf-8")
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A folder written under a temporary name and moved into place only once complete.

    Yields the staging folder (every rank gets it; write on rank 0). A failure or a kill
    while writing leaves the previous folder, if any, untouched and no half-written one
    under ``path``; on success an existing folder is replaced.
    """
    path = Path(path)
    staging, previous = path.with_name(f".{path.name}.partial"), path.with_name(f".{path.name}.previous")
    if is_main_process():
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
    wait_for_everyone()
    try:
        yield staging
    except BaseException:
        if is_main_process():
            shutil.rmtree(staging, ignore_errors=True)
        raise
    if is_main_process():
        shutil.rmtree(previous, ignore_errors=True)
        for name in KEPT_ON_REPLACE:  # the folder's own bookkeeping survives the swap
            if (path / name).is_file() and not (staging / name).exists():
                shutil.copy2(path / name, staging / name)
        if path.exists():
            path.rename(previous)
        staging.rename(path)
        shutil.rmtree(previous, ignore_errors=True)
    wait_for_everyone()


def save_model(
    model: Any, tokenizer: Any, path: str | Path, *, extra: Callable[[Path], None] | None = None
) -> Path:
    """``save_pretrained`` of a model (safetensors) and/or its tokenizer into one folder, on rank 0,
    atomically: the folder appears complete or not at all (see :func:`atomic_folder`). ``extra``
    writes what else belongs in the folder (given the staging folder), inside the same swap."""
    path = Path(path)
    try:
        with atomic_folder(path) as staging:
            if is_main_process():
                if model is not None:
                    model.save_pretrained(str(staging))
                if tokenizer is not None:
                    tokenizer.save_pretrained(str(staging))
                if extra is not None:
                    extra(staging)
    except (OSError, SafetensorError, RuntimeError) as error:
        if not is_write_failure(error):
            raise
        raise StorageError(
            f"cannot save the model to {path}: {_first_line(error)}; nothing was replaced "
            f"({'the previous model is intact' if path.exists() else 'no model was written'})"
        ) from None
    return path


def _first_line(error: BaseException) -> str:
    text = getattr(error, "strerror", None) or str(error)
    return text.splitlines()[0] if text else type(error).__name__


def is_write_failure(error: BaseException) -> bool:
    """A failure of the disk, not of the program: full, read-only, quota, I/O (torch and
    safetensors report them as their own exception types with the OS message inside)."""
    import errno

    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EFBIG)
    text = str(error).lower()
    return any(
        marker in text
        for marker in (
            "no space left",
            "disk quota",
            "read-only file system",
            "os error 28",
            "file too large",
        )
    )


def remove_tree(path: str | Path) -> None:
    """Delete a folder (intermediate checkpoints), on rank 0."""
    if is_main_process():
        shutil.rmtree(path, ignore_errors=True)
    wait_for_everyone()


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors checkpoint: a file, or a model folder holding one file
    (``model.safetensors``) or shards listed in ``model.safetensors.index.json``."""
    path = Path(path)
    if path.is_dir():
        if (path / SINGLE_FILE).is_file():
            files = [path / SINGLE_FILE]
        elif (path / SHARD_INDEX).is_file():
            try:
                index = json.loads((path / SHARD_INDEX).read_text(encoding="utf-8"))
                files = [path / name for name in sorted(set(index["weight_map"].values()))]
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, AttributeError) as error:
                raise ModelError(f"{path / SHARD_INDEX} is not a safetensors shard index ({error})") from None
        else:
            raise ModelError(f"'{path}' has no {SINGLE_FILE} or {SHARD_INDEX} (only safetensors are read)")
    else:
        files = [path]
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if not file.is_file():
            raise ModelError(f"checkpoint file not found: {file}")
        try:
            tensors.update(load_file(str(file)))
        except (SafetensorError, OSError) as error:
            raise ModelError(f"{file} is not a readable safetensors file ({error})") from None
    return tensors


def machine_info() -> dict[str, Any]:
    """Where a result was measured: platform, versions, threads, device."""
    import platform

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


def as_stored(value: Any) -> Any:
    """``value`` as it reads back from JSON (tuples become lists), so fresh and resumed runs agree."""
    return json.loads(json.dumps(value, default=str))


def resumable(
    path: str | Path,
    key: Any,
    compute: Callable[[], T],
    *,
    kind: type[T] | None = None,
    workdir: str | Path | None = None,
) -> T:
    """A unit of work that runs once: its stored result when ``key`` matches, else ``compute()``.

    The result is stored at ``path`` beside its key (everything that decides it: settings,
    inputs), as it finishes, so an interrupted study resumes at the first unfinished unit and
    a changed setting recomputes only the units it affects. ``kind`` (a dataclass) is how a
    typed result is written (:func:`~palimpsest.config.to_dict`) and read back
    (:func:`~palimpsest.config.from_dict`); without it the result is plain JSON. Either way
    the value returned is the one read back, so a fresh and a resumed run see the same thing.

    ``workdir`` is where ``compute`` keeps what it resumes from (training checkpoints, a
    tokenizer): it is kept for an interrupted unit of the same key and emptied before a unit
    of another key starts, which must never continue another unit's checkpoint.
    """
    from palimpsest.config import from_dict, to_dict

    path = Path(path)
    key = as_stored(key)
    stored: Any = None
    if path.is_file():
        try:
            stored = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            logger.warning("%s is unreadable; computing its unit again", path)
    if not (isinstance(stored, dict) and stored.get("key") == key and "result" in stored):
        if workdir is not None:
            _claim_workdir(Path(workdir), key)
        value = compute()
        stored = as_stored({"key": key, "result": to_dict(value) if kind is not None else value})
        write_json(path, stored)
    return from_dict(kind, stored["result"]) if kind is not None else stored["result"]


UNIT_KEY = ".unit-key.json"


def _claim_workdir(workdir: Path, key: Any) -> None:
    """Empty ``workdir`` unless it was started by a unit of this ``key``; then record the key."""
    marker = workdir / UNIT_KEY
    try:
        started = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        started = None
    if started != key and workdir.exists():
        if workdir.is_dir():
            logger.info("%s holds work of another unit: starting it over", workdir)
            remove_tree(workdir)
        else:
            workdir.unlink()
    write_json(marker, key)


def check_output_folder(folder: str | Path, *, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that cannot be written: one naming a file, or
    one whose nearest existing parent is not writable. Nothing is created here."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DataError(f"{option} {folder} is a file, not a folder")
    parent = folder
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise DataError(f"{option} {folder}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"{option} {folder}: cannot write in {parent} (permission denied)")
    return folder


class OutputLock:
    """One process writes to an output folder at a time.

    ``FOLDER/.palimpsest.lock`` names the writer: process id, the process's start time and
    the host. A second process that finds the lock of a live writer stops with one line; a
    lock whose writer is gone is taken over — also when its process id now belongs to
    another process (its start time differs), which a process id alone cannot tell after a
    crash and a reboot or a long uptime. A lock of another host is trusted while it is young.
    Taking it again in the same process is a no-op (the outer holder releases it). Only the
    main process of a distributed run takes it.
    """

    NAME = ".palimpsest.lock"
    #: A lock written on another host (a shared file system) is taken over after this long.
    FOREIGN_HOST_SECONDS = 24 * 3600

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / self.NAME
        self.held = False

    def __enter__(self) -> OutputLock:
        if not is_main_process():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _attempt in range(2):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and owner.get("pid") == os.getpid() and self._same_process(owner):
                    return self  # this process holds it already (a command around a run)
                if owner is not None and self._writer_alive(owner):
                    raise DataError(
                        f"another palimpsest process (pid {owner['pid']}) is writing to {self.path.parent}; "
                        "wait for it to finish or stop it"
                    ) from None
                self.path.unlink(missing_ok=True)  # left by a process that is gone
                continue
            os.write(handle, json.dumps(_this_process()).encode())
            os.close(handle)
            self.held = True
            return self
        raise DataError(f"cannot take the lock {self.path}")

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _owner(self) -> dict[str, Any] | None:
        """The writer the lock names; a bare process id is what older versions wrote."""
        try:
            text = self.path.read_text(encoding="utf-8").strip()
        except OSError:
            return None
        try:
            document = json.loads(text)
        except ValueError:
            return None
        if isinstance(document, int) and not isinstance(document, bool):
            return {"pid": document}
        if isinstance(document, dict) and isinstance(document.get("pid"), int):
            return document
        return None

    @staticmethod
    def _same_process(owner: dict[str, Any]) -> bool:
        started = owner.get("started")
        return started is None or started == _process_start(owner["pid"])

    def _writer_alive(self, owner: dict[str, Any]) -> bool:
        import socket
        import time

        host = owner.get("host")
        if host is not None and host != socket.gethostname():
            try:
                age = time.time() - self.path.stat().st_mtime
            except OSError:
                return False
            return age < self.FOREIGN_HOST_SECONDS
        return _alive(owner["pid"]) and self._same_process(owner)


def _this_process() -> dict[str, Any]:
    import socket

    return {"pid": os.getpid(), "started": _process_start(os.getpid()), "host": socket.gethostname()}


def _process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot, Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may hold spaces: count after it
    fields = stat[stat.rindex(")") + 2 :].split()
    try:
        return int(fields[19])  # field 22 of the whole line
    except (IndexError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def default_cache_dir() -> Path:
    """``$PALIMPSEST_CACHE`` or ``~/.cache/palimpsest``: tokenized datasets and tokenizers."""
    return Path(os.environ.get("PALIMPSEST_CACHE", Path.home() / ".cache" / "palimpsest"))
