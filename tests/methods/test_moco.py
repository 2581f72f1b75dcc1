"""MoCo v2 (queue) and v3 (in-batch keys, predictor): queue mechanics, momentum wiring, losses
against hand-written InfoNCE, config checks, training end to end and under 2-process DDP."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from synthetic import pattern_tensors as _pattern_images
from two_process import assert_same_loss_curve, final_states, train_single_and_ddp

from selfsup.backbones import build_backbone
from selfsup.cli import main
from selfsup.config import OptimizerConfig, load_config
from selfsup.errors import ConfigError
from selfsup.evaluate import knn_accuracy
from selfsup.methods import MoCoV2, MoCoV3, get_method
from selfsup.methods.moco import moco_v3_loss
from selfsup.train import Trainer
from selfsup.train.optim import build_optimizer

MEAN, STD = (0.5,) * 3, (0.25,) * 3
SMALL = {
    "moco_v2": {"proj_hidden_dim": 32, "proj_out_dim": 16, "queue_size": 32},
    "moco_v3": {"proj_hidden_dim": 32, "proj_out_dim": 16, "pred_hidden_dim": 32},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _method(name, seed=0, backbone="resnet_tiny", **overrides):
    torch.manual_seed(seed)
    cls = get_method(name)
    cfg = cls.Config(**{**SMALL[name], **overrides})
    kwargs = {"image_size": 16, "patch_size": 4} if backbone.startswith("vit") else {}
    return cls(build_backbone(backbone, **kwargs), cfg, image_size=16, mean=MEAN, std=STD)


def _images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)


def _hand_info_nce(q, pos, candidates_per_query, t):
    """-log softmax of the positive, with explicit loops and logsumexp. candidates_per_query(i)
    lists every candidate key (positive included) of query i."""
    total = 0.0
    for i in range(len(q)):
        qi = q[i] / q[i].norm()
        logits = [float(qi @ (c / c.norm())) / t for c in candidates_per_query(i)]
        positive = float(qi @ (pos[i] / pos[i].norm())) / t
        total += -(positive - math.log(sum(math.exp(v) for v in logits)))
    return total / len(q)


# ------------------------------------------------------------------------------ registry


def test_registry_family_and_published_defaults():
    assert get_method("moco_v2") is MoCoV2 and get_method("moco_v3") is MoCoV3
    assert MoCoV2.family == MoCoV3.family == "contrastive"
    v2 = MoCoV2.Config()
    assert (v2.temperature, v2.queue_size, v2.base_momentum, v2.momentum_schedule) == (
        0.2, 4096, 0.99, "constant",
    )  # fmt: skip
    assert (v2.proj_hidden_dim, v2.proj_out_dim, v2.symmetric) == (2048, 128, False)
    v3 = MoCoV3.Config()
    assert (v3.temperature, v3.base_momentum, v3.momentum_schedule) == (0.2, 0.99, "cosine")
    assert (v3.proj_layers, v3.proj_hidden_dim, v3.proj_out_dim, v3.pred_hidden_dim) == (
        3, 4096, 256, 4096,
    )  # fmt: skip
    m = MoCoV3(build_backbone("resnet_tiny"), v3, image_size=16, mean=MEAN, std=STD)
    # projector ends in BN without affine; the predictor is 2 Linear layers and no final BN
    assert isinstance(m.projector.layers[-1], torch.nn.BatchNorm1d)
    assert not m.projector.layers[-1].affine
    assert sum(isinstance(x, torch.nn.Linear) for x in m.projector.layers) == 3
    assert sum(isinstance(x, torch.nn.Linear) for x in m.predictor.layers) == 2
    assert isinstance(m.predictor.layers[-1], torch.nn.Linear)


@pytest.mark.parametrize(
    "recipe", ["default", "cifar10_cpu", "v3_default", "v3_vit_default", "v3_cifar10_cpu"]
)
def test_recipes_load(recipe):
    name = "moco_v3" if recipe.startswith("v3") else "moco_v2"
    cfg = load_config(name, f"{name}_{recipe.removeprefix('v3_')}")
    mc = cfg.method_config()
    if name == "moco_v2":
        assert mc.queue_size % cfg.train.batch_size == 0
        assert mc.queue_size == (65536 if recipe == "default" else 4096)
    if recipe.endswith("cifar10_cpu"):
        assert cfg.backbone.width == 0.25 and cfg.data.subset == 20000
        assert cfg.train.epochs == 5 and cfg.train.batch_size == 256
    if recipe == "v3_vit_default":
        assert cfg.backbone.name == "vit_small" and cfg.backbone.patch_size == 4
        assert mc.freeze_patch_embed


# ------------------------------------------------------------------------------ queue


def test_queue_is_fifo_and_wraps_around():
    m = _method("moco_v2", queue_size=8)
    assert m.queue.shape == (8, 16) and int(m.queue_ptr) == 0
    a, b, c = (torch.randn(4, 16) for _ in range(3))
    m.enqueue(a)
    assert torch.allclose(m.queue[:4], F.normalize(a, dim=1)) and int(m.queue_ptr) == 4
    m.enqueue(b)
    assert torch.allclose(m.queue[4:], F.normalize(b, dim=1)) and int(m.queue_ptr) == 0
    m.enqueue(c)  # wraps: the oldest keys (a) are replaced, b stays
    assert torch.allclose(m.queue[:4], F.normalize(c, dim=1))
    assert torch.allclose(m.queue[4:], F.normalize(b, dim=1)) and int(m.queue_ptr) == 4


def test_keys_of_the_step_are_enqueued_after_it_and_take_no_gradient():
    m = _method("moco_v2")
    images, g = _images(8), torch.Generator().manual_seed(3)
    loss, _ = m(images, None, g)
    pending = m._pending_keys
    assert pending.shape == (8, 16) and not pending.requires_grad
    before = m.queue.clone()
    loss.backward()
    assert torch.equal(m.queue, before)  # nothing enqueued before the step is applied
    assert not m.queue.requires_grad and m.queue.grad is None
    for key, p in m.key.named_parameters():
        assert not p.requires_grad and p.grad is None, key
    m.on_after_step(0, 10)
    assert torch.allclose(m.queue[:8], pending) and int(m.queue_ptr) == 8
    assert torch.equal(m.queue[8:], before[8:])
    # the enqueued keys are those of the second view from the key network
    g = torch.Generator().manual_seed(3)
    m.views(images, g, None, 0)
    with torch.no_grad():
        k = m.key["projector"](m.key["encoder"](m.views(images, g, None, 0)))
    assert torch.allclose(pending, F.normalize(k, dim=1), atol=1e-6)


def test_queue_and_pointer_survive_a_state_dict_round_trip():
    m = _method("moco_v2")
    m.enqueue(torch.randn(8, 16))
    state = m.state_dict()
    assert {"queue", "queue_ptr", "key.momentum"} <= set(state)
    fresh = _method("moco_v2", seed=1)
    assert not torch.equal(fresh.queue, m.queue)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.queue, m.queue) and int(fresh.queue_ptr) == 8


# ------------------------------------------------------------------------------ momentum


@pytest.mark.parametrize("name", ["moco_v2", "moco_v3"])
def test_key_network_moves_towards_the_query_network_by_one_minus_m(name):
    m = _method(name)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5)
    loss, metrics = m(_images(8), None, torch.Generator().manual_seed(0))
    opt.zero_grad()
    loss.backward()
    opt.step()
    key_before = {k: v.clone() for k, v in m.key.copies.named_parameters()}
    online = {
        **{f"encoder.{k}": v for k, v in m.encoder.named_parameters()},
        **{f"projector.{k}": v for k, v in m.projector.named_parameters()},
    }
    assert set(online) == set(key_before)
    momentum = m.key.momentum_at(5, 10)
    assert momentum == (0.99 if name == "moco_v2" else pytest.approx(0.995))
    m.on_after_step(5, 10)
    moved = 0
    for key, new in m.key.copies.named_parameters():
        expected = momentum * key_before[key] + (1 - momentum) * online[key].detach()
        torch.testing.assert_close(new, expected, rtol=1e-6, atol=1e-7)
        moved += not torch.equal(new, key_before[key])
    assert moved > 0
    assert float(m.key.momentum) == pytest.approx(momentum)
    assert float(metrics["target_momentum"]) == pytest.approx(0.99)


# ------------------------------------------------------------------------------ losses


def test_v2_loss_equals_hand_written_info_nce_with_the_queue():
    m = _method("moco_v2", queue_size=16)
    m.enqueue(torch.randn(16, 16))
    images = _images(8)
    loss, metrics = m(images, None, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    x1, x2 = m.views(images, g, None, 0), m.views(images, g, None, 0)
    with torch.no_grad():
        q = m.projector(m.encoder(x1))
        k = m.key["projector"](m.key["encoder"](x2))
    queue = m.queue.clone()
    expected = _hand_info_nce(q, k, lambda i: [k[i], *queue], 0.2)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    # top-1: the positive beats every queued key
    qn, kn = F.normalize(q, dim=1), F.normalize(k, dim=1)
    hits = [float(qn[i] @ kn[i]) > float((qn[i] @ queue.T).max()) for i in range(8)]
    assert float(metrics["positive_top1"]) == pytest.approx(sum(hits) / 8)


def test_v2_symmetric_loss_and_enqueue_of_both_views():
    m = _method("moco_v2", queue_size=32, symmetric=True)
    images = _images(8)
    loss, _ = m(images, None, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    x1, x2 = m.views(images, g, None, 0), m.views(images, g, None, 0)
    with torch.no_grad():
        q1, q2 = m.projector(m.encoder(x1)), m.projector(m.encoder(x2))
        k1 = m.key["projector"](m.key["encoder"](x1))
        k2 = m.key["projector"](m.key["encoder"](x2))
    queue = m.queue.clone()
    expected = _hand_info_nce(q1, k2, lambda i: [k2[i], *queue], 0.2) + _hand_info_nce(
        q2, k1, lambda i: [k1[i], *queue], 0.2
    )
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    m.on_after_step(0, 10)
    assert int(m.queue_ptr) == 16
    assert torch.allclose(m.queue[:8], F.normalize(k1, dim=1), atol=1e-6)


@pytest.mark.parametrize("start", [0, 4])
def test_v3_loss_equals_hand_written_symmetric_info_nce_scaled_by_two_t(start):
    """Queries of 4 images whose keys sit at rows ``start..start+3`` of 8 gathered keys (as on
    process 1 of 2); every gathered key is a candidate."""
    torch.manual_seed(0)
    q1, q2 = torch.randn(4, 6), torch.randn(4, 6)
    all_k1, all_k2 = torch.randn(8, 6), torch.randn(8, 6)
    t = 0.3
    loss = moco_v3_loss(q1, q2, all_k1, all_k2, t, start)
    pos1, pos2 = all_k2[start : start + 4], all_k1[start : start + 4]
    ctr12 = _hand_info_nce(q1, pos1, lambda i: list(all_k2), t)
    ctr21 = _hand_info_nce(q2, pos2, lambda i: list(all_k1), t)
    expected = 2 * t * (ctr12 + ctr21)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_v3_forward_loss_matches_the_formula_on_its_own_views():
    m = _method("moco_v3")
    images = _images(8)
    loss, metrics = m(images, None, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    x1, x2 = m.views(images, g, None, 0), m.views(images, g, None, 0)
    with torch.no_grad():
        q1 = m.predictor(m.projector(m.encoder(x1)))
        q2 = m.predictor(m.projector(m.encoder(x2)))
        k1 = m.key["projector"](m.key["encoder"](x1))
        k2 = m.key["projector"](m.key["encoder"](x2))
    expected = 0.4 * (
        _hand_info_nce(q1, k2, lambda i: list(k2), 0.2)
        + _hand_info_nce(q2, k1, lambda i: list(k1), 0.2)
    )
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert {"positive_cosine", "positive_top1", "target_momentum"} <= set(metrics)
    assert {"embedding_spread", "effective_rank"} <= set(metrics)


# ------------------------------------------------------------------------------ config


def test_queue_not_a_multiple_of_the_global_batch_is_a_config_error(tiny_npz, tmp_path):
    m = _method("moco_v2", queue_size=36)
    with pytest.raises(ConfigError, match=r"queue_size=36.*batch_size=8"):
        m(_images(8), None, torch.Generator().manual_seed(0))
    # the global batch decides, not this process's share
    with pytest.raises(ConfigError, match=r"queue_size=36.*batch_size=16"):
        m(_images(8), None, torch.Generator().manual_seed(0), global_size=16, offset=0)
    m(_images(8), None, torch.Generator().manual_seed(0), global_size=12, offset=4)
    sym = _method("moco_v2", queue_size=24, symmetric=True)
    with pytest.raises(ConfigError, match=r"queue_size=24.*twice.*batch_size=8"):
        sym(_images(8), None, torch.Generator().manual_seed(0))
    with pytest.raises(ConfigError, match=r"queue_size=40.*batch_size=16"):
        Trainer(_cfg(tiny_npz, tmp_path / "r", "method_args.queue_size=40")).fit()
    assert not (tmp_path / "r").exists()  # refused before the run directory is written


def test_freeze_patch_embed_needs_a_vit():
    with pytest.raises(ConfigError, match="freeze_patch_embed"):
        _method("moco_v3", freeze_patch_embed=True)


# ------------------------------------------------------------------------------ steps


@pytest.mark.parametrize("name", ["moco_v2", "moco_v3"])
def test_step_is_deterministic_and_trains_every_trainable_parameter(name):
    m = _method(name)
    images = _images(8)
    loss, metrics = m(images, None, torch.Generator().manual_seed(0))
    loss2, _ = m(images, None, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss) and torch.equal(loss, loss2)
    assert 0 <= float(metrics["positive_top1"]) <= 1
    assert 1.0 <= float(metrics["effective_rank"]) <= 16
    loss.backward()
    for key, p in m.named_parameters():
        if key.startswith("key."):
            assert not p.requires_grad and p.grad is None, key
        else:
            assert p.requires_grad and p.grad is not None, key
    assert any(k.startswith("key.copies.encoder.") for k, _ in m.named_parameters())


def test_v3_freeze_patch_embed_keeps_the_patch_projection_fixed():
    m = _method("moco_v3", backbone="vit_micro", freeze_patch_embed=True)
    proj = m.encoder.patch_embed.proj
    assert not any(p.requires_grad for p in proj.parameters())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = build_optimizer(m, OptimizerConfig(name="adamw", lr=1e-3, weight_decay=0.1), 8)
    assert not any(p is q for g in opt.param_groups for p in g["params"] for q in proj.parameters())
    loss, _ = m(_images(8), None, torch.Generator().manual_seed(0))
    opt.zero_grad()
    loss.backward()
    opt.step()
    m.on_after_step(0, 10)
    after = m.state_dict()
    for key in ("encoder.patch_embed.proj.weight", "encoder.patch_embed.proj.bias"):
        assert torch.equal(after[key], before[key]), key
        # the key copy is m * p + (1 - m) * p: equal up to float rounding
        torch.testing.assert_close(after[f"key.copies.{key}"], before[key], rtol=1e-6, atol=1e-7)
    for key in ("encoder.patch_embed.cls_token", "encoder.blocks.0.attn.qkv.weight"):
        assert not torch.equal(after[key], before[key]), key


@pytest.mark.parametrize("name", ["moco_v2", "moco_v3"])
def test_pretext_metrics_positive_retrieval(name):
    m = _method(name).eval()
    out = m.pretext_metrics(_images(16), torch.Generator().manual_seed(0))
    assert set(out) == {"positive_retrieval_top1"}
    assert 0 <= out["positive_retrieval_top1"] <= 1


@pytest.mark.parametrize("name", ["moco_v2", pytest.param("moco_v3", marks=pytest.mark.slow)])
def test_a_few_dozen_steps_beat_the_untrained_encoder_on_knn(name):
    """Tiny learning test on pattern images: the kNN bank is 192 clean images, the queries 4
    augmented views of 64 held-out images (the untrained encoder already separates the clean
    images, so the augmented queries measure learned invariance)."""
    images, labels = _pattern_images(256, seed=0)
    m = _method(name, **({"queue_size": 128} if name == "moco_v2" else {}))

    def knn() -> float:
        m.encoder.eval()
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            bank = m.encoder((images[:192].float() / 255 - 0.5) / 0.25)
            queries = torch.cat([m.encoder(m.views(images[192:], g, None, 0)) for _ in range(4)])
        m.encoder.train()
        return knn_accuracy(bank, labels[:192], queries, labels[192:].repeat(4), ks=(20,))["knn@20"]

    before = knn()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-3)
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


# ------------------------------------------------------------------------------ end to end


# moco_v2_default is the ImageNet recipe (224 px, ImageNet stem and augmentation, m = 0.999):
# undo what a tiny 16 px run must not inherit from it
NOT_IMAGENET = [
    "data.image_size=null", "backbone.stem=null", "augment=simclr_cifar", "normalize=cifar10",
    "method_args.base_momentum=0.99",
]  # fmt: skip


def _cfg(data, out, *extra, method="moco_v2"):
    args = SMALL[method]
    return load_config(
        method,
        None,
        [
            f"data.source={data}", "eval_data.source=null", f"out_dir={out}",
            "backbone.name=resnet_tiny", "backbone.width=null", "train.batch_size=16",
            "train.epochs=2", "train.precision=fp32", "train.progress=false",
            "train.tensorboard=false", "train.log_every_steps=1", "train.num_threads=1",
            "train.checkpoint_every_steps=2", "train.knn_monitor.every_epochs=0",
            "train.optimizer.name=sgd", "train.optimizer.lr=0.05",
            *(f"method_args.{k}={v}" for k, v in args.items()),
            *NOT_IMAGENET,
            *extra,
        ],
    )  # fmt: skip


def test_stop_and_resume_gives_the_same_weights_and_queue(tiny_npz, tmp_path):
    straight = Trainer(_cfg(tiny_npz, tmp_path / "a")).fit()
    assert straight.steps == 8
    assert Trainer(_cfg(tiny_npz, tmp_path / "b"), stop_at_step=3).fit().steps == 3
    assert Trainer(_cfg(tiny_npz, tmp_path / "b"), resume=True).fit().steps == 8
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step_00000008" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step_00000008" / "model.safetensors"))
    assert a.keys() == b.keys() and {"queue", "queue_ptr"} <= set(a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # 8 steps of 16 keys through a queue of 32: the pointer went round 4 times
    assert int(a["queue_ptr"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and "event" not in r]
    assert len(steps) == 8
    assert {"positive_top1", "positive_cosine", "target_momentum", "effective_rank"} <= set(
        steps[-1]
    )
    assert all(r["target_momentum"] == pytest.approx(0.99) for r in steps)


def test_train_from_the_cli_then_pretext_and_knn(tiny_npz, tmp_path):
    run = tmp_path / "run"
    args = [
        "train", "moco_v2", f"out_dir={run}", f"data.source={tiny_npz}", "eval_data.source=null",
        "backbone.name=resnet_tiny", "backbone.width=null", "train.batch_size=16",
        "train.epochs=1", "train.progress=false", "train.tensorboard=false",
        "train.precision=fp32", "train.knn_monitor.every_epochs=0",
        "method_args.proj_hidden_dim=32", "method_args.proj_out_dim=16",
        "method_args.queue_size=64", *NOT_IMAGENET,
    ]  # fmt: skip
    assert main(args) == 0
    out = tmp_path / "pretext.json"
    assert main(["eval", "pretext", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert 0 <= row["positive_retrieval_top1"] <= 1
    knn = tmp_path / "knn.json"
    assert (
        main(["eval", "knn", str(run), "--data", str(tiny_npz), "--k", "5", "--json", str(knn)])
        == 0
    )
    assert 0 <= json.loads(knn.read_text())[0]["knn@5"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("method", ["moco_v2", "moco_v3"])
def test_two_process_gloo_run_matches_one_process(tiny_npz, tmp_path, method):
    """2 torchrun processes (keys gathered without gradients, global BatchNorm in the query and
    key networks) follow the loss curve of 1 process on the same global batch, and (v2) end
    with the same queue: 4 steps of 16 keys through a queue of 32, so it wrapped around."""
    train_single_and_ddp(method, tiny_npz, tmp_path, [
        *(f"method_args.{k}={v}" for k, v in SMALL[method].items()),
        *(NOT_IMAGENET if method == "moco_v2" else []),
    ])  # fmt: skip
    assert_same_loss_curve(tmp_path)
    a, b = final_states(tmp_path)
    if method == "moco_v2":
        assert int(a["queue_ptr"]) == int(b["queue_ptr"]) == 0
        torch.testing.assert_close(b["queue"], a["queue"], rtol=1e-3, atol=1e-5)
    for key in a:
        if key.startswith("key.copies.") and a[key].is_floating_point():
            torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5, msg=key)
