import json

import pytest
import torch
from safetensors.torch import save_file

from selfsup.backbones import build_backbone
from selfsup.backbones.channel_split import ChannelSplitBackbone, build_channel_split
from selfsup.config import BackboneConfig
from selfsup.evaluate import build_encoder, encoder_meta, load_encoder
from selfsup.models import make_encoder


def _split(name="resnet_tiny", **kwargs):
    torch.manual_seed(0)
    return build_channel_split(name, (1, 2), **kwargs)


def test_forward_is_the_concatenation_of_the_branches_on_their_channels():
    enc = _split().eval()
    assert enc.in_channels == 3 and enc.feature_dim == 128 + 128
    x = torch.randn(4, 3, 16, 16)
    f = enc(x)
    assert f.shape == (4, 256)
    assert torch.equal(f[:, :128], enc.branches[0](x[:, :1]))
    assert torch.equal(f[:, 128:], enc.branches[1](x[:, 1:]))
    fmap = enc.forward_features(x)
    assert fmap.shape == (4, 256, 2, 2)
    assert torch.equal(fmap[:, 128:], enc.branches[1].forward_features(x[:, 1:]))
    # a branch only ever sees its own channels
    y = x.clone()
    y[:, 1:] += 1.0
    assert torch.equal(enc(y)[:, :128], f[:, :128]) and not torch.equal(enc(y)[:, 128:], f[:, 128:])
    with pytest.raises(ValueError, match="3 input channels"):
        enc(torch.randn(1, 4, 16, 16))


def test_vit_branches_concatenate_tokens():
    enc = _split("vit_micro", image_size=16, patch_size=4).eval()
    x = torch.randn(2, 3, 16, 16)
    tokens = enc.forward_features(x)
    d = enc.branches[0].feature_dim
    assert tokens.shape == (2, 1 + 16, 2 * d)
    assert enc(x).shape == (2, 2 * d)


def test_stages_hold_every_parameter_exactly_once():
    for enc in (_split(), _split("vit_micro", image_size=16, patch_size=4)):
        stages = enc.stages()
        assert len(stages) == len(enc.branches[0].stages())
        ids = [id(p) for s in stages for p in s.parameters()]
        assert len(ids) == len(set(ids))
        assert set(ids) == {id(p) for p in enc.parameters()}
    # branches of different depth: the shorter simply has no later stages
    odd = ChannelSplitBackbone(
        [
            build_backbone("vit_micro", image_size=16, patch_size=4, in_channels=1),
            build_backbone("resnet_tiny", in_channels=2),
        ],
        (1, 2),
    )
    ids = [id(p) for s in odd.stages() for p in s.parameters()]
    assert len(ids) == len(set(ids)) == len(list(odd.parameters()))


def test_checks_and_export_state_dict():
    with pytest.raises(ValueError, match="branch 1 takes 3 channels"):
        ChannelSplitBackbone(
            [build_backbone("resnet_tiny", in_channels=1), build_backbone("resnet_tiny")], (1, 2)
        )
    with pytest.raises(ValueError, match="2 branches for 1"):
        ChannelSplitBackbone([build_backbone("resnet_tiny", in_channels=1)] * 2, (1,))
    enc = _split()
    exported, own = enc.export_state_dict(), enc.state_dict()
    assert exported.keys() == own.keys()
    assert all(torch.equal(exported[k], own[k]) for k in own)
    with pytest.raises(ValueError, match="do not add up"):
        make_encoder(
            BackboneConfig(name="resnet_tiny"), image_size=16, in_channels=4, channel_groups=(1, 2)
        )


def test_rebuilt_from_the_encoder_meta_and_loaded(tmp_path):
    bcfg = BackboneConfig(name="resnet_tiny", width=0.125)
    torch.manual_seed(0)
    enc = make_encoder(bcfg, image_size=16, in_channels=3, channel_groups=(1, 2))
    assert isinstance(enc, ChannelSplitBackbone) and enc.feature_dim == 2 * 64
    meta = encoder_meta(
        bcfg,
        image_size=16,
        in_channels=3,
        normalize="cifar10",
        method="split_brain",
        feature_dim=enc.feature_dim,
        input_space="lab",
        data_channels=3,
        channel_groups=(1, 2),
    )
    assert meta["channel_groups"] == [1, 2] and "data_channels" not in meta
    rebuilt = build_encoder(meta)
    assert isinstance(rebuilt, ChannelSplitBackbone) and rebuilt.groups == (1, 2)
    rebuilt.load_state_dict(enc.state_dict())  # strict: same keys and shapes
    save_file(
        {k: v.contiguous() for k, v in enc.state_dict().items()},
        str(tmp_path / "encoder.safetensors"),
    )
    (tmp_path / "encoder.json").write_text(json.dumps(meta))
    loaded = load_encoder(str(tmp_path))
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(loaded.encoder.eval()(x), enc.eval()(x))
    assert loaded.meta["input_space"] == "lab"
    rand = load_encoder(f"random:{tmp_path}")
    assert isinstance(rand.encoder, ChannelSplitBackbone) and rand.meta["input_space"] == "lab"
