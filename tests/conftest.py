"""Shared fixtures: small data sets made on the fly (nothing is downloaded)."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import make_pattern_images


@pytest.fixture
def one_thread():
    """One torch thread for the test: small tensors run faster, and far steadier on a shared
    CPU. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path_factory.getbasetemp() / "selfsup-cache"))


@pytest.fixture
def bf16_cpu(monkeypatch):
    """precision=auto picks bf16 here, as on a CPU with native bf16 (SELFSUP_FORCE_BF16=1)."""
    monkeypatch.setenv("SELFSUP_FORCE_BF16", "1")


@pytest.fixture
def tiny_npz(tmp_path):
    """A labeled .npz of 64 RGB 16x16 images in 4 classes; returns its path."""
    images, labels = make_pattern_images(64)
    path = tmp_path / "tiny.npz"
    np.savez(path, images=images, labels=labels, classes=np.array(["a", "b", "c", "d"]))
    return path
