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


def test_channels_last_out_changes_the_layout_not_the_values():
    torch.manual_seed(0)
    plain = ConvDecoder(8, 40, 16, hidden_dim=16, min_dim=8).build(4)
    rows = ConvDecoder(8, 40, 16, hidden_dim=16, min_dim=8, channels_last_out=True).build(4)
    rows.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    a, b = plain(x), rows(x)
    assert a.is_contiguous() and not b.is_contiguous()
    assert b.is_contiguous(memory_format=torch.channels_last)  # one row of 40 per pixel
    assert torch.allclose(a, b, atol=1e-5)
    g = torch.randn_like(a)
    (ga,) = torch.autograd.grad(a, x, g)
    (gb,) = torch.autograd.grad(b, x, g)
    assert torch.allclose(ga, gb, atol=1e-5)


def test_lab_methods_classify_colour_bins_from_channels_last_logits_in_float32():
    from selfsup.backbones.channel_split import build_channel_split
    from selfsup.methods import Colorization, SplitBrain

    kw = {"image_size": 16, "mean": (0.5,) * 3, "std": (0.25,) * 3}

    def colorization(**cfg) -> Colorization:
        enc = build_backbone("resnet_tiny", in_channels=1)
        return Colorization(enc, Colorization.Config(decoder_dim=32, **cfg), **kw)

    col = colorization()
    sb = SplitBrain(build_channel_split("resnet_tiny", (1, 2)),
                    SplitBrain.Config(decoder_dim=32), **kw)  # fmt: skip
    lab = torch.randn(2, 3, 16, 16)  # fp32, NCHW throughout the encoders
    for out in (col.predict(lab), *sb.predict(lab)):
        assert out.shape[1] > 2 and out.is_contiguous(memory_format=torch.channels_last)
    # regression: 2 channels, NCHW like its targets
    assert colorization(mode="regression").predict(lab).is_contiguous()
