"""ONNX export: the graph run by onnxruntime matches the torch encoder (relative difference
< 1e-3), with the normalisation inside, a dynamic batch (and H, W for CNNs), opset 18."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from selfsup import cli
from selfsup.backbones import build_backbone
from selfsup.config import BackboneConfig
from selfsup.errors import MissingExtraError
from selfsup.export import ONNX_OPSET, export_onnx
from selfsup.models import Encoder, encoder_meta

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _saved_encoder(tmp_path: Path, name: str, in_channels: int = 3, input_space: str = "rgb",
                   size: int = 32, **kwargs) -> Path:  # fmt: skip
    torch.manual_seed(0)
    backbone = build_backbone(name, in_channels=in_channels, **kwargs)
    meta = encoder_meta(
        BackboneConfig(name=name, **kwargs), image_size=size, in_channels=in_channels,
        normalize="imagenet", method="test", feature_dim=backbone.feature_dim,
        input_space=input_space,
    )  # fmt: skip
    return Encoder(backbone, meta).save_pretrained(tmp_path / f"{name}-{input_space}")


def _onnx_features(path: Path, images: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (features,) = session.run(None, {"images": images.numpy()})
    return features


def _relative(got: np.ndarray, want: torch.Tensor) -> float:
    want_np = want.numpy()
    return float(np.abs(got - want_np).max() / np.abs(want_np).max())


def _dims(value_info) -> list:  # type: ignore[no-untyped-def]
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_resnet_graph_matches_torch_at_any_batch_and_size(tmp_path: Path) -> None:
    saved = _saved_encoder(tmp_path, "resnet_tiny")
    (path,) = export_onnx(saved, tmp_path / "enc.onnx")
    model = onnx.load(str(path))
    assert model.opset_import[0].version == ONNX_OPSET
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("images", "features")
    assert _dims(inp) == ["batch", 3, "height", "width"] and _dims(out) == ["batch", 128]
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["selfsup.encoder"])["feature_dim"] == 128
    encoder = Encoder.from_pretrained(saved)
    for shape in [(1, 3, 32, 32), (7, 3, 32, 32), (2, 3, 48, 40)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            want = encoder(x)
        assert _relative(_onnx_features(path, x), want) < 1e-3


def test_vit_graph_has_a_dynamic_batch_and_its_training_size(tmp_path: Path) -> None:
    saved = _saved_encoder(tmp_path, "vit_tiny", size=32, patch_size=8)
    (path,) = export_onnx(saved, tmp_path / "vit")  # the suffix is added
    assert path.name == "vit.onnx"
    assert _dims(onnx.load(str(path)).graph.input[0]) == ["batch", 3, 32, 32]
    encoder = Encoder.from_pretrained(saved)
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert _relative(_onnx_features(path, x), encoder(x)) < 1e-3


def test_lab_encoder_converts_inside_the_graph(tmp_path: Path) -> None:
    saved = _saved_encoder(tmp_path, "resnet_tiny", in_channels=1, input_space="lab_l")
    (path,) = export_onnx(saved, tmp_path / "lab.onnx")
    encoder = Encoder.from_pretrained(saved)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert _relative(_onnx_features(path, x), encoder(x)) < 1e-3


def test_cli_export_onnx_and_missing_extra(tmp_path: Path, monkeypatch, capsys) -> None:
    saved = _saved_encoder(tmp_path, "resnet_tiny")
    out = tmp_path / "cli.onnx"
    assert cli.main(["export", str(saved), "--format", "onnx", "--out", str(out)]) == 0
    assert out.is_file() and f"wrote {out}" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtraError, match=r'pip install "selfsup\[onnx\]"'):
        export_onnx(saved, tmp_path / "again.onnx")
    assert cli.main(["export", str(saved), "--format", "onnx", "--out", str(out)]) == 1
    assert "selfsup[onnx]" in capsys.readouterr().err
