"""What rotation, jigsaw and relative location share, tested once for each: global-batch
slicing (the tile tasks), training lifts held-out accuracy far above chance, input making stays
out of torch.compile graphs, training / evaluation / pictures through the CLI, and 2 gloo
processes following the 1-process loss curve."""

import json

import pytest
import torch
from synthetic import blobs, random_images, upright_scenes
from two_process import assert_same_loss_curve, train_single_and_ddp

from selfsup.augment.tiles import maximal_hamming_permutations, min_hamming_distance
from selfsup.backbones import build_backbone
from selfsup.cli import main
from selfsup.methods import get_method

pytestmark = pytest.mark.usefixtures("one_thread")

MEAN, STD = (0.5,) * 3, (0.25,) * 3
SMALL = {"head_hidden_dim": 32}
"""method_args every test here uses (a small head)."""
TASKS = {
    # method: (extra method_args, the pretext metric, the picture's name)
    "rotation": ({}, "rotation_accuracy", "rotations"),
    "jigsaw": ({"puzzle_size": 24, "num_permutations": 32}, "permutation_accuracy", "puzzles"),
    "relative_location": ({}, "location_accuracy", "patch_pairs"),
}


def _overrides(args: dict) -> list[str]:
    return [f"method_args.{key}={value}" for key, value in {**SMALL, **args}.items()]


@pytest.mark.parametrize("name", list(TASKS))
def test_input_making_stays_out_of_torch_compile_graphs(name):
    """The random draws run eagerly; the networks compile into one graph (Dynamo's eager
    backend: nothing is code-generated) that gives the eager losses."""
    import torch._dynamo as dynamo

    cls = get_method(name)
    m = cls(build_backbone("resnet_tiny"), cls.Config(**SMALL), image_size=16, mean=MEAN, std=STD)
    x = random_images(6)
    dynamo.reset()
    explained = dynamo.explain(m)(x, None, torch.Generator().manual_seed(0), None, 0)
    assert explained.graph_count == 1, explained.break_reasons
    compiled = torch.compile(m, backend="eager")
    for seed in (0, 1):
        eager, _ = m(x, None, torch.Generator().manual_seed(seed))
        again, _ = compiled(x, None, torch.Generator().manual_seed(seed))
        assert torch.allclose(again, eager)
    dynamo.reset()


@pytest.mark.parametrize("name", ["jigsaw", "relative_location"])
def test_tile_inputs_of_global_batch_slices_equal_the_single_process_batch(name):
    """Two processes' halves (drawn for the global batch of 8, sliced at their offsets) put
    together are the one-process inputs: tiles, labels and the tiles before normalisation; the
    same seed repeats them, another seed changes tiles and labels."""
    cls = get_method(name)
    config = cls.Config(head_hidden_dim=64, tile_color_jitter=0.4, tile_grayscale=0.5)
    m = cls(build_backbone("resnet_tiny"), config, image_size=16, mean=MEAN, std=STD)
    images = random_images(8)

    def inputs(rows, global_size=None, offset=0, seed=5):
        return m.make_inputs(rows, torch.Generator().manual_seed(seed), global_size, offset)

    full = inputs(images)
    parts = [inputs(images[o : o + 4], 8, o) for o in (0, 4)]
    assert torch.equal(torch.cat([p[1] for p in parts]), full[1])
    for i in (0, 2):
        assert torch.allclose(torch.cat([p[i] for p in parts]), full[i], atol=1e-5)
    again = inputs(images)
    assert all(torch.equal(a, b) for a, b in zip(again, full, strict=True))
    other = inputs(images, seed=6)
    assert not torch.equal(other[0], full[0]) and not torch.equal(other[1], full[1])


LEARNING = {
    # method: (images, held-out images, method_args, steps, batch, chance-level bound, target)
    "rotation": (upright_scenes, 64, {"head_hidden_dim": 64}, 40, 16, 0.5, 0.9),  # chance 1/4
    "jigsaw": (blobs, 64, {"head_hidden_dim": 64, "puzzle_size": 24}, 40, 32, 0.1, 0.7),  # 1/64
    "relative_location": (
        blobs,
        128,
        {"head_hidden_dim": 64, "puzzle_size": 24},
        60,
        32,
        0.3,
        0.7,
    ),  # chance 1/8  # fmt: skip
}


@pytest.mark.parametrize("name", list(LEARNING))
def test_training_lifts_held_out_accuracy_far_above_chance(name):
    """A few dozen AdamW steps on images whose pretext answer is visible (upright scenes; a
    blob whose shading says where each tile sits) take held-out accuracy from about chance to
    far above it (6 px tiles keep the tile tasks fast)."""
    make, n_held_out, args, steps, batch, before_max, after_min = LEARNING[name]
    metric = TASKS[name][1]
    torch.manual_seed(0)
    cls = get_method(name)
    m = cls(build_backbone("resnet_tiny"), cls.Config(**args), image_size=16, mean=MEAN, std=STD)
    train, held_out = make(256, seed=0), make(n_held_out, seed=1)

    def accuracy() -> float:
        m.eval()
        value = m.pretext_metrics(held_out, torch.Generator().manual_seed(0))[metric]
        m.train()
        return value

    before = accuracy()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    for step in range(steps):
        idx = torch.randint(0, len(train), (batch,), generator=torch.Generator().manual_seed(step))
        loss, _ = m(train[idx], None, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = accuracy()
    assert before < before_max and after > after_min, (before, after)


@pytest.mark.parametrize("name", list(TASKS))
def test_train_then_eval_pretext_and_knn_from_the_cli(name, tiny_npz, tmp_path):
    extra, metric, picture = TASKS[name]
    run = tmp_path / "run"
    args = [
        "train", name, f"out_dir={run}", f"data.source={tiny_npz}",
        "eval_data.source=null", "backbone.name=resnet_tiny", "backbone.width=null",
        "train.batch_size=16", "train.epochs=1", "train.progress=false",
        "train.tensorboard=false", "train.precision=fp32", "train.knn_monitor.every_epochs=0",
        *_overrides(extra),
    ]  # fmt: skip
    assert main(args) == 0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if metric in r]
    assert logged
    if name == "jigsaw":  # the run reports its permutation set's minimum distance
        expected = min_hamming_distance(maximal_hamming_permutations(32))
        assert logged[-1]["permutation_min_hamming"] == expected
    assert list((run / "pictures").glob(f"{picture}_step*.png"))
    out = tmp_path / "pretext.json"
    assert main(["eval", "pretext", str(run), "--data", str(tiny_npz), "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["method"] == name and 0 <= row[metric] <= 1
    assert row["pictures"] and row["pictures"][0].rsplit("/", 1)[-1].startswith(f"{picture}_eval")
    knn = tmp_path / "knn.json"
    assert main(["eval", "knn", str(run), "--data", str(tiny_npz), "--k", "5",
                 "--json", str(knn)]) == 0  # fmt: skip
    assert 0 <= json.loads(knn.read_text())[0]["knn@5"] <= 1


TWO_PROCESS = {
    "rotation": {},
    "jigsaw": {"num_permutations": 64, "puzzle_size": 24, "tile_color_jitter": 0.4},
    "relative_location": {"tile_color_jitter": 0.4},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TWO_PROCESS))
def test_two_process_gloo_run_matches_one_process(name, tiny_npz, tmp_path):
    """2 torchrun processes (each drawing for the global batch and keeping its rows, global
    BatchNorm) follow the same loss curve as 1 process on the same global batch."""
    train_single_and_ddp(name, tiny_npz, tmp_path, _overrides(TWO_PROCESS[name]))
    assert_same_loss_curve(tmp_path)
