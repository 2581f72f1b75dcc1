"""CPC: patch grid, causal context, targets and loss, global-batch slicing, learning, CLI."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from two_process import assert_same_loss_curve, train_single_and_ddp

import selfsup.methods.cpc as cpc_module
from selfsup.backbones import build_backbone
from selfsup.cli import main
from selfsup.config import load_config
from selfsup.methods import CPC, get_method
from selfsup.methods.cpc import cpc_pairs, turn

MEAN, STD = (0.5,) * 3, (0.25,) * 3


pytestmark = pytest.mark.usefixtures("one_thread")


def _cpc(image_size=16, mean=MEAN, std=STD, **cfg) -> CPC:
    torch.manual_seed(0)
    cfg.setdefault("context_dim", 32)
    return CPC(
        build_backbone("resnet_tiny"), CPC.Config(**cfg), image_size=image_size, mean=mean, std=std
    )


def _images(n=8, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _g(seed=0):
    return torch.Generator().manual_seed(seed)


def test_registered_with_validated_options():
    assert get_method("cpc") is CPC and CPC.family == "contrastive"
    for bad in (
        {"crop_scale": (0.8, 0.5)},
        {"first_step": 3, "prediction_steps": 2},
        {"context_kernel": 2},
        {"max_queries": 1},
        {"temperature": 0.0},
    ):
        with pytest.raises(ValueError):
            CPC.Config(**bad)
    with pytest.raises(ValueError, match="rows of the patch grid"):
        _cpc(prediction_steps=7)  # a 7-row grid
    with pytest.raises(ValueError, match="ResNet"):
        CPC(
            build_backbone("vit_micro", image_size=16, patch_size=4),
            CPC.Config(),
            image_size=16,
            mean=MEAN,
            std=STD,
        )


def test_patch_grid_cuts_the_right_windows_from_the_view():
    """On a 32 px image whose red channel is the pixel's row and green its column, the default
    grid is 7x7 patches of 8 px every 4 px, and each patch holds its window."""
    m = _cpc(image_size=32, mean=(0.0,) * 3, std=(1.0,) * 3)  # patches = pixels / 255
    assert (m.patch_size, m.stride, m.grid_size) == (8, 4, 7)
    rows, cols = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    image = torch.stack([rows, cols, torch.zeros_like(rows)]).to(torch.uint8).expand(2, -1, -1, -1)
    patches = m.make_patches(image, _g(), train=False)
    assert patches.shape == (2, 7, 7, 3, 8, 8)
    pixel = (patches * 255).round().long()
    span = torch.arange(8)
    for i in range(7):
        for j in range(7):
            assert torch.equal(pixel[:, i, j, 0], (4 * i + span)[:, None].expand(2, 8, 8))
            assert torch.equal(pixel[:, i, j, 1], (4 * j + span)[None, :].expand(2, 8, 8))
    # per-channel standardisation: every channel of every patch has mean 0 on its own
    std = _cpc(patch_normalization="per_channel").make_patches(_images(2), _g(), train=False)
    assert torch.allclose(std.mean((-2, -1)), torch.zeros(2, 7, 7, 3), atol=1e-4)


def test_context_at_a_row_never_sees_rows_below():
    m = _cpc(context_layers=2, context_kernel=3)
    z = torch.randn(2, m.encoder.feature_dim, 7, 7)
    before = m.predict(z)
    for row in range(7):
        changed = z.clone()
        changed[:, :, row] += torch.randn_like(changed[:, :, row])
        after = m.predict(changed)
        assert torch.equal(after[..., :row, :], before[..., :row, :]), row
        assert not torch.allclose(after[..., row, :], before[..., row, :]), row
        if row < 6:  # and the rows right below, which see it
            assert not torch.allclose(after[..., row + 1, :], before[..., row + 1, :]), row


def test_whole_model_is_causal_in_eval_mode():
    """From patches to predictions (BatchNorm on running statistics): changing the patches of
    row 4 leaves every prediction made at rows 0..3 unchanged."""
    m = _cpc().eval()
    patches = m.make_patches(_images(3), _g(), train=False)
    changed = patches.clone()
    changed[:, 4] = torch.randn_like(changed[:, 4])
    with torch.no_grad():
        before, after = m.predict(m.embed(patches)), m.predict(m.embed(changed))
    assert torch.allclose(after[..., :4, :], before[..., :4, :], atol=1e-6)
    assert not torch.allclose(after[..., 4:, :], before[..., 4:, :])


def test_positive_of_position_i_j_at_offset_k_is_the_patch_k_rows_below():
    n, d, g = 2, 3, 5
    index = torch.arange(n * g * g, dtype=torch.float32).view(n, 1, g, g).expand(n, d, g, g)
    z, predictions = index, -index  # every position labelled by its index
    for k in (1, 2, 4):
        queries, keys = cpc_pairs(z, predictions, k)
        assert queries.shape == keys.shape == (n * (g - k) * g, d)
        row = 0
        for b in range(n):
            for i in range(g - k):
                for j in range(g):
                    assert queries[row, 0] == -z[b, 0, i, j]
                    assert keys[row, 0] == z[b, 0, i + k, j]
                    row += 1
    with pytest.raises(ValueError):
        cpc_pairs(z, predictions, g)


@pytest.mark.parametrize("normalize", [True, False])
def test_loss_equals_a_hand_written_info_nce(normalize):
    """Every valid (image, row, column) of every offset against the targets of all valid
    positions of the batch at that offset, written out with loops."""
    m = _cpc(prediction_steps=3, first_step=2, max_queries=None, normalize=normalize)
    t = m.cfg.temperature
    g = torch.Generator().manual_seed(3)
    n, d, size = 2, 4, 5
    z = torch.randn(n, d, size, size, generator=g)
    predictions = torch.randn(n, 2, d, size, size, generator=g)  # offsets 2 and 3

    def score(a, b):
        if normalize:
            a, b = a / a.norm(), b / b.norm()
        return float(a @ b) / t

    per_step = []
    for s, k in enumerate((2, 3)):
        positions = [(b, i, j) for b in range(n) for i in range(size - k) for j in range(size)]
        terms = []
        for b, i, j in positions:
            query = predictions[b, s, :, i, j]
            logits = [score(query, z[c, :, ci + k, cj]) for c, ci, cj in positions]
            terms.append(-score(query, z[b, :, i + k, j]) + math.log(sum(map(math.exp, logits))))
        per_step.append(sum(terms) / len(terms))
    loss, accuracies, candidates = m.contrast(z, predictions, None)
    assert candidates == [n * 3 * size, n * 2 * size]
    assert math.isclose(loss.item(), sum(per_step) / 2, rel_tol=1e-5)
    assert all(0 <= float(a) <= 1 for a in accuracies)


def test_accuracy_counts_the_true_target_scoring_highest():
    m = _cpc(prediction_steps=1, max_queries=None)
    z = torch.randn(2, 8, 4, 4)
    perfect = torch.zeros(2, 1, 8, 4, 4)
    perfect[:, 0, :, :3] = z[:, :, 1:]  # predict exactly the patch one row below
    _, accuracies, _ = m.contrast(z, perfect, None)
    assert float(accuracies[0]) == 1.0
    _, accuracies, _ = m.contrast(z, -perfect, None)
    assert float(accuracies[0]) == 0.0


def test_global_batch_slices_equal_the_single_process_rows():
    m = _cpc(patch_grayscale=0.5, max_queries=50)
    images = _images(8)
    g_full = _g(5)
    full = m.make_patches(images, g_full)
    for offset in (0, 4):
        g = _g(5)
        part = m.make_patches(images[offset : offset + 4], g, 8, offset)
        assert torch.allclose(part, full[offset : offset + 4], atol=1e-6)
        # the generator is left where one process leaves it: the query subset drawn next
        # (from the gathered batch) is the same in every process
        assert torch.equal(g.get_state(), g_full.get_state())
        assert torch.equal(m.query_subset(560, g, "cpu"), m.query_subset(560, _g_at(g_full), "cpu"))
    assert not torch.equal(m.make_patches(images, _g(6)), full)


def _g_at(g):
    copy = torch.Generator()
    copy.set_state(g.get_state())
    return copy


def test_two_simulated_processes_compute_the_single_process_loss(monkeypatch):
    """Each 'process' embeds its 4 rows and gathers the other's (the gather replaced by a
    concatenation in rank order): the loss equals the one of 8 rows in one process."""
    m = _cpc(patch_grayscale=0.5, max_queries=100).eval()  # eval: BatchNorm per row
    images = _images(8)
    expected, _ = m(images, None, _g(2))
    halves = []
    for offset in (0, 4):
        z = m.embed(m.make_patches(images[offset : offset + 4], _g(2), 8, offset))
        halves.append((z, m.predict(z)))
    for rank in (0, 1):
        calls = iter(range(2))  # forward gathers z, then the predictions

        def fake_gather(x, rank=rank, calls=calls):
            which = next(calls)
            assert torch.allclose(x, halves[rank][which], atol=1e-6)  # this rank's own rows
            return torch.cat([halves[0][which], halves[1][which]])

        monkeypatch.setattr(cpc_module, "gather_with_grad", fake_gather)
        loss, _ = m(images[4 * rank : 4 * rank + 4], None, _g(2), 8, 4 * rank)
        assert math.isclose(loss.item(), expected.item(), rel_tol=1e-5)


def test_directions_predict_the_patch_k_steps_down_up_and_to_either_side():
    """In the turned map of direction r, "k rows below" the query at original position (i, j)
    is (i + k, j) down, (i - k, j) up, and (i, j -+ k) for the two sides."""
    n, d, g, k = 1, 1, 5, 2
    index = torch.arange(g * g, dtype=torch.float32).view(n, d, g, g)  # value = 5 i + j
    moves = {0: (k, 0), 1: (-k, 0)}
    seen = set()
    for r in range(4):
        turned = turn(index, r)
        queries, keys = cpc_pairs(turned, turned, k)  # query labelled by its own position
        step = set()
        for q, key in zip(queries[:, 0].tolist(), keys[:, 0].tolist(), strict=True):
            (i, j), (i2, j2) = divmod(int(q), g), divmod(int(key), g)
            step.add((i2 - i, j2 - j))
        assert len(step) == 1, step  # one displacement per direction
        (move,) = step
        if r in moves:
            assert move == moves[r]
        seen.add(move)
    assert seen == {(k, 0), (-k, 0), (0, k), (0, -k)}


def test_each_direction_scores_its_own_targets():
    """Perfect predictions of the patch k steps away in every direction score accuracy 1; the
    predictions of one direction placed in another's slot do not."""
    m = _cpc(prediction_steps=1, max_queries=None, directions=4)
    z = torch.randn(3, 32, 4, 4, generator=_g())
    perfect = torch.zeros(3, 4, 32, 4, 4)
    for r in range(4):
        perfect[:, r, :, :3] = turn(z, r)[:, :, 1:]  # the patch one step away in direction r
    _, accuracies, candidates = m.contrast(z, perfect, None)
    assert [float(a) for a in accuracies] == [1.0] * 4 and candidates == [36] * 4
    _, accuracies, _ = m.contrast(z, perfect[:, [1, 0, 3, 2]], None)
    assert max(float(a) for a in accuracies) < 0.5


def test_a_one_direction_checkpoint_of_the_earlier_layout_loads():
    m = _cpc(prediction_steps=2)
    old = {}
    for key, value in m.state_dict().items():  # context.0.* -> context.*, predictors.0.s.* ...
        key = key.replace("context.0.", "context.").replace("predictors.0.", "predictors.")
        old[key] = value.clone() + 1
    fresh = _cpc(prediction_steps=2)
    fresh.load_state_dict(old)
    assert torch.equal(fresh.context[0].input.weight, m.context[0].input.weight + 1)
    assert torch.equal(fresh.predictors[0][1].bias, m.predictors[0][1].bias + 1)


@pytest.mark.parametrize("directions", [1, 4])
def test_step_is_deterministic_and_trains_every_parameter(directions):
    m = _cpc(patch_grayscale=0.3, max_queries=200, directions=directions)
    images = _images(6)
    loss, metrics = m(images, None, _g(1))
    again, _ = m(images, None, _g(1))
    assert torch.equal(loss, again)
    assert not torch.equal(m(images, None, _g(2))[0], loss)
    assert {"prediction_accuracy", "prediction_accuracy_k1", "prediction_accuracy_k3",
            "embedding_spread"} <= set(metrics)  # fmt: skip
    m.zero_grad()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, name
        if not name.startswith("encoder."):
            assert p.grad.abs().sum() > 0, name
    first = next(m.encoder.parameters())  # the stem convolution
    assert first.grad is not None and first.grad.abs().sum() > 0


def test_pretext_metrics_report_loss_and_accuracy_per_offset():
    m = _cpc(prediction_steps=2).eval()
    metrics = m.pretext_metrics(_images(4), _g())
    assert list(metrics) == [
        "cpc_loss",
        "prediction_accuracy",
        "prediction_accuracy_k1",
        "prediction_accuracy_k2",
        "prediction_candidates",
    ]
    assert metrics["prediction_candidates"] == (4 * 6 * 7 + 4 * 5 * 7) / 2
    assert metrics["cpc_loss"] > 0 and 0 <= metrics["prediction_accuracy"] <= 1


def smooth_fields(n: int, seed: int, size: int = 16) -> torch.Tensor:
    """uint8 (n, 3, size, size): random 4x4 colour fields upsampled (bicubic) plus a little
    noise. Every patch differs from the others of its image and continues smoothly into the
    rows below, so the patch k rows down is predictable and identifiable. (The stripes of
    ``make_pattern_images`` repeat along a row or a column: several candidates of the same
    image are the same patch up to noise, which caps top-1 accuracy whatever is learned.)"""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    img = F.interpolate(low, size=size, mode="bicubic", align_corners=True)
    img = img + 0.02 * torch.randn(n, 3, size, size, generator=g)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.slow
def test_training_lifts_prediction_accuracy_far_above_chance_and_the_untrained_model():
    """40 steps of batch 16 (~10 s on one thread): held-out top-1 among ~1340 candidates goes
    from chance (~0.001) to ~0.14."""
    m = _cpc(prediction_steps=2)
    train, held_out = smooth_fields(512, seed=0), smooth_fields(32, seed=1)

    def evaluate() -> dict[str, float]:
        m.eval()
        value = m.pretext_metrics(held_out, _g(0))
        m.train()
        return value

    before = evaluate()
    opt = torch.optim.AdamW(m.parameters(), lr=5e-3)
    for step in range(40):
        idx = torch.randint(0, len(train), (16,), generator=_g(step))
        loss, _ = m(train[idx], None, _g(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = evaluate()
    chance = 1 / after["prediction_candidates"]  # 32 images * (6 + 5) / 2 rows * 7 columns
    assert before["prediction_accuracy"] < 5 * chance, before
    assert after["prediction_accuracy"] > max(0.05, 50 * chance), after
    assert after["cpc_loss"] < before["cpc_loss"] - 1.0, (before, after)


@pytest.mark.parametrize("recipe", ["cpc_default", "cpc_cifar10_cpu"])
def test_recipes_load(recipe):
    cfg = load_config("cpc", recipe)
    assert cfg.method == "cpc" and cfg.backbone.name == "resnet18"
    args = cfg.method_config()
    assert args.prediction_steps < 7 and args.patch_size == 8 and args.stride == 4


def test_train_then_eval_pretext_and_knn_from_the_cli(tiny_npz, tmp_path):
    run = tmp_path / "run"
    args = [
        "train", "cpc", f"out_dir={run}", f"data.source={tiny_npz}",
        "eval_data.source=null", "backbone.name=resnet_tiny", "backbone.width=null",
        "train.batch_size=16", "train.epochs=1", "train.progress=false",
        "train.tensorboard=false", "train.precision=fp32", "train.knn_monitor.every_epochs=0",
        "method_args.context_dim=32", "method_args.prediction_steps=2",
    ]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "prediction_accuracy" in r]
    assert logged and math.isfinite(logged[-1]["loss"])
    assert "prediction_accuracy_k2" in logged[-1]
    out = tmp_path / "pretext.json"
    assert main(["eval", "pretext", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["method"] == "cpc" and 0 <= row["prediction_accuracy"] <= 1
    assert row["cpc_loss"] > 0
    knn = tmp_path / "knn.json"
    assert (
        main(["eval", "knn", str(run), "--data", str(tiny_npz), "--k", "5", "--json", str(knn)])
        == 0
    )
    assert 0 <= json.loads(knn.read_text())[0]["knn@5"] <= 1


def test_embedding_spread_is_over_patch_embeddings():
    m = _cpc()
    _, metrics = m(_images(4), None, _g())
    assert 0 < float(metrics["embedding_spread"]) <= math.sqrt(m.encoder.feature_dim)


@pytest.mark.slow
def test_two_process_gloo_run_matches_one_process(tiny_npz, tmp_path):
    """2 torchrun processes (patch embeddings and predictions gathered with gradients, the
    kept positions drawn once for the global batch, global BatchNorm) follow the loss curve
    of 1 process on the same global batch."""
    train_single_and_ddp("cpc", tiny_npz, tmp_path, [
        "method_args.context_dim=32", "method_args.prediction_steps=2",
        "method_args.max_queries=64",
    ])  # fmt: skip
    assert_same_loss_curve(tmp_path)


def test_each_direction_predicts_from_its_own_side_only():
    """Direction 1 (up) reads the map turned 180 degrees: its prediction made at original row
    i sees rows >= i only, so changing row 0 moves direction 0 everywhere it looks but
    direction 1 only at the prediction made from row 0 itself (turned row 6)."""
    m = _cpc(context_layers=2, context_kernel=3, prediction_steps=1, directions=2)
    z = torch.randn(2, m.encoder.feature_dim, 7, 7)
    changed = z.clone()
    changed[:, :, 0] += torch.randn_like(changed[:, :, 0])
    before, after = m.predict(z), m.predict(changed)  # (n, 2, D, 7, 7), direction-major
    assert not torch.allclose(after[:, 0, :, 1], before[:, 0, :, 1])  # down: row 1 sees row 0
    assert torch.equal(after[:, 1, :, :6], before[:, 1, :, :6])  # up: turned rows 0-5 do not
    assert not torch.allclose(after[:, 1, :, 6], before[:, 1, :, 6])
