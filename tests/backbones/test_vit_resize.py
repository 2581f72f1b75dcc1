"""ViT inputs other than the native size: the position embedding is interpolated (DINO's local
crops), while the native size computes exactly what it always did."""

import pytest
import torch

from selfsup.backbones import VisionTransformer


def _vit(pos_embed: str = "sincos") -> VisionTransformer:
    torch.manual_seed(0)
    return VisionTransformer(
        image_size=32, patch_size=4, embed_dim=32, depth=1, num_heads=2, pos_embed=pos_embed
    ).eval()


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_native_size_is_unchanged(pos_embed):
    vit = _vit(pos_embed)
    assert vit.patch_embed.pos_embed_for((8, 8)) is vit.pos_embed
    x = torch.randn(2, 3, 32, 32)
    expected = vit.patch_embed.proj(x).flatten(2).transpose(1, 2) + vit.pos_embed[:, 1:]
    assert torch.equal(vit.embed(x), expected)


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_smaller_and_non_square_inputs_use_an_interpolated_embedding(pos_embed):
    vit = _vit(pos_embed)
    tokens = vit.forward_features(torch.randn(3, 3, 16, 16))
    assert tokens.shape == (3, 1 + 16, 32)
    assert vit(torch.randn(2, 3, 16, 24)).shape == (2, 32)
    pe = vit.patch_embed.pos_embed_for((4, 4))
    assert pe.shape == (1, 17, 32)
    assert torch.equal(pe[:, :1], vit.pos_embed[:, :1])  # cls row kept
    # bicubic resize of a constant-per-channel grid is that constant: a sanity check of layout
    with torch.no_grad():
        vit.patch_embed.pos_embed.copy_(torch.arange(32.0).expand(1, 65, 32))
    resized = vit.patch_embed.pos_embed_for((4, 6))
    torch.testing.assert_close(resized[0, 1:], torch.arange(32.0).expand(24, 32))


def test_learned_embedding_gets_gradient_from_a_small_input():
    vit = _vit("learned").train()
    vit(torch.randn(2, 3, 16, 16)).sum().backward()
    assert vit.patch_embed.pos_embed.grad is not None
    assert vit.patch_embed.pos_embed.grad[:, 1:].abs().sum() > 0


def test_sizes_not_divisible_by_the_patch_size_are_refused():
    with pytest.raises(ValueError, match="patch size"):
        _vit()(torch.randn(1, 3, 18, 16))
