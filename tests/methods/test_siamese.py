"""Common tests of the two-view non-contrastive methods: BYOL, SimSiam, Barlow Twins, VICReg."""

import importlib.util
from pathlib import Path

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.config import load_config
from selfsup.evaluate import knn_accuracy
from selfsup.methods import BYOL, BarlowTwins, SimSiam, VICReg, get_method

MEAN, STD = (0.5,) * 3, (0.25,) * 3
SMALL = {
    "byol": {"proj_hidden_dim": 64, "proj_out_dim": 32, "pred_hidden_dim": 64},
    "simsiam": {"proj_hidden_dim": 64, "proj_out_dim": 32, "pred_hidden_dim": 16, "proj_layers": 2},
    "barlow_twins": {"proj_hidden_dim": 64, "proj_out_dim": 64},
    "vicreg": {"proj_hidden_dim": 64, "proj_out_dim": 64},
}
NAMES = list(SMALL)


pytestmark = pytest.mark.usefixtures("one_thread")


def _method(name, seed=0, **overrides):
    torch.manual_seed(seed)
    cls = get_method(name)
    cfg = cls.Config(**{**SMALL[name], **overrides})
    return cls(build_backbone("resnet_tiny"), cfg, image_size=16, mean=MEAN, std=STD)


def _pattern_images(n, seed):
    """(uint8 (n, 3, 16, 16), labels (n,)) from tests/conftest.py, loaded by path."""
    spec = importlib.util.spec_from_file_location(
        "_selfsup_tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images, labels = module.make_pattern_images(n, seed=seed)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def test_registry_families_and_published_defaults():
    assert get_method("byol") is BYOL and get_method("simsiam") is SimSiam
    assert get_method("barlow_twins") is BarlowTwins and get_method("vicreg") is VICReg
    assert BYOL.family == SimSiam.family == "self-distillation"
    assert BarlowTwins.family == VICReg.family == "redundancy reduction"
    b = BYOL.Config()
    assert (b.proj_hidden_dim, b.proj_out_dim, b.pred_hidden_dim, b.base_momentum) == (
        4096,
        256,
        4096,
        0.99,
    )
    s = SimSiam.Config()
    assert (s.proj_hidden_dim, s.proj_out_dim, s.proj_layers, s.pred_hidden_dim) == (
        2048,
        2048,
        3,
        512,
    )
    bt = BarlowTwins.Config()
    assert (bt.proj_hidden_dim, bt.proj_out_dim, bt.proj_layers, bt.lambd) == (8192, 8192, 3, 5e-3)
    v = VICReg.Config()
    assert (v.proj_hidden_dim, v.proj_out_dim, v.proj_layers) == (8192, 8192, 3)
    assert (v.invariance_weight, v.variance_weight, v.covariance_weight) == (25, 25, 1)
    with pytest.raises(ValueError):
        BYOL.Config(momentum_schedule="linear")


@pytest.mark.parametrize("name", NAMES)
def test_pretext_metric_is_positive_retrieval(name):
    images = torch.randint(0, 256, (16, 3, 16, 16), dtype=torch.uint8)
    # identical views (deterministic pipeline): each first view's nearest is its second view
    torch.manual_seed(0)
    cls = get_method(name)
    same = cls(build_backbone("resnet_tiny"), cls.Config(**SMALL[name]), image_size=16,
               mean=MEAN, std=STD, augment="eval").eval()  # fmt: skip
    g = torch.Generator().manual_seed(0)
    assert same.pretext_metrics(images, g) == {"positive_retrieval_top1": 1.0}
    # strong random views through an untrained model: not every pair is found
    top1 = _method(name).eval().pretext_metrics(images, g)["positive_retrieval_top1"]
    assert 0.0 <= top1 < 1.0


def test_simsiam_projector_ends_in_batchnorm_and_predictor_is_a_bottleneck():
    m = SimSiam(build_backbone("resnet_tiny"), SimSiam.Config(), image_size=16, mean=MEAN, std=STD)
    assert isinstance(m.projector.layers[-1], torch.nn.BatchNorm1d)
    assert [
        layer.out_features for layer in m.predictor.layers if hasattr(layer, "out_features")
    ] == [512, 2048]


@pytest.mark.parametrize("fix", [True, False])
def test_simsiam_predictor_lr_is_held_at_the_peak_only_when_fixed(fix):
    """The paper's fixed predictor rate: through warm-up and cosine decay the predictor's groups
    stay at the peak lr while the encoder's and projector's follow the schedule."""
    from selfsup.config import OptimizerConfig, ScheduleConfig
    from selfsup.train.optim import build_optimizer
    from selfsup.train.schedule import LRSchedule, Progress

    m = _method("simsiam", fix_predictor_lr=fix)
    assert m.fixed_lr() == (("predictor.",) if fix else ())
    opt = build_optimizer(m, OptimizerConfig(name="sgd", lr=0.1, weight_decay=5e-4), 256)
    predictor = {id(p) for p in m.predictor.parameters()}
    kinds = {(all(id(p) in predictor for p in g["params"]),
              any(id(p) in predictor for p in g["params"])) for g in opt.param_groups}  # fmt: skip
    if fix:  # no group mixes the predictor and the rest
        assert kinds == {(True, True), (False, False)}
    schedule = LRSchedule(ScheduleConfig(warmup_epochs=1.0), peak=0.1, warmup=10)
    for step in (0, 5, 50, 99):
        lr = schedule.apply(opt, Progress(step, 100))
        assert lr < 0.1
        for g in opt.param_groups:
            in_predictor = id(g["params"][0]) in predictor
            want = 0.1 if (fix and in_predictor) else lr
            assert g["lr"] == pytest.approx(want)


@pytest.mark.parametrize("name", NAMES)
def test_step_is_deterministic_and_trains_every_trainable_parameter(name):
    m = _method(name)
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    loss, metrics = m(images, None, torch.Generator().manual_seed(0))
    loss2, _ = m(images, None, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert torch.equal(loss, loss2)
    assert {"embedding_spread", "effective_rank"} <= set(metrics)
    assert 1.0 <= float(metrics["effective_rank"]) <= 16
    loss.backward()
    for key, p in m.named_parameters():
        if key.startswith("target."):
            assert not p.requires_grad and p.grad is None, key
        else:
            assert p.requires_grad and p.grad is not None, key
    assert any(k.startswith("target.") for k, _ in m.named_parameters()) == (name == "byol")


@pytest.mark.parametrize(
    "name", [pytest.param("byol", marks=pytest.mark.slow), "simsiam", "barlow_twins", "vicreg"]
)
def test_a_few_dozen_steps_beat_the_untrained_encoder_on_knn(name):
    """Tiny learning test on pattern images: the kNN bank is 192 clean images, the queries 4
    augmented views of 64 held-out images (colour and stripe classes; the untrained encoder
    already separates the clean images, so the augmented queries measure learned invariance)."""
    images, labels = _pattern_images(256, seed=0)
    m = _method(name)

    def knn() -> float:
        m.encoder.eval()
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            bank = m.encoder((images[:192].float() / 255 - 0.5) / 0.25)
            queries = torch.cat([m.encoder(m.views(images[192:], g, None, 0)) for _ in range(4)])
        m.encoder.train()
        return knn_accuracy(bank, labels[:192], queries, labels[192:].repeat(4), ks=(20,))["knn@20"]

    before = knn()
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=1e-4)
    steps = 40
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        batch = images[torch.randperm(192, generator=g)[:32]]
        loss, _ = m(batch, None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_after_step(step, steps)
    after = knn()
    assert after > before + 0.04, (before, after)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kind", ["default", "cifar10_cpu"])
def test_recipes_load(name, kind):
    cfg = load_config(name, f"{name}_{kind}")
    assert cfg.method == name and cfg.backbone.name == "resnet18"
    method_cfg = cfg.method_config()
    published = get_method(name).Config()
    if kind == "default":
        assert method_cfg.proj_hidden_dim == published.proj_hidden_dim
    else:
        # the 20k-image subset, except Barlow Twins (tuned on the 45k/5k split, all images)
        assert cfg.backbone.width == 0.25
        assert cfg.data.subset == (None if name == "barlow_twins" else 20000)
        assert cfg.train.epochs == 5 and cfg.train.batch_size == 256
        assert method_cfg.proj_hidden_dim < published.proj_hidden_dim
