import numpy as np
import torch

from selfsup.backbones import build_backbone
from selfsup.data import ImageSource
from selfsup.evaluate import cached_features, extract_features


def _source(n=10):
    rng = np.random.default_rng(0)
    return ImageSource(
        images=rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8),
        labels=np.arange(n) % 2,
        classes=None,
        name="t",
        skipped=[],
    )


def test_features_are_extracted_once_then_read_from_cache(tmp_path):
    enc = build_backbone("resnet_tiny")
    src = _source()
    calls = []
    original = enc.forward
    enc.forward = lambda x: calls.append(len(x)) or original(x)
    kw = dict(
        image_size=16,
        normalize="cifar10",
        in_channels=3,
        cache_dir=tmp_path,
        precision="fp32",
        batch_size=4,
    )
    a = cached_features(enc, "id1", src, "tiny", **kw)
    assert a.shape == (10, enc.feature_dim) and sum(calls) == 10
    b = cached_features(enc, "id1", src, "tiny", **kw)
    assert sum(calls) == 10 and torch.equal(a, b)
    cached_features(enc, "id2", src, "tiny", **kw)  # other weights -> new extraction
    assert sum(calls) == 20


def test_grey_data_feeds_an_rgb_encoder():
    src = _source()
    grey = ImageSource(
        images=src.images[..., :1].copy(), labels=src.labels, classes=None, name="g", skipped=[]
    )
    feats = extract_features(
        build_backbone("resnet_tiny"),
        grey,
        image_size=16,
        normalize="cifar10",
        in_channels=3,
        precision="fp32",
    )
    assert feats.shape == (10, 128) and torch.isfinite(feats).all()
