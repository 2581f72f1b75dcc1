"""A ViT encoder's pooled feature can be the cls token or the mean of its patch tokens, chosen in
the backbone config or at load time for evaluation (MAE's frozen features read better averaged:
docs/methods/mae.md)."""

from __future__ import annotations

import pytest
import torch

from selfsup.config import BackboneConfig
from selfsup.models import load_encoder
from selfsup.models.encoders import build_encoder


def _meta(**backbone):
    return {"backbone": BackboneConfig(name="vit_micro", patch_size=4, **backbone).model_dump(
        mode="json"), "image_size": 16, "in_channels": 3}  # fmt: skip


def test_the_config_picks_cls_or_the_patch_token_mean():
    x = torch.randn(3, 3, 16, 16)
    torch.manual_seed(0)
    cls = build_encoder(_meta()).eval()
    torch.manual_seed(0)
    avg = build_encoder(_meta(global_pool="avg")).eval()
    with torch.no_grad():
        tokens = cls.forward_features(x)
        torch.testing.assert_close(cls(x), tokens[:, 0])
        torch.testing.assert_close(avg(x), tokens[:, 1:].mean(dim=1))


def test_load_time_override_changes_the_feature_and_its_cache_identity():
    defaults = {"image_size": 16, "in_channels": 3}
    x = torch.randn(2, 3, 16, 16)
    base = load_encoder("random:vit_micro", defaults=defaults)
    avg = load_encoder("random:vit_micro", defaults=defaults, global_pool="avg")
    assert base.identity != avg.identity  # cached features never mix the two readouts
    with torch.no_grad():
        tokens = base.encoder.forward_features(x)
        torch.testing.assert_close(avg.encoder(x), tokens[:, 1:].mean(dim=1))  # same weights
        torch.testing.assert_close(base.encoder(x), tokens[:, 0])


def test_global_pool_is_refused_for_a_resnet_and_for_an_unknown_value():
    with pytest.raises(ValueError, match="applies to ViT encoders"):
        load_encoder("random:resnet_tiny", global_pool="avg")
    with pytest.raises(ValueError, match="'cls' or 'avg'"):
        load_encoder("random:vit_micro", global_pool="max")


@pytest.mark.parametrize(
    ("method", "override", "expected"),
    [("mae", None, "avg"), ("mae", "cls", "cls"), ("dino", None, "cls")],
)
def test_a_method_picks_the_pool_its_vit_encoder_is_read_with(method, override, expected):
    """MAE's encoder pools the patch-token mean unless the run says otherwise; methods whose
    loss trains the cls token keep it. Training, encoder.json and loading all agree."""
    from selfsup.config import load_config
    from selfsup.models.methods import build_method, method_encoder_meta

    overrides = ["backbone.name=vit_micro", "backbone.patch_size=4"]
    if override:
        overrides.append(f"backbone.global_pool={override}")
    cfg = load_config(method, None, overrides)
    model = build_method(cfg, 16, 3, None)
    meta = method_encoder_meta(cfg, model, 3)
    assert model.encoder.global_pool == expected
    assert meta["backbone"]["global_pool"] == (override or model.global_pool)  # None: cls
    assert build_encoder(meta).global_pool == expected
