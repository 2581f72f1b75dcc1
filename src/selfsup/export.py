"""Export a trained encoder for downstream use."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from selfsup.models import load_encoder


def export_encoder(spec: str, out: str | Path, fmt: str = "selfsup") -> list[Path]:
    """Write the encoder of ``spec`` (run dir, checkpoint or safetensors file) to ``out``.

    Formats:
        ``selfsup``: ``out`` (.safetensors) plus ``out`` with ``.json`` — the architecture meta
        that :func:`selfsup.models.load_encoder` needs.
        ``torchvision`` / ``timm``: a safetensors state dict with the library's own key names
        (classifier removed), loadable with ``model.load_state_dict(sd, strict=False)``; only
        for encoders built from that library (``torchvision:NAME`` / ``timm:NAME``).

    Returns:
        The paths written.
    """
    loaded = load_encoder(spec)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix != ".safetensors":
        out = out.with_suffix(".safetensors")
    name = loaded.meta["backbone"]["name"]
    if fmt == "selfsup":
        state = {k: v.contiguous() for k, v in loaded.encoder.state_dict().items()}
        save_file(state, str(out))
        meta_path = out.with_suffix(".json")
        meta_path.write_text(json.dumps(loaded.meta, indent=2))
        return [out, meta_path]
    if not name.startswith(f"{fmt}:"):
        raise ValueError(
            f"--format {fmt} needs an encoder built from {fmt} (backbone.name={fmt}:...); "
            f"this one is {name!r}. Use --format selfsup."
        )
    state = {k: v.contiguous() for k, v in loaded.encoder.export_state_dict().items()}
    save_file(state, str(out), metadata={"architecture": name.split(":", 1)[1]})
    return [out]
