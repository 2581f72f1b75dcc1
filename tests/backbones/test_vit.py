import pytest
import torch

from selfsup.backbones import Backbone, VisionTransformer, build_backbone, get_2d_sincos_pos_embed

PRESETS = {
    "vit_micro": (64, 2),
    "vit_tiny": (192, 12),
    "vit_small": (384, 12),
    "vit_base": (768, 12),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets(name: str) -> None:
    dim, depth = PRESETS[name]
    model = build_backbone(name)
    assert isinstance(model, Backbone)
    assert model.feature_dim == model.embed_dim == dim
    assert len(model.blocks) == depth
    assert len(model.stages()) == depth + 1
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def micro(**kwargs) -> VisionTransformer:
    return build_backbone("vit_micro", **kwargs)


def test_attributes_and_features() -> None:
    model = micro(image_size=32, patch_size=8)
    assert model.grid_size == 4
    assert model.num_patches == 16
    assert model.patch_size == 8
    assert model.in_channels == 3
    assert model.forward_features(torch.randn(2, 3, 32, 32)).shape == (2, 17, 64)
    assert model.embed(torch.randn(2, 3, 32, 32)).shape == (2, 16, 64)


def test_forward_tokens_subset_and_identity() -> None:
    model = micro().eval()
    x = torch.randn(2, 3, 32, 32)
    tokens = model.embed(x)
    n, length, dim = tokens.shape
    ids_keep = torch.argsort(torch.rand(n, length), dim=1)[:, :16]
    assert model.forward_tokens(tokens, ids_keep).shape == (2, 17, 64)
    all_ids = torch.arange(length).expand(n, -1)
    torch.testing.assert_close(model.forward_tokens(tokens, all_ids), model.forward_features(x))
    torch.testing.assert_close(model.forward_tokens(tokens, all_ids)[:, 0], model(x))


def test_forward_tokens_gathers_the_right_tokens() -> None:
    # with no blocks the transformer is norm(tokens): gather must pick the indexed tokens
    model = VisionTransformer(embed_dim=64, depth=0, num_heads=2).eval()
    tokens = torch.randn(2, 64, 64)
    ids_keep = torch.tensor([[5, 1, 7], [0, 63, 2]])
    out = model.forward_tokens(tokens, ids_keep)
    expected = model.norm(tokens[torch.arange(2)[:, None], ids_keep])
    torch.testing.assert_close(out[:, 1:], expected)


def test_patchify_roundtrip() -> None:
    model = micro(patch_size=4, in_channels=3)
    imgs = torch.randn(2, 3, 32, 32)
    patches = model.patchify(imgs)
    assert patches.shape == (2, 64, 4 * 4 * 3)
    torch.testing.assert_close(model.unpatchify(patches), imgs)
    # first patch = top-left p x p block, flattened (row, col, channel)
    torch.testing.assert_close(patches[0, 0], imgs[0, :, :4, :4].permute(1, 2, 0).reshape(-1))


def test_sincos_pos_embed() -> None:
    pe = get_2d_sincos_pos_embed(64, 8)
    assert pe.shape == (64, 64)
    assert pe.dtype == torch.float32
    pe_cls = get_2d_sincos_pos_embed(64, 8, cls_token=True)
    assert pe_cls.shape == (65, 64)
    assert torch.all(pe_cls[0] == 0)
    torch.testing.assert_close(pe_cls[1:], pe)
    assert get_2d_sincos_pos_embed(32, (2, 3)).shape == (6, 32)
    with pytest.raises(ValueError):
        get_2d_sincos_pos_embed(30, 4)


def test_sincos_not_trainable_learned_trainable() -> None:
    fixed = micro(pos_embed="sincos")
    assert fixed.pos_embed.shape == (1, 65, 64)
    assert not fixed.pos_embed.requires_grad
    assert all(p is not fixed.pos_embed for p in fixed.parameters())
    assert "patch_embed.pos_embed" in fixed.state_dict()
    torch.testing.assert_close(fixed.pos_embed[0], get_2d_sincos_pos_embed(64, 8, cls_token=True))
    # freezing/unfreezing a stage must not make it trainable
    fixed.stages()[0].requires_grad_(True)
    assert not fixed.pos_embed.requires_grad

    learned = micro(pos_embed="learned")
    assert learned.pos_embed.requires_grad
    assert any(p is learned.pos_embed for p in learned.parameters())
    learned(torch.randn(2, 3, 32, 32)).sum().backward()
    assert learned.pos_embed.grad is not None


def test_global_pool_avg() -> None:
    model = micro(global_pool="avg").eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), model.forward_features(x)[:, 1:].mean(1))


def test_stages_cover_all_parameters() -> None:
    model = micro(pos_embed="learned")
    stages = model.stages()
    assert stages[0] is model.patch_embed
    ids = [id(p) for s in stages for p in s.parameters()]
    assert len(ids) == len(set(ids))
    assert set(ids) == {id(p) for p in model.parameters()}


def test_drop_path_and_bf16() -> None:
    model = micro(drop_path_rate=0.2).train()
    x = torch.randn(2, 3, 32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    y.float().sum().backward()
    assert model.patch_embed.proj.weight.grad is not None


def test_export_state_dict_roundtrip() -> None:
    a, b = micro().eval(), micro().eval()
    b.load_state_dict(a.export_state_dict())
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))


def test_wrong_image_size() -> None:
    # other sizes work with an interpolated position embedding (tests/backbones/test_vit_resize.py)
    # as long as they are multiples of the patch size
    with pytest.raises(ValueError, match="patch size"):
        micro()(torch.randn(1, 3, 30, 30))
    with pytest.raises(ValueError):
        micro(image_size=30, patch_size=4)
