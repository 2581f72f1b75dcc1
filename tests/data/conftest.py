"""Shared fixtures for the data tests: isolated cache / data roots and tiny image files."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch ~/.cache or ./data from a test."""
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path / "_cache"))
    monkeypatch.delenv("SELFSUP_DATA", raising=False)


def _noise_image(mode: str, size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A random image in PIL ``mode`` with ``size`` = (width, height)."""
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if mode == "RGB":
        return rgb
    if mode == "L":
        return rgb.convert("L")
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    if mode == "RGBA":
        im = rgb.convert("RGBA")
        im.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L"))
        return im
    if mode == "CMYK":
        return rgb.convert("CMYK")
    if mode == "I;16":
        arr = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        return Image.fromarray(arr)  # uint16 -> "I;16"
    raise ValueError(mode)


def _truncated_jpeg_bytes(size: int = 96) -> bytes:
    """The first half of a JPEG file."""
    buf = io.BytesIO()
    _noise_image("RGB", (size, size), seed=1).save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    return data[: len(data) // 2]


@pytest.fixture
def noise_image() -> Callable[..., Image.Image]:
    """``noise_image(mode, (w, h), seed=0)``: a random PIL image in ``mode``."""
    return _noise_image


@pytest.fixture
def truncated_jpeg() -> bytes:
    """Bytes of a JPEG cut in half."""
    return _truncated_jpeg_bytes()
