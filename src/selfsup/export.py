"""Export a trained encoder for downstream use: safetensors (selfsup, torchvision or timm key
names), a ``save_pretrained`` directory, or an ONNX graph."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from selfsup.errors import MissingExtraError
from selfsup.models import Encoder, load_encoder

EXPORT_FORMATS = ("selfsup", "torchvision", "timm", "pretrained", "onnx")
ONNX_OPSET = 18
"""The ONNX opset of exported graphs (supported by onnxruntime >= 1.14 and most runtimes)."""
ONNX_TOLERANCE = 1e-3
"""Largest relative difference (``max |onnx - torch| / max |torch|``) an export accepts."""
_ONNX_MISSING = (
    'ONNX export needs the optional dependencies onnx and onnxruntime: pip install "selfsup[onnx]"'
)
_TRANSFORMER_NAMES = ("vit", "deit", "swin", "beit", "eva", "cait", "xcit", "mvit", "maxvit")


def export_encoder(spec: str, out: str | Path, fmt: str = "selfsup") -> list[Path]:
    """Write the encoder of ``spec`` (run dir, checkpoint or safetensors file) to ``out``.

    Formats:
        ``selfsup``: ``out`` (.safetensors) plus ``out`` with ``.json`` — the architecture meta
        that :func:`selfsup.models.load_encoder` needs.
        ``torchvision`` / ``timm``: a safetensors state dict with the library's own key names
        (classifier removed), loadable with ``model.load_state_dict(sd, strict=False)``, or
        with ``strict=True`` into a model whose classifier is removed (``num_classes=0`` in
        timm, ``model.fc = nn.Identity()`` in torchvision) and that takes the encoder's input
        channels (``in_chans`` in timm; a replaced first convolution in torchvision); only
        for encoders built from that library (``torchvision:NAME`` / ``timm:NAME``).
        ``pretrained``: the directory ``out`` written by
        :meth:`selfsup.Encoder.save_pretrained` (``config.json`` + ``model.safetensors``).
        ``onnx``: the graph of :func:`export_onnx`.

    Returns:
        The paths written.
    """
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {EXPORT_FORMATS}")
    if fmt == "onnx":
        return export_onnx(spec, out)
    if fmt == "pretrained":
        directory = Encoder.from_pretrained(spec).save_pretrained(out)
        return [directory / "config.json", directory / "model.safetensors"]
    loaded = load_encoder(spec, eval_view=False)  # the bare backbone: its weights, as trained
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


def _onnx_modules() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise MissingExtraError(_ONNX_MISSING) from e
    return onnx, onnxruntime


def is_transformer(meta: dict[str, Any]) -> bool:
    """Whether an encoder's backbone is a vision transformer (fixed input size in ONNX)."""
    name = str(meta["backbone"]["name"]).lower().split(":", 1)[-1]
    return any(name.startswith(t) or f"_{t}" in name for t in _TRANSFORMER_NAMES)


def export_onnx(spec: str | Path, out: str | Path, *, opset: int = ONNX_OPSET) -> list[Path]:
    """Export the encoder of ``spec`` (anything :meth:`selfsup.Encoder.from_pretrained` reads)
    as an ONNX graph: input ``images`` float32 ``(N, 3, H, W)`` in ``[0, 1]``, output
    ``features`` float32 ``(N, D)``; the normalisation (or Lab conversion) is inside the graph.
    The batch is dynamic; ``H`` and ``W`` too for convolutional backbones (a vision
    transformer's graph takes its training size ``S`` only). The encoder's meta is stored in
    the model's metadata (``selfsup.encoder``, JSON).

    The graph is checked before this returns: onnxruntime runs it on random images (another
    batch size and, when dynamic, another image size) and its features must match the torch
    encoder's within :data:`ONNX_TOLERANCE` relative difference.

    Raises :class:`~selfsup.errors.MissingExtraError` without onnx/onnxruntime.
    """
    onnx, ort = _onnx_modules()
    encoder = Encoder.from_pretrained(spec)
    out = Path(out)
    if out.suffix != ".onnx":
        out = out.with_suffix(".onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    size = encoder.image_size
    spatial = not is_transformer(encoder.meta)
    axes = {0: "batch", 2: "height", 3: "width"} if spatial else {0: "batch"}
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # the legacy exporter
        # shape checks of the forward pass are constants of the graph (3 input channels)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            encoder,
            (example,),
            str(out),
            input_names=["images"],
            output_names=["features"],
            dynamic_axes={"images": axes, "features": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    model = onnx.load(str(out))
    for key, value in {
        "selfsup.encoder": json.dumps(encoder.meta),
        "selfsup.input": "images: float32 (N, 3, H, W) RGB in [0, 1]",
        "selfsup.output": f"features: float32 (N, {encoder.feature_dim})",
    }.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    sizes = [size, size + 16] if spatial else [size]
    for batch, side in [(3, s) for s in sizes]:
        x = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(side))
        difference = onnx_difference(out, encoder, x)
        if not difference <= ONNX_TOLERANCE:
            out.unlink()
            raise ValueError(
                f"the ONNX graph of {spec} gives features {difference:.2e} away from the torch "
                f"encoder's at {batch}x3x{side}x{side} (relative; limit {ONNX_TOLERANCE})"
            )
    return [out]


def onnx_difference(path: str | Path, encoder: torch.nn.Module, images: torch.Tensor) -> float:
    """``max |f_onnx - f_torch| / max |f_torch|`` of an exported graph (run by onnxruntime on
    the CPU) and the torch encoder on float ``images`` (N, 3, H, W)."""
    _, ort = _onnx_modules()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(["features"], {"images": images.numpy().astype(np.float32)})
    with torch.no_grad():
        want = encoder.eval()(images).numpy()
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-12))
