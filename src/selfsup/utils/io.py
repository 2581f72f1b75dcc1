"""File I/O: weights as safetensors, JSON, checkpoints and the layout of a run directory.

Checkpoints keep weights as safetensors and the rest as ``weights_only`` tensors and JSON.

Layout of a run directory::

    RUN/config.yaml                 the validated config
    RUN/metrics.jsonl               one JSON object per logged step / evaluation
    RUN/checkpoints/step_00001200/  model.safetensors  (method: encoder + heads + buffers)
                                    encoder.safetensors (the encoder alone)
                                    train_state.pt      (optimizer, scaler, RNG; weights_only)
                                    meta.json           (step, epoch, method, backbone, version)
    RUN/checkpoints/latest          name of the newest complete checkpoint
    RUN/encoder.safetensors + encoder.json   the final encoder, ready for evaluation/export

Checkpoint directories are written under a temporary name and renamed when complete, so a
crash mid-write never leaves a half-written checkpoint behind ``latest``; ``meta.json`` records
the other files' sizes, so a torn file is noticed and an older complete checkpoint used.
Loading never unpickles code (:func:`load_safetensors`, :func:`load_tensors`).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from selfsup._version import __version__
from selfsup.errors import SelfsupError

CHECKPOINT_FORMAT = 1


def _contiguous_state(module: nn.Module) -> dict[str, torch.Tensor]:
    state = module.state_dict()
    # safetensors refuses shared storage; clone tensors that alias each other.
    seen: set[int] = set()
    out = {}
    for key, value in state.items():
        t = value.detach()
        ptr = t.untyped_storage().data_ptr() if t.numel() else -1
        if ptr in seen and ptr != -1:
            t = t.clone()
        seen.add(ptr)
        out[key] = t.contiguous().cpu()
    return out


def save_weights(module: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Write a module's state dict as safetensors (atomic: temp file + rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(_contiguous_state(module), str(tmp), metadata=metadata)
    _fsync(tmp)
    os.replace(tmp, path)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically (temp file, fsync, rename)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointWriteError(SelfsupError):
    """A checkpoint could not be written (e.g. the disk is full); the previous one is kept."""


CHECKPOINT_FILES = ("model.safetensors", "encoder.safetensors", "train_state.pt")
"""The files of a checkpoint directory besides ``meta.json`` (which lists their sizes)."""


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    encoder: nn.Module,
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` atomically, update ``latest`` and prune old ones.

    The files go to a hidden ``.step_XXXXXXXX.partial`` directory, are fsynced, and
    ``meta.json`` (with every other file's size) is written last; the directory is then renamed
    into place and ``latest`` moved to it. A process killed at any point leaves the previous
    checkpoint complete and ``latest`` (or, failing that, :func:`latest_checkpoint`'s scan)
    pointing at a complete one. Re-saving a step moves the old directory aside before the new
    one takes its name; pruning renames before deleting. A write that fails (a full disk)
    removes its partial directory and raises :class:`CheckpointWriteError`, naming the
    checkpoint that is kept.
    """
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(root)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".{name}.partial"
    try:
        tmp.mkdir()
        save_weights(model, tmp / "model.safetensors")
        save_weights(encoder, tmp / "encoder.safetensors")
        torch.save(train_state, tmp / "train_state.pt")
        _fsync(tmp / "train_state.pt")
        sizes = {f: (tmp / f).stat().st_size for f in CHECKPOINT_FILES}
        write_json(
            tmp / "meta.json",
            {**meta, "step": step, "format": CHECKPOINT_FORMAT, "selfsup_version": __version__,
             "files": sizes},
        )  # fmt: skip
        _fsync_dir(tmp)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)  # give the space back
        kept = latest_checkpoint(run_dir)
        full = " (the disk is full)" if err.errno in (errno.ENOSPC, errno.EDQUOT) else ""
        raise CheckpointWriteError(
            f"could not write checkpoint {name} in {root}: {err.strerror or err}{full}. "
            + (
                f"The previous checkpoint {kept.name} is kept; "
                if kept
                else "No checkpoint is kept; "
            )
            + "free some space and continue with --resume."
        ) from err
    if final.exists():  # the same step again (e.g. resuming a finished run)
        old = root / f".{name}.old"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    latest_tmp = root / "latest.tmp"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, root / "latest")
    _fsync_dir(root)
    _prune(root, keep_last)
    return final


def _fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable (POSIX; elsewhere a no-op)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_leftovers(root: Path) -> None:
    """Remove what a killed write or prune left behind (hidden ``.step_*`` directories)."""
    for leftover in root.glob(".step_*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        doomed = root / f".{old.name}.deleting"  # never a half-deleted step_* directory
        os.replace(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint directory ``path`` is not complete, or None when it is: every file
    present with the size ``meta.json`` recorded (a torn or truncated file is noticed)."""
    try:
        meta = json.loads((path / "meta.json").read_text())
    except (OSError, json.JSONDecodeError) as err:
        return f"meta.json unreadable ({err})"
    sizes = meta.get("files") or dict.fromkeys(CHECKPOINT_FILES)  # older: presence only
    for name, size in sizes.items():
        try:
            actual = (path / name).stat().st_size
        except OSError:
            return f"{name} missing"
        if size is not None and actual != size:
            return f"{name} has {actual} bytes, {size} were written"
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run (:func:`checkpoint_problem`), or
    None: the one ``latest`` names, else the newest complete ``step_*``."""
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    try:
        candidate = root / pointer.read_text().strip()
    except OSError:
        candidate = None
    if candidate is not None and candidate.name and checkpoint_problem(candidate) is None:
        return candidate
    for path in sorted(root.glob("step_*"), reverse=True):
        if path.is_dir() and checkpoint_problem(path) is None:
            return path
    return None


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file. Anything else is refused with a ``ValueError`` that
    says what the file looks like: selfsup never unpickles weights (loading a pickle, such as
    a ``torch.save`` file, can run any code the file carries)."""
    path = Path(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        kind = (
            "a zip archive (torch.save)" if head.startswith(b"PK")
            else "a Python pickle" if head[:1] == b"\x80"
            else "not a safetensors file"
        )  # fmt: skip
        raise ValueError(
            f"{path}: refusing to load: {kind}, not safetensors. selfsup loads weights only "
            "from safetensors files, because unpickling a file can run code it carries. "
            "Convert a trusted file with safetensors.torch.save_file(state_dict, ...)."
        )
    try:
        return load_file(str(path))
    except Exception as err:  # noqa: BLE001 - a torn or malformed file
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err


def load_tensors(path: Path) -> Any:
    """A ``torch.save`` file of tensors and plain containers (``torch.load(weights_only=True)``);
    a file carrying any other pickled object (which could run code) is refused with a
    ``ValueError``."""
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise ValueError(
            f"{path}: refusing to load: it holds pickled Python objects other than tensors and "
            f"plain containers, which could run code when loaded ({first})"
        ) from None


def load_checkpoint(path: Path, model: nn.Module, expected: dict[str, Any]) -> dict[str, Any]:
    """Load weights into ``model`` and return ``{"meta": ..., "train_state": ...}``.

    ``expected`` holds meta fields (method, backbone) that must match; a mismatch is a
    ``ValueError`` naming what differs. Nothing here unpickles code: weights come from
    safetensors (:func:`load_safetensors`) and the rest from ``torch.load(weights_only=True)``
    (:func:`load_tensors`); a file carrying a pickle payload is refused.
    """
    meta = json.loads((path / "meta.json").read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path}: checkpoint format {meta.get('format')} is not supported "
            f"(this selfsup writes format {CHECKPOINT_FORMAT})"
        )
    for key, value in expected.items():
        if meta.get(key) != value:
            raise ValueError(
                f"{path}: checkpoint {key} is {meta.get(key)!r} but this run has {value!r}"
            )
    state = load_safetensors(path / "model.safetensors")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit this model (missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]})"
        )
    train_state = load_tensors(path / "train_state.pt")
    return {"meta": meta, "train_state": train_state}


def read_json(path: Path) -> Any:
    """The JSON document in ``path``."""
    return json.loads(Path(path).read_text())


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's SHA-256: changes when the file's bytes change."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
