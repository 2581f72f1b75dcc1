import numpy as np
import pytest
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


# --------------------------------------------------------------------------- input spaces
def _hand_l(images_uint8: np.ndarray) -> torch.Tensor:
    """CIE L of (n, H, W, 3) sRGB uint8 images, by hand in float64 (only Y is needed), scaled
    as colorization's encoder sees it: (L - 50) / 50, shape (n, 1, H, W)."""
    c = images_uint8.astype(np.float64) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.212671, 0.715160, 0.072169])
    f = np.where(y > (6 / 29) ** 3, np.cbrt(y), y / (3 * (6 / 29) ** 2) + 4 / 29)
    light = 116 * f - 16
    return torch.from_numpy((light - 50) / 50).float().unsqueeze(1)


def test_l_input_encoder_sees_the_l_channel_of_rgb_data():
    src = _source()
    torch.manual_seed(0)
    enc = build_backbone("resnet_tiny", in_channels=1).eval()
    feats = extract_features(
        enc,
        src,
        image_size=16,
        normalize="cifar10",
        in_channels=1,
        precision="fp32",
        input_space="lab_l",
    )
    with torch.no_grad():
        expected = enc(_hand_l(src.images))
    assert torch.allclose(feats, expected, atol=1e-4)
    # grey data: its grey value is the RGB colour (v, v, v)
    grey = ImageSource(
        images=src.images[..., :1].copy(), labels=src.labels, classes=None, name="g", skipped=[]
    )
    feats = extract_features(
        enc,
        grey,
        image_size=16,
        normalize="cifar10",
        in_channels=1,
        precision="fp32",
        input_space="lab_l",
    )
    with torch.no_grad():
        expected = enc(_hand_l(np.repeat(src.images[..., :1], 3, axis=3)))
    assert torch.allclose(feats, expected, atol=1e-4)
    with pytest.raises(ValueError, match="gives 3 channels"):
        extract_features(
            enc, src, image_size=16, normalize="cifar10", in_channels=1, input_space="lab"
        )


def test_rgb_features_and_cache_keys_are_unchanged(tmp_path):
    import hashlib

    from selfsup.methods.base import NORMALIZATION

    src = _source()
    enc = build_backbone("resnet_tiny").eval()
    kw = dict(image_size=16, normalize="cifar10", in_channels=3, precision="fp32")
    default = extract_features(enc, src, **kw)
    assert torch.equal(extract_features(enc, src, input_space="rgb", **kw), default)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in NORMALIZATION["cifar10"])
    x = torch.from_numpy(src.images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        assert torch.allclose(default, enc((x - mean) / std), atol=1e-5)
    # an rgb encoder's key has no input space (as before input spaces existed), then the
    # resolved precision (features of another precision are other numbers)
    cached_features(enc, "id1", src, "tiny", cache_dir=tmp_path, **kw)
    old_key = hashlib.sha256(b"id1|tiny|10|16|cifar10|3|fp32").hexdigest()[:24]
    assert [p.name for p in tmp_path.glob("*.pt")] == [f"{old_key}.pt"]
    cached_features(enc, "id1", src, "tiny", cache_dir=tmp_path, input_space="lab", **kw)
    assert len(list(tmp_path.glob("*.pt"))) == 2  # another space, another entry


def test_an_old_encoder_json_without_input_space_evaluates_as_rgb(tmp_path):
    import json

    from safetensors.torch import save_file

    from selfsup.evaluate import EvalData, evaluate_encoder, load_encoder

    torch.manual_seed(0)
    enc = build_backbone("resnet_tiny").eval()
    save_file(enc.state_dict(), str(tmp_path / "encoder.safetensors"))
    meta = {
        "backbone": {"name": "resnet_tiny"},
        "image_size": 16,
        "in_channels": 3,
        "normalize": "cifar10",
        "method": "simclr",
        "feature_dim": 128,
    }
    (tmp_path / "encoder.json").write_text(json.dumps(meta))
    loaded = load_encoder(str(tmp_path))
    assert "input_space" not in loaded.meta
    src = _source()
    result = evaluate_encoder(
        str(tmp_path), EvalData(src, src, "t"), cache_dir=tmp_path / "c", knn_k=(3,)
    )
    assert result["input_space"] == "rgb" and 0 <= result["knn@3"] <= 1
    rgb = extract_features(loaded.encoder, src, image_size=16, normalize="cifar10", in_channels=3)
    cached = sorted((tmp_path / "c").glob("*.pt"))
    assert len(cached) == 2  # train and test split
    assert all(torch.allclose(torch.load(c, weights_only=True), rgb) for c in cached)
