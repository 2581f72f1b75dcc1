"""``selfsup sweep``: the grid helpers, and the command end to end on a tiny data set."""

import json
import shutil

import pytest

from selfsup.cli import main
from selfsup.sweep import cell_name, grid_cells, parse_grid, plot_sweep, sweep_table

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- grid helpers


def test_parse_grid_keeps_the_order_of_keys_and_values():
    grid = parse_grid(["method_args.temperature=0.5, 0.1", "train.optimizer.base_lr=1e-3"])
    assert grid == {"method_args.temperature": ["0.5", "0.1"], "train.optimizer.base_lr": ["1e-3"]}
    assert list(grid) == ["method_args.temperature", "train.optimizer.base_lr"]


@pytest.mark.parametrize(
    "specs, message",
    [
        (["method_args.temperature"], "not of the form key=v1,v2"),
        (["method_args.temperature="], "empty value"),
        (["method_args.temperature=0.1,,0.2"], "empty value"),
        (["method_args.temperature=0.1,"], "empty value"),
        (["=0.1,0.2"], "config path"),
        (["method_args.temperature=0.1,0.1"], "0.1 given twice"),
        (["train.epochs=1,2", "train.epochs=3"], "'train.epochs' is given twice"),
    ],
)
def test_parse_grid_errors(specs, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(specs)


def test_grid_cells_is_the_cartesian_product_first_key_slowest():
    cells = grid_cells({"a.x": ["1", "2"], "b": ["p", "q", "r"]})
    assert cells == [
        {"a.x": "1", "b": "p"}, {"a.x": "1", "b": "q"}, {"a.x": "1", "b": "r"},
        {"a.x": "2", "b": "p"}, {"a.x": "2", "b": "q"}, {"a.x": "2", "b": "r"},
    ]  # fmt: skip
    assert grid_cells({"a": ["1"]}) == [{"a": "1"}]


def test_cell_name_is_readable_and_filesystem_safe():
    assert cell_name({"method_args.temperature": "0.1"}) == "temperature=0.1"
    cell = {"method_args.temperature": "0.1", "train.optimizer.base_lr": "1e-3"}
    assert cell_name(cell) == "temperature=0.1,base_lr=1e-3"
    # two keys with the same last component: both in full
    clash = {"train.optimizer.lr": "0.1", "method_args.lr": "0.2", "train.epochs": "3"}
    assert cell_name(clash) == "train.optimizer.lr=0.1,method_args.lr=0.2,epochs=3"
    odd = cell_name({"augment": "a/b c:*"})
    assert odd == "augment=a_b_c__" and "/" not in odd
    assert not cell_name({"x": "1"}).startswith(".")
    with pytest.raises(ValueError):
        cell_name({})


def _rows(grid):
    rows = []
    for i, cell in enumerate(grid_cells(grid)):
        metrics = {"knn@200": 0.5 + 0.01 * i, "knn@20": 0.4 + 0.02 * i}
        cost = {"steps": 10, "images_seen": 160, "train_minutes": 0.5,
                "images_per_second": 100.0, "peak_rss_mib": 900.0}  # fmt: skip
        rows.append({"cell": cell, "name": cell_name(cell), **metrics, **cost})
    return rows


def test_table_bolds_the_best_and_plots_two_and_three_keys(tmp_path):
    grid = {"method_args.temperature": ["0.1", "0.5"], "train.optimizer.base_lr": ["0.1", "1"]}
    rows = _rows(grid)
    table = sweep_table(rows, grid, "knn@20").splitlines()
    assert table[0].startswith("| method_args.temperature | train.optimizer.base_lr | knn@200")
    assert len(table) == 2 + 4
    assert "**0.4600**" in table[-1] and table[-1].count("**") == 2  # best knn@20 only
    assert "**" not in "".join(table[2:-1])
    heatmap = plot_sweep(rows, grid, "knn@200", tmp_path / "two.png", title="t")
    grid3 = {**grid, "train.epochs": ["1", "2"]}
    bars = plot_sweep(_rows(grid3), grid3, "knn@200", tmp_path / "three.png")
    for path in (heatmap, bars):
        assert path.read_bytes()[:8] == PNG_MAGIC


# ----------------------------------------------------------------------------- end to end


def _tiny(data):
    return [f"data.source={data}", "backbone.name=resnet_tiny", "train.batch_size=16",
            "train.max_steps=2", "train.checkpoint_every_steps=1", "train.tensorboard=false",
            "train.knn_monitor.every_epochs=0", "train.pictures_every_epochs=0",
            "method_args.proj_hidden_dim=32"]  # fmt: skip


def _sweep(out, data, *extra):
    return main(["sweep", "simclr", "--grid", "method_args.temperature=0.1,0.5", "--out", str(out),
                 "--data", str(data), *_tiny(data), *extra])  # fmt: skip


def test_sweep_trains_evaluates_skips_and_resumes(tiny_npz, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert _sweep(out, tiny_npz) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "sweep.json").read_text())
    assert (result["method"], result["recipe"], result["metric"]) == ("simclr", None, "knn@200")
    assert result["grid"] == {"method_args.temperature": ["0.1", "0.5"]}
    assert "train.max_steps=2" in result["overrides"]
    names = ["temperature=0.1", "temperature=0.5"]
    assert [r["name"] for r in result["rows"]] == names
    for row, value in zip(result["rows"], ["0.1", "0.5"], strict=True):
        assert row["cell"] == {"method_args.temperature": value}
        assert row["steps"] == 2 and row["images_seen"] == 32
        assert 0.0 <= row["knn@200"] <= 1.0 and 0.0 <= row["knn@20"] <= 1.0
        assert "linear_top1" not in row
        assert row["train_minutes"] > 0 and row["images_per_second"] > 0
        assert row["peak_rss_mib"] > 0
        cfg = (out / row["name"] / "config.yaml").read_text()
        assert f"temperature: {value}" in cfg
    md = (out / "sweep.md").read_text()
    best = max(r["knn@200"] for r in result["rows"])
    assert md.count("\n") == 4 and f"**{best:.4f}**" in md  # ties are all bold
    assert md in printed and f"wrote {out / 'sweep.png'}" in printed
    assert (out / "sweep.png").read_bytes()[:8] == PNG_MAGIC

    # rerun: nothing is trained or evaluated again
    mtimes = {n: (out / n / "summary.json").stat().st_mtime_ns for n in names}
    assert _sweep(out, tiny_npz) == 0
    printed = capsys.readouterr().out
    assert all(f"cell {n}: done already" in printed for n in names)
    assert "training" not in printed
    assert {n: (out / n / "summary.json").stat().st_mtime_ns for n in names} == mtimes
    assert json.loads((out / "sweep.json").read_text())["rows"] == result["rows"]

    # a cell killed mid-run: no row, no summary, a checkpoint of step 1
    killed = out / names[1]
    (killed / "summary.json").unlink()
    shutil.rmtree(killed / "checkpoints" / "step_00000002")
    partial = dict(result, rows=result["rows"][:1])
    (out / "sweep.json").write_text(json.dumps(partial))
    assert _sweep(out, tiny_npz) == 0
    printed = capsys.readouterr().out
    assert f"cell {names[0]}: done already" in printed
    assert f"cell {names[1]} (2/2): resuming" in printed and "from step 1" in printed
    rows = json.loads((out / "sweep.json").read_text())["rows"]
    assert [r["name"] for r in rows] == names and rows[1]["steps"] == 2
    assert (out / names[0] / "summary.json").stat().st_mtime_ns == mtimes[names[0]]

    # the same folder with other overrides is refused
    assert _sweep(out, tiny_npz, "train.max_steps=3") == 1
    assert "holds a sweep of another overrides" in capsys.readouterr().err
    # a key=value without a comma after --grid is an override; a run of another config is
    # neither reused nor resumed
    (out / "sweep.json").unlink()
    code = main(["sweep", "simclr", "--grid", "method_args.temperature=0.1,0.5", "train.epochs=3",
                 "--out", str(out), "--data", str(tiny_npz), *_tiny(tiny_npz)])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "temperature=0.1 holds a run of another config (differs at train.epochs)" in err


@pytest.mark.parametrize(
    "grid, named",
    [
        ("method_args.temperatur=0.1,0.5", "method_args.temperatur: unknown key"),
        # only the last cell is bad: still nothing runs
        ("method_args.temperature=0.1,-1", "method_args.temperature: Input should be greater"),
    ],
)
def test_bad_grid_key_or_value_exits_2_before_anything_runs(tiny_npz, tmp_path, capsys, grid,
                                                            named):  # fmt: skip
    out = tmp_path / "sweep"
    code = main(["sweep", "simclr", "--grid", grid, "--out", str(out), "--data", str(tiny_npz),
                 f"data.source={tiny_npz}", "backbone.name=resnet_tiny"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert named in err and "sweep cell" in err
    assert not out.exists()


def test_metric_the_protocols_do_not_compute_is_an_error(tiny_npz, tmp_path, capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", "simclr", "--grid", "method_args.temperature=0.1,0.5", "--out",
                 str(out), "--metric", "linear_top1", "--data", str(tiny_npz)])  # fmt: skip
    assert code == 1
    assert "add --protocols linear" in capsys.readouterr().err
    assert not out.exists()
