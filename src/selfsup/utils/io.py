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
crash mid-write never leaves a half-written checkpoint behind ``latest``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from selfsup._version import __version__

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


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: nn.Module,
    encoder: nn.Module,
    train_state: dict[str, Any],
    meta: dict[str, Any],
    keep_last: int,
) -> Path:
    """Write ``checkpoints/step_XXXXXXXX`` atomically, update ``latest`` and prune old ones."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:08d}"
    final = root / name
    tmp = root / f".{name}.partial"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(model, tmp / "model.safetensors")
    save_weights(encoder, tmp / "encoder.safetensors")
    torch.save(train_state, tmp / "train_state.pt")
    _fsync(tmp / "train_state.pt")
    write_json(
        tmp / "meta.json",
        {**meta, "step": step, "format": CHECKPOINT_FORMAT, "selfsup_version": __version__},
    )
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = root / "latest.tmp"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, root / "latest")
    _prune(root, keep_last)
    return final


def _prune(root: Path, keep_last: int) -> None:
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None."""
    root = run_dir / "checkpoints"
    pointer = root / "latest"
    if pointer.exists():
        candidate = root / pointer.read_text().strip()
        if (candidate / "meta.json").exists():
            return candidate
    complete = sorted(p for p in root.glob("step_*") if (p / "meta.json").exists())
    return complete[-1] if complete else None


def load_checkpoint(path: Path, model: nn.Module, expected: dict[str, Any]) -> dict[str, Any]:
    """Load weights into ``model`` and return ``{"meta": ..., "train_state": ...}``.

    ``expected`` holds meta fields (method, backbone) that must match; a mismatch is a
    ``ValueError`` naming what differs. Nothing here unpickles code: weights come from
    safetensors and the rest from ``torch.load(weights_only=True)``.
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
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit this model (missing {list(missing)[:5]}, "
            f"unexpected {list(unexpected)[:5]})"
        )
    train_state = torch.load(path / "train_state.pt", weights_only=True, map_location="cpu")
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
