import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.methods import SimCLR, Supervised, get_method, list_methods


def _simclr():
    cfg = SimCLR.Config(proj_hidden_dim=32, proj_out_dim=8)
    return SimCLR(
        build_backbone("resnet_tiny"), cfg, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3
    )


def test_registry():
    assert get_method("simclr") is SimCLR
    assert {m.name for m in list_methods()} >= {"simclr", "supervised"}
    with pytest.raises(KeyError, match="did you mean 'simclr'"):
        get_method("simclrr")


def test_simclr_step_is_deterministic_for_a_generator_and_trains_encoder_and_head():
    m = _simclr()
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    loss, metrics = m(images, None, torch.Generator().manual_seed(0))
    loss2, _ = m(images, None, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.equal(loss, loss2)
    assert 0 < float(metrics["positive_cosine"]) <= 1
    loss.backward()
    assert m.encoder.stages()[0][0].weight.grad is not None
    assert m.projector.layers[0].weight.grad is not None


def test_simclr_views_differ_between_the_two_branches():
    m = _simclr()
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(m.views(images, g, None, 0), m.views(images, g, None, 0))


def test_supervised_needs_labels():
    with pytest.raises(ValueError, match="labeled"):
        Supervised(
            build_backbone("resnet_tiny"),
            Supervised.Config(),
            image_size=16,
            mean=(0.5,) * 3,
            std=(0.25,) * 3,
        )
    m = Supervised(
        build_backbone("resnet_tiny"),
        Supervised.Config(),
        image_size=16,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        num_classes=3,
    )
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    loss, metrics = m(images, torch.tensor([0, 1, 2, 0, 1, 2]), torch.Generator().manual_seed(0))
    assert abs(loss.item() - torch.log(torch.tensor(3.0)).item()) < 1.0
    assert "train_accuracy" in metrics


def test_simclr_positive_retrieval_metric():
    cfg = SimCLR.Config(proj_hidden_dim=32, proj_out_dim=8)
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    # identical views (deterministic pipeline): each view's nearest neighbour is its pair
    same = SimCLR(
        build_backbone("resnet_tiny"),
        cfg,
        image_size=16,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        augment="eval",
    ).eval()
    assert same.pretext_metrics(images, torch.Generator().manual_seed(0)) == {
        "positive_retrieval_top1": 1.0
    }
    # strong random views from an untrained model: not every pair is found
    m = _simclr().eval()
    g = torch.Generator().manual_seed(0)
    a = m.pretext_metrics(images, g)["positive_retrieval_top1"]
    assert 0.0 <= a < 1.0


@pytest.mark.parametrize(
    "name", ["simclr", "barlow_twins", "vicreg", "moco_v2", "moco_v3", "byol", "simsiam"]
)
def test_crop_scale_sets_the_views_crop_and_survives_resizing(name):
    from selfsup.augment.transforms import RandomResizedCrop

    def crop_scales(m) -> list[tuple[float, float]]:  # type: ignore[no-untyped-def]
        return [t.scale for t in m.pipeline.transforms if isinstance(t, RandomResizedCrop)]

    cls = get_method(name)
    kw = dict(image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3)
    default = cls(build_backbone("resnet_tiny"), cls.Config(), **kw)
    assert crop_scales(default) == [(0.08, 1.0)]
    for bad in [(0.0, 1.0), (0.5, 0.2), (0.2, 1.5)]:
        with pytest.raises(ValueError, match="crop_scale"):
            cls.Config(crop_scale=bad)
    m = cls(build_backbone("resnet_tiny"), cls.Config(crop_scale=(0.3, 1.0)), **kw)
    assert crop_scales(m) == [(0.3, 1.0)]
    m.set_view_size(8)  # progressive resizing swaps the crop's size, not its area range
    assert crop_scales(m) == [(0.3, 1.0)]
    x = m.views(torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8),
                torch.Generator().manual_seed(0), None, 0)  # fmt: skip
    assert x.shape == (4, 3, 8, 8)


def test_simclr_multicrop_loss_is_multiview_nt_xent_over_global_and_local_crops():
    from selfsup.losses import multiview_nt_xent

    cfg = SimCLR.Config(proj_hidden_dim=32, proj_out_dim=8, num_local_crops=2, local_crop_size=8)
    torch.manual_seed(0)
    m = SimCLR(
        build_backbone("resnet_tiny"), cfg, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3
    ).eval()  # eval: BatchNorm does not mix the two forwards below
    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    loss, _ = m(images, None, torch.Generator().manual_seed(3))
    # the same draws, by hand: two global views, then two 8 px local crops
    g = torch.Generator().manual_seed(3)
    globals_ = [m.views(images, g, None, 0) for _ in range(2)]
    locals_ = [m.local_pipeline(images, g) for _ in range(2)]
    assert locals_[0].shape == (6, 3, 8, 8)
    z = torch.stack([m.projector(m.encoder(x)) for x in globals_ + locals_])
    expected = multiview_nt_xent(z, cfg.temperature)
    assert torch.allclose(loss, expected, atol=1e-5)
    # and with no local crops the method is the paper's two-view NT-Xent
    assert SimCLR.Config().num_local_crops == 0


def test_simclr_encode_views_joint_shares_batchnorm_statistics_separate_does_not():
    from selfsup.losses import nt_xent

    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)

    def build(encode_views: str) -> SimCLR:
        torch.manual_seed(0)
        cfg = SimCLR.Config(proj_hidden_dim=32, proj_out_dim=8, encode_views=encode_views)
        return SimCLR(
            build_backbone("resnet_tiny"), cfg, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3
        )

    losses = {}
    for mode in ("joint", "separate"):
        m = build(mode)
        batches: list[int] = []
        m.encoder.register_forward_hook(lambda mod, inp, out, b=batches: b.append(len(inp[0])))
        losses[mode], _ = m(images, None, torch.Generator().manual_seed(3))
        assert batches == ([12] if mode == "joint" else [6, 6])
        # the same draws by hand, in train mode (BatchNorm uses each pass's batch statistics)
        ref = build(mode)
        g = torch.Generator().manual_seed(3)
        x1, x2 = ref.views(images, g, None, 0), ref.views(images, g, None, 0)
        if mode == "joint":
            f = ref.encoder(torch.cat([x1, x2]))
        else:
            f = torch.cat([ref.encoder(x1), ref.encoder(x2)])
        z = ref.projector(f)
        assert torch.allclose(losses[mode], nt_xent(z[:6], z[6:], ref.cfg.temperature), atol=1e-5)
    # different BatchNorm statistics, different losses; without batch statistics the same
    assert not torch.allclose(losses["joint"], losses["separate"], atol=1e-4)
    evals = [build(mode).eval()(images, None, torch.Generator().manual_seed(3))[0]
             for mode in ("joint", "separate")]  # fmt: skip
    assert torch.allclose(*evals, atol=1e-5)
    assert SimCLR.Config().encode_views == "joint"
    with pytest.raises(ValueError):
        SimCLR.Config(encode_views="both")


@pytest.mark.parametrize("num_local_crops", [0, 2])
def test_simclr_decoupled_uses_the_dcl_loss_on_the_same_views(num_local_crops):
    from selfsup.losses import multiview_nt_xent

    images = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    results = {}
    for decoupled in (False, True):
        torch.manual_seed(0)
        cfg = SimCLR.Config(proj_hidden_dim=32, proj_out_dim=8, decoupled=decoupled,
                            num_local_crops=num_local_crops, local_crop_size=8)  # fmt: skip
        m = SimCLR(
            build_backbone("resnet_tiny"), cfg, image_size=16, mean=(0.5,) * 3, std=(0.25,) * 3
        ).eval()
        results[decoupled], _ = m(images, None, torch.Generator().manual_seed(3))
    # the same draws and weights by hand, scored with the decoupled loss
    g = torch.Generator().manual_seed(3)
    views = [m.views(images, g, None, 0) for _ in range(2)]
    views += [m.local_pipeline(images, g) for _ in range(num_local_crops)]
    z = torch.stack([m.projector(m.encoder(x)) for x in views])
    expected = multiview_nt_xent(z, m.cfg.temperature, decoupled=True)
    assert torch.allclose(results[True], expected, atol=1e-5)
    assert not torch.allclose(results[True], results[False], atol=1e-3)
