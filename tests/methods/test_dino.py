"""DINO: head, loss, centre, temperature schedule, multi-crop, EMA teacher, learning, trainer."""

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from two_process import assert_same_loss_curve, final_states, train_single_and_ddp

import selfsup.methods.dino as dino_module
from selfsup.backbones import build_backbone
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.evaluate import knn_accuracy
from selfsup.heads.dino import DINOHead, WeightNormLinear
from selfsup.losses.dino import dino_loss, dino_teacher_probs
from selfsup.methods import DINO, get_method
from selfsup.train import Trainer

MEAN, STD = (0.5,) * 3, (0.25,) * 3
SMALL = {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "num_local_crops": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def _dino(seed=0, backbone="resnet_tiny", image_size=16, **overrides):
    torch.manual_seed(seed)
    cfg = DINO.Config(**{**SMALL, **overrides})
    enc = build_backbone(backbone)
    return DINO(enc, cfg, image_size=image_size, mean=MEAN, std=STD)


def _images(n=8, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


# --- registry, head, loss --------------------------------------------------------------------
def test_registry_and_published_defaults():
    assert get_method("dino") is DINO and DINO.family == "self-distillation"
    c = DINO.Config()
    assert (c.out_dim, c.hidden_dim, c.bottleneck_dim, c.head_layers) == (65536, 2048, 256, 3)
    assert (c.use_bn_in_head, c.norm_last_layer) == (False, True)
    assert (c.base_momentum, c.center_momentum, c.student_temp) == (0.996, 0.9, 0.1)
    assert (c.warmup_teacher_temp, c.teacher_temp, c.num_local_crops) == (0.04, 0.04, 6)
    assert c.local_crop_scale == (0.05, 0.4) and c.freeze_last_layer_epochs == 1


def test_head_layout_and_weight_norm():
    head = DINOHead(12, out_dim=10, hidden_dim=8, bottleneck_dim=4)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(12, 8), (8, 8), (8, 4)]
    assert sum(isinstance(m, torch.nn.GELU) for m in head.mlp) == 2
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in head.mlp)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in DINOHead(12, 10, 8, 4, use_bn=True).mlp)
    x = torch.randn(5, 12)
    torch.testing.assert_close(head.bottleneck(x).norm(dim=1), torch.ones(5))
    # the output does not depend on the scale of the direction parameter
    out = head(x)
    with torch.no_grad():
        head.last_layer.weight_v.mul_(3.7)
    torch.testing.assert_close(head(x), out)
    # norm_last_layer: unit prototypes and a frozen norm
    assert not head.last_layer.weight_g.requires_grad
    torch.testing.assert_close(head.last_layer.weight.norm(dim=1), torch.ones(10))
    free = WeightNormLinear(4, 10, fix_norm=False)
    assert free.weight_g.requires_grad
    with torch.no_grad():
        free.weight_g.fill_(2.0)
    torch.testing.assert_close(free.weight.norm(dim=1), torch.full((10,), 2.0))
    free(torch.randn(3, 4)).sum().backward()
    assert free.weight_g.grad is not None and free.weight_v.grad is not None


def test_loss_equals_a_hand_written_cross_entropy_over_cross_view_pairs():
    g = torch.Generator().manual_seed(0)
    n, k, views, t_views, tau = 3, 5, 4, 2, 0.1
    student = [torch.randn(n, k, generator=g) for _ in range(views)]
    teacher = [torch.softmax(torch.randn(n, k, generator=g), dim=1) for _ in range(t_views)]
    total, pairs = 0.0, 0
    for t in range(t_views):
        for s in range(views):
            if s == t:  # same view: skipped
                continue
            ce = 0.0
            for i in range(n):
                z = [float(student[s][i, j]) / tau for j in range(k)]
                log_norm = math.log(sum(math.exp(v) for v in z))
                ce += -sum(float(teacher[t][i, j]) * (z[j] - log_norm) for j in range(k))
            total += ce / n
            pairs += 1
    assert pairs == 6
    assert abs(float(dino_loss(student, teacher, tau)) - total / pairs) < 1e-5
    # centring and sharpening
    logits, center = torch.randn(n, k, generator=g), torch.randn(1, k, generator=g)
    torch.testing.assert_close(
        dino_teacher_probs(logits, center, 0.04), torch.softmax((logits - center) / 0.04, dim=1)
    )


def test_method_loss_uses_centred_sharpened_teacher_and_every_cross_view_pair():
    m = _dino().eval()  # eval: BatchNorm per-row, so pieces can be recomputed separately
    with torch.no_grad():
        m.center.normal_()
    images = _images()
    loss, metrics = m(images, None, torch.Generator().manual_seed(1))
    glob, loc = m.crops(images, torch.Generator().manual_seed(1))
    assert len(glob) == 2 and len(loc) == 2
    with torch.no_grad():
        student = [m.head(m.encoder(v)) for v in glob + loc]
        teacher = [m.teacher["head"](m.teacher["encoder"](v)) for v in glob]
        probs = [torch.softmax((t - m.center) / 0.04, dim=1) for t in teacher]
        terms = [
            -(probs[t] * torch.log_softmax(student[s] / 0.1, dim=1)).sum(1).mean()
            for t in range(2)
            for s in range(4)
            if s != t
        ]
    torch.testing.assert_close(loss.detach(), torch.stack(terms).mean(), rtol=1e-4, atol=1e-5)
    assert metrics["teacher_temperature"] == 0.04
    entropy = torch.stack([-torch.special.xlogy(p, p).sum(1).mean() for p in probs]).mean()
    torch.testing.assert_close(metrics["teacher_entropy"], entropy, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        metrics["teacher_student_kl"], loss.detach() - entropy, rtol=1e-4, atol=1e-5
    )
    assert float(metrics["center_norm"]) == pytest.approx(float(m.center.norm()))


# --- centre and schedules ----------------------------------------------------------------------
def test_center_update_follows_the_formula():
    m = _dino()
    c0 = torch.randn(1, 64)
    with torch.no_grad():
        m.center.copy_(c0)
    outputs = torch.randn(10, 64)  # hand-made teacher outputs
    m.update_center(outputs.mean(0, keepdim=True))
    torch.testing.assert_close(m.center, 0.9 * c0 + 0.1 * outputs.mean(0, keepdim=True))


def test_step_updates_center_with_the_teacher_outputs_of_the_batch():
    m = _dino().eval()
    images = _images()
    m(images, None, torch.Generator().manual_seed(3))
    glob, _ = m.crops(images, torch.Generator().manual_seed(3))
    _, t_logits = m._teacher_outputs(torch.cat(glob))
    m.on_after_step(0, 10)
    torch.testing.assert_close(m.center, 0.1 * t_logits.mean(0, keepdim=True))
    assert int(m.train_step) == 1
    m.on_after_step(1, 10)  # no forward since: the centre stays
    torch.testing.assert_close(m.center, 0.1 * t_logits.mean(0, keepdim=True))


def test_teacher_temperature_warmup_endpoints():
    m = _dino(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=2)
    m.on_train_start(steps_per_epoch=10, total_steps=100)
    assert m.teacher_temperature(0) == pytest.approx(0.04)
    assert m.teacher_temperature(10) == pytest.approx(0.055)
    assert m.teacher_temperature(20) == pytest.approx(0.07)
    assert m.teacher_temperature(99) == pytest.approx(0.07)
    assert m.teacher_temperature() == pytest.approx(0.04)  # the current step (0)
    m.on_after_step(9, 100)
    assert m.teacher_temperature() == pytest.approx(0.055)
    assert _dino().teacher_temperature(0) == 0.04  # default: no warm-up


# --- gradients and EMA ---------------------------------------------------------------------------
def test_teacher_gets_no_gradient_and_every_student_parameter_does():
    m = _dino()
    loss, metrics = m(_images(), None, torch.Generator().manual_seed(0))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert {"embedding_spread", "effective_rank", "teacher_momentum"} <= set(metrics)
    loss.backward()
    for key, p in m.named_parameters():
        if key.startswith("teacher.") or key == "head.last_layer.weight_g":
            assert not p.requires_grad and p.grad is None, key
        else:
            assert p.requires_grad and p.grad is not None, key


def test_teacher_moves_towards_the_student_by_one_minus_momentum():
    m = _dino()
    loss, _ = m(_images(), None, torch.Generator().manual_seed(0))
    loss.backward()
    torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.5).step()
    before = {k: v.clone() for k, v in m.teacher["head"].state_dict().items()}
    m.on_after_step(0, 10)
    assert float(m.teacher.momentum) == pytest.approx(0.996)
    student = m.head.state_dict()
    moved = 0
    for key, t0 in before.items():
        expected = 0.996 * t0 + 0.004 * student[key]
        torch.testing.assert_close(m.teacher["head"].state_dict()[key], expected)
        moved += not torch.equal(t0, student[key])
    assert moved > 0


def test_freeze_last_layer_cancels_its_gradients_for_the_first_epochs():
    m = _dino(freeze_last_layer_epochs=1)
    m.on_train_start(steps_per_epoch=3, total_steps=10)
    for step, frozen in [(0, True), (2, True), (3, False)]:
        m.zero_grad()
        m(_images(), None, torch.Generator().manual_seed(step))[0].backward()
        m.before_optimizer_step(step, 10)
        assert (m.head.last_layer.weight_v.grad is None) == frozen
        assert m.head.mlp[0].weight.grad is not None


# --- multi-crop ---------------------------------------------------------------------------------
def test_multicrop_shapes_and_determinism():
    m = _dino(num_local_crops=3, local_crop_size=8)
    glob, loc = m.crops(_images(6), torch.Generator().manual_seed(0))
    assert [tuple(v.shape) for v in glob] == [(6, 3, 16, 16)] * 2
    assert [tuple(v.shape) for v in loc] == [(6, 3, 8, 8)] * 3
    glob2, loc2 = m.crops(_images(6), torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(glob + loc, glob2 + loc2, strict=True))
    assert not torch.equal(glob[0], glob[1]) and not torch.equal(loc[0], loc[1])
    assert _dino().local_crop_size == 8  # default: half the image size


def test_ddp_slices_equal_the_rows_of_a_global_draw():
    m = _dino()
    images = _images(8)
    full = m.crops(images, torch.Generator().manual_seed(5))
    half = m.crops(images[4:], torch.Generator().manual_seed(5), global_size=8, offset=4)
    for a, b in zip(full[0] + full[1], half[0] + half[1], strict=True):
        assert torch.equal(a[4:], b)


def test_center_with_simulated_two_rank_all_reduce_equals_one_process(monkeypatch):
    images = _images(8)
    single = _dino().eval()
    single(images, None, torch.Generator().manual_seed(7))
    single.on_after_step(0, 10)

    ranks = [_dino().eval() for _ in range(2)]
    pending = []
    for r, m in enumerate(ranks):
        rows = images[4 * r : 4 * r + 4]
        m(rows, None, torch.Generator().manual_seed(7), global_size=8, offset=4 * r)
        pending.append(m._batch_center.clone())
    mean = torch.stack(pending).mean(0)
    monkeypatch.setattr(dino_module, "all_reduce_mean", lambda x: mean)
    for m in ranks:
        m.on_after_step(0, 10)
        torch.testing.assert_close(m.center, single.center)


def test_vit_student_sees_local_crops_through_an_interpolated_position_embedding():
    torch.manual_seed(0)
    enc = build_backbone("vit_micro", image_size=16, patch_size=4)
    m = DINO(enc, DINO.Config(**SMALL), image_size=16, mean=MEAN, std=STD)
    loss, _ = m(_images(4), None, torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and m.encoder.patch_embed.proj.weight.grad is not None


def test_pretext_metrics():
    m = _dino().eval()
    out = m.pretext_metrics(_images(8), torch.Generator().manual_seed(0))
    assert 0 <= out["teacher_view_agreement"] <= 1
    assert 0 <= out["teacher_entropy"] <= out["teacher_entropy_max"] == pytest.approx(math.log(64))


# --- learning -----------------------------------------------------------------------------------
def _pattern_images(n, seed):
    spec = importlib.util.spec_from_file_location(
        "_selfsup_tests_conftest", Path(__file__).resolve().parents[1] / "conftest.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images, labels = module.make_pattern_images(n, seed=seed)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


@pytest.mark.slow
def test_a_few_dozen_steps_beat_the_untrained_encoder_on_knn():
    """As in test_siamese.py: bank = 192 clean images, queries = 4 augmented global crops of 64
    held-out images, so the score measures learned invariance."""
    images, labels = _pattern_images(256, seed=0)
    m = _dino(base_momentum=0.99, out_dim=128, freeze_last_layer_epochs=0)

    def knn() -> float:
        m.encoder.eval()
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            bank = m.encoder((images[:192].float() / 255 - 0.5) / 0.25)
            queries = torch.cat(
                [m.encoder(m.global_pipelines[0](images[192:], g)) for _ in range(4)]
            )
        m.encoder.train()
        return knn_accuracy(bank, labels[:192], queries, labels[192:].repeat(4), ks=(20,))["knn@20"]

    before = knn()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-3)
    steps = 40
    for step in range(steps):
        g = torch.Generator().manual_seed(step)
        loss, _ = m(images[torch.randperm(192, generator=g)[:32]], None, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.on_after_step(step, steps)
    after = knn()
    assert after > before + 0.04, (before, after)


# --- trainer, CLI, recipes ----------------------------------------------------------------------
def _cfg(data, out, *extra):
    return load_config(
        "dino",
        None,
        [
            f"data.source={data}",
            "eval_data.source=null",
            f"out_dir={out}",
            "backbone.name=resnet_tiny",
            "backbone.width=null",
            "train.batch_size=16",
            "train.epochs=2",
            "train.precision=fp32",
            "train.progress=false",
            "train.tensorboard=false",
            "train.log_every_steps=1",
            "train.num_threads=1",
            "train.checkpoint_every_steps=2",
            "train.keep_last=10",
            "train.knn_monitor.every_epochs=0",
            "train.optimizer.name=sgd",
            "train.optimizer.lr=0.05",
            "method_args.out_dim=64",
            "method_args.hidden_dim=32",
            "method_args.bottleneck_dim=16",
            "method_args.num_local_crops=2",
            "method_args.local_crop_size=8",
            "method_args.warmup_teacher_temp_epochs=1",
            *extra,
        ],
    )


def test_stop_and_resume_gives_the_same_weights_teacher_and_center(tiny_npz, tmp_path):
    straight = Trainer(_cfg(tiny_npz, tmp_path / "a")).fit()
    assert straight.steps == 8  # 64 images / 16 = 4 steps per epoch
    assert Trainer(_cfg(tiny_npz, tmp_path / "b"), stop_at_step=3).fit().steps == 3
    assert Trainer(_cfg(tiny_npz, tmp_path / "b"), resume=True).fit().steps == 8

    def ckpt(run, step):
        path = tmp_path / run / "checkpoints" / f"step_{step:08d}" / "model.safetensors"
        return load_file(str(path))

    a, b = ckpt("a", 8), ckpt("b", 8)
    assert a.keys() == b.keys()
    assert {"center", "train_step", "teacher.copies.head.last_layer.weight_v"} <= set(a)
    assert any(k.startswith("teacher.copies.encoder.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert int(a["train_step"]) == 8 and float(a["center"].norm()) > 0
    # the last layer is frozen for the first epoch (4 steps), then trains
    a2, a4 = ckpt("a", 2), ckpt("a", 4)
    key = "head.last_layer.weight_v"
    assert torch.equal(a2[key], a4[key]) and not torch.equal(a4[key], a[key])
    assert not torch.equal(a2["head.mlp.0.weight"], a4["head.mlp.0.weight"])

    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r and "event" not in r]
    assert len(steps) == 8
    keys = {"teacher_entropy", "teacher_student_kl", "center_norm", "teacher_temperature"}
    assert keys | {"teacher_momentum", "effective_rank", "embedding_spread"} <= set(steps[-1])
    # the recipe's 0.04 -> 0.07, warmed up over 1 epoch (4 steps); logged before each update
    temps = [r["teacher_temperature"] for r in steps]
    assert temps[:5] == pytest.approx([0.04, 0.0475, 0.055, 0.0625, 0.07]) and temps[-1] == 0.07


def test_train_from_the_cli_then_knn(tiny_npz, tmp_path):
    run = tmp_path / "run"
    args = [
        "train", "dino", f"out_dir={run}", f"data.source={tiny_npz}", "eval_data.source=null",
        "backbone.name=resnet_tiny", "backbone.width=null", "train.batch_size=16",
        "train.epochs=1", "train.progress=false", "train.tensorboard=false",
        "train.precision=fp32", "train.knn_monitor.every_epochs=0",
        "method_args.out_dim=64", "method_args.hidden_dim=32", "method_args.bottleneck_dim=16",
        "method_args.num_local_crops=2", "method_args.local_crop_size=8",
    ]  # fmt: skip
    assert main(args) == 0
    knn = tmp_path / "knn.json"
    argv = ["eval", "knn", str(run), "--data", str(tiny_npz), "--k", "5", "--json", str(knn)]
    assert main(argv) == 0
    assert 0 <= json.loads(knn.read_text())[0]["knn@5"] <= 1


@pytest.mark.parametrize("recipe", ["dino_default", "dino_vit_default", "dino_cifar10_cpu"])
def test_recipes_load(recipe):
    cfg = load_config("dino", recipe)
    mc = cfg.method_config()
    assert cfg.method == "dino" and mc.norm_last_layer
    if recipe == "dino_cifar10_cpu":
        assert cfg.backbone.width == 0.25 and cfg.data.subset is None  # every training image
        assert mc.use_bn_in_head and cfg.train.optimizer.name == "lars"
        assert cfg.train.batch_size == 256 and mc.num_local_crops == 2 and mc.out_dim == 1024
        # a teacher that follows within a ~250-step run, and sharp targets (see the recipe)
        assert mc.base_momentum == 0.99 and mc.teacher_temp == mc.warmup_teacher_temp == 0.04
    else:
        assert mc.base_momentum == 0.996
        assert mc.num_local_crops == 6 and mc.hidden_dim == 2048 and mc.bottleneck_dim == 256
    if recipe == "dino_vit_default":
        assert cfg.backbone.name == "vit_small" and cfg.backbone.patch_size == 4


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tiny_npz, tmp_path):
    """2 torchrun processes (multi-crop drawn for the global batch, the teacher centre
    all-reduced, global BatchNorm) follow the loss curve of 1 process on the same global batch
    and end with the same centre and teacher."""
    train_single_and_ddp("dino", tiny_npz, tmp_path, [
        "method_args.out_dim=64", "method_args.hidden_dim=32", "method_args.bottleneck_dim=16",
        "method_args.num_local_crops=2", "method_args.local_crop_size=8",
        "method_args.warmup_teacher_temp_epochs=1", "train.optimizer.name=sgd",
        "train.optimizer.lr=0.05",
    ])  # fmt: skip
    assert_same_loss_curve(tmp_path)
    a, b = final_states(tmp_path)
    assert a["center"].abs().sum() > 0
    for key in ["center", *(k for k in a if k.startswith("teacher.") and a[k].is_floating_point())]:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5, msg=key)
