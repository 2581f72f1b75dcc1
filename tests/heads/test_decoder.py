import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.heads import ConvDecoder, feature_map_shape, spatial_features, tokens_to_grid


def test_tokens_to_grid_drops_the_cls_token_and_keeps_row_major_order():
    n, g, d = 2, 3, 5
    patches = torch.arange(n * g * g * d, dtype=torch.float32).view(n, g * g, d)
    tokens = torch.cat([torch.full((n, 1, d), -1.0), patches], dim=1)
    grid = tokens_to_grid(tokens)
    assert grid.shape == (n, d, g, g)
    assert torch.equal(grid[:, :, 1, 2], patches[:, 1 * g + 2])
    with pytest.raises(ValueError, match="square"):
        tokens_to_grid(torch.zeros(1, 323, 4))  # 308..323 holds no square


@pytest.mark.parametrize("name,size", [("resnet_tiny", 32), ("vit_micro", 32)])
def test_decoder_maps_encoder_features_back_to_image_size(name, size):
    enc = build_backbone(name, image_size=size) if name.startswith("vit") else build_backbone(name)
    dim, h = feature_map_shape(enc, 3, size)
    assert dim == enc.feature_dim
    dec = ConvDecoder(dim, 2, size, hidden_dim=32, min_dim=8).build(h)
    x = torch.randn(4, 3, size, size)
    out = dec(spatial_features(enc, x))
    assert out.shape == (4, 2, size, size)
    out.sum().backward()
    assert all(p.grad is not None for p in dec.parameters())


def test_decoder_handles_non_power_of_two_ratios_and_checks_its_build():
    dec = ConvDecoder(8, 3, 24, hidden_dim=16).build(4)  # 4 -> 8 -> 16, then resized to 24
    assert dec(torch.randn(2, 8, 4, 4)).shape == (2, 3, 24, 24)
    with pytest.raises(ValueError, match="built for"):
        dec.build(8)
    with pytest.raises(RuntimeError, match="build"):
        ConvDecoder(8, 3, 24)(torch.randn(1, 8, 4, 4))
