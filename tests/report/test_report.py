"""``selfsup report``: tables, charts, pictures and the page in a headless browser.

Fake run directories are written by hand (nothing is trained). The browser test needs
``/usr/bin/chromium`` (Debian: ``apt-get install chromium``) and is skipped without it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path
from xml.etree import ElementTree

import pytest

from selfsup.cli import main as selfsup_main
from selfsup.report import build_report
from selfsup.report.build import MAX_PICTURES_PER_COLUMN, collect, metric_rows
from selfsup.report.cli import main as report_main

CHROMIUM = Path("/usr/bin/chromium")


# -- fake inputs -------------------------------------------------------------------------------


def write_png(path: Path, width: int = 48, height: int = 24, seed: int = 0) -> Path:
    """A small RGB gradient PNG written with the standard library only."""
    rows = []
    for y in range(height):
        row = bytearray([0])  # filter: none
        for x in range(width):
            row += bytes(((x * 5 + seed * 40) % 256, (y * 9) % 256, (seed * 70 + 90) % 256))
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    data += chunk(b"IDAT", zlib.compress(b"".join(rows))) + chunk(b"IEND", b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def write_jsonl(path: Path, rows: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)


def eval_all_result(encoder: str, scale: float, *, method: str = "simclr") -> dict:
    """A result shaped like ``evaluate_all`` with every axis; accuracies scale with ``scale``."""
    corr = {"gaussian_noise": 0.3 * scale, "fog": 0.5 * scale, "contrast": 0.4 * scale}
    mca = sum(corr.values()) / len(corr)
    curve = [
        {
            "epoch": e,
            "train_loss": 2.0 / e,
            "train_top1": 0.2 * e * scale,
            "test_top1": 0.15 * e * scale,
        }
        for e in (1, 2, 3, 4)
    ]
    return {
        "encoder": encoder,
        "label": Path(encoder.removeprefix("random:")).name,
        "method": method,
        "backbone": "resnet18",
        "feature_dim": 512,
        "data": "tiny:train|test",
        "axes": ["knn", "linear", "clustering", "ood", "pretext", "cost", "finetune", "partial",
                 "low_label", "robustness"],
        "seconds": {"knn": 0.1},
        "knn@200": 0.6 * scale,
        "knn@20": 0.55 * scale,
        "linear_top1": 0.65 * scale,
        "linear_train_top1": 0.7 * scale,
        "clustering": {"nmi": 0.4 * scale, "ari": 0.3 * scale, "cluster_accuracy": 0.5 * scale,
                       "k": 10},
        "ood": {
            "uniform_noise": {"auroc": 0.9 * min(scale, 1.1), "fpr@95tpr": 0.3 / scale,
                              "images": 8},
            "blobs": {"auroc": 0.7 * min(scale, 1.1), "fpr@95tpr": 0.5 / scale, "images": 8},
        },
        "ood_score": "distance to the 50-th nearest train feature",
        "pretext": {"rotation_accuracy": 0.8 * scale, "loss": 1.0 / scale},
        "cost": {"parameters": 11_000_000, "forward_flops_per_image": 556_000_000},
        "finetune": {"top1": 0.6 * scale, "best_top1": 0.61 * scale, "curve": curve,
                     "freeze_stages": 0, "num_stages": 4},
        "partial": {"top1": 0.55 * scale, "best_top1": 0.56 * scale, "curve": curve[:3],
                    "freeze_stages": 2, "num_stages": 4},
        "low_label": {"fractions": {
            "0.01": {"images": 10, "linear": {"mean": 0.3 * scale, "std": 0.02, "runs": []},
                     "finetune": {"mean": 0.25 * scale, "std": 0.01, "runs": []}},
            "0.1": {"images": 100, "linear": {"mean": 0.5 * scale, "std": 0.01, "runs": []}},
        }},
        "robustness": {"linear": {"clean": 0.65 * scale, "per_corruption_mean": corr,
                                  "mean_corruption_accuracy": mca,
                                  "relative_drop": (0.65 * scale - mca) / (0.65 * scale)}},
    }  # fmt: skip


def make_run(
    root: Path,
    name: str,
    *,
    losses: float = 5.0,
    knn: float | None = 0.3,
    rate: float = 1000.0,
    pictures: int = 2,
) -> Path:
    """A run directory with config.yaml, summary.json, metrics.jsonl and pictures/."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(
        f"method: {name.split('_')[0]}\nbackbone:\n  name: resnet18\n"
        "# note: <script>alert(1)</script> & friends\n"
    )
    (run / "summary.json").write_text(json.dumps({
        "steps": 40, "final_loss": losses / 4, "seconds": 120.0 * 1000 / rate,
        "images_per_second": rate, "images_seen": 40 * 64, "method": name.split("_")[0],
        "backbone": "resnet18", "peak_rss_mib": 900.0 + rate / 10,
    }))  # fmt: skip
    rows: list[dict] = [{"event": "start", "images": 64, "step": 0}]
    for step in range(1, 41):
        rows.append({"step": step, "epoch": step / 10, "loss": losses / (1 + step / 10),
                     "lr": 0.1, "images_per_second": rate})  # fmt: skip
        if knn is not None and step % 10 == 0:
            rows.append({"step": step, "epoch": step / 10, "online_knn@200": knn * step / 40})
    rows.append({"step": 25, "event": "collapse_warning", "reason": "std small"})
    rows.append({"event": "end", "steps": 40, "step": 40})
    write_jsonl(run / "metrics.jsonl", rows, tail='{"step": 41, "loss": 0.')  # cut-off line
    for i in range(pictures):
        write_png(run / "pictures" / f"reconstruction_step{10 * (i + 1):08d}.png", seed=i)
    return run


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    """See :func:`make_runs`."""
    return make_runs(tmp_path)


def make_runs(tmp_path: Path) -> dict[str, Path]:
    """Two complete runs, one empty one, eval results (one in eval.jsonl, one in an
    ``eval all --out`` directory with a random-init baseline and a picture)."""
    root = tmp_path / "runs"
    a = make_run(root, "simclr_a", losses=6.0, knn=0.3, rate=1500.0)
    b = make_run(root, "byol_b", losses=2.0, knn=0.4, rate=800.0, pictures=1)
    write_png(b / "pictures" / "colorization_step00000040.png", seed=3)
    empty = root / "empty_run"
    empty.mkdir()
    write_jsonl(a / "eval.jsonl", [
        {"encoder": str(a), "protocol": "finetune", "top1": 0.1, "curve": []},  # superseded
        eval_all_result(str(a), 1.0),
    ])  # fmt: skip
    out = tmp_path / "evalout"
    out.mkdir()
    b_result = eval_all_result("runs/byol_b", 1.2, method="byol")
    b_result["pictures"] = {"tsne": "evalout/pictures/byol_b/tsne.png"}
    write_png(out / "pictures" / "byol_b" / "tsne.png", 80, 60, seed=5)
    (out / "byol_b.json").write_text(json.dumps(b_result))
    rnd = eval_all_result("random:runs/simclr_a", 0.3, method="random")
    rnd.pop("pretext")
    (out / "random_simclr_a.json").write_text(json.dumps(rnd))
    return {"a": a, "b": b, "empty": empty, "evalout": out, "root": root}


# -- reading the page --------------------------------------------------------------------------


class _Table(HTMLParser):
    """Rows of ``table#metrics``: ``{label: [(text, is_best), ...]}`` and the header."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, list[tuple[str, bool]]] = {}
        self.header: list[str] = []
        self._in_table = False
        self._cell: list[str] | None = None
        self._best = False
        self._row: list[tuple[str, bool]] = []
        self._label: str | None = None
        self._tag = ""
        self._in_head = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id") == "metrics":
            self._in_table = True
        if not self._in_table:
            return
        if tag == "thead":
            self._in_head = True
        if tag == "tr":
            self._row, self._label = [], None
        if tag in ("td", "th"):
            self._cell, self._tag = [], tag
            self._best = "best" in (a.get("class") or "").split()

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if not self._in_table:
            return
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            if self._in_head:
                self.header.append(text)
            elif self._tag == "th":
                self._label = text.rstrip(" ↑↓")
            else:
                self._row.append((text, self._best))
            self._cell = None
        if tag == "tr" and self._label is not None and self._row:
            self.rows[self._label] = self._row
        if tag == "thead":
            self._in_head = False
        if tag == "table":
            self._in_table = False


def table_of(html: str) -> _Table:
    parser = _Table()
    parser.feed(html)
    return parser


def best_of(table: _Table, label: str) -> list[int]:
    return [i for i, (_, best) in enumerate(table.rows[label]) if best]


# -- tests -------------------------------------------------------------------------------------


def test_table_values_and_best(runs: dict[str, Path], tmp_path: Path) -> None:
    html_path, md_path = build_report(
        [runs["a"], runs["b"]], tmp_path / "report", eval_paths=[runs["evalout"]]
    )
    assert html_path == tmp_path / "report" / "index.html" and html_path.is_file()
    assert md_path == tmp_path / "report" / "report.md" and md_path.is_file()
    html = html_path.read_text()
    t = table_of(html)
    # columns: the two runs, then the random baseline (its own column)
    assert [h.split()[0] for h in t.header] == ["metric", "simclr_a", "byol_b", "random:simclr_a"]
    assert [v for v, _ in t.rows["kNN@200 top-1"]] == ["60.00%", "72.00%", "18.00%"]
    assert best_of(t, "kNN@200 top-1") == [1]
    assert [v for v, _ in t.rows["linear top-1"]] == ["65.00%", "78.00%", "19.50%"]
    assert best_of(t, "FPR@95%TPR blobs") == [1]  # lower is better
    assert best_of(t, "train images / s") == [0]  # 1500 > 800; the baseline has none
    assert t.rows["train images / s"][2][0] == "–"
    assert best_of(t, "minutes") == [0]
    assert best_of(t, "parameters") == []  # all equal: nothing highlighted
    assert best_of(t, "relative drop (linear probe)") == []  # equal up to rounding
    # every axis of eval all has rows
    for label in ("kNN@20 top-1", "NMI", "ARI", "cluster accuracy", "AUROC uniform_noise",
                  "AUROC blobs", "mCA (linear probe)", "relative drop (linear probe)",
                  "fine-tune top-1", "partial fine-tune top-1", "1% labels: linear",
                  "1% labels: finetune", "10% labels: linear", "rotation_accuracy", "loss",
                  "forward FLOPs / image", "peak memory (RSS, MiB)", "online kNN@200 (last)",
                  "collapse warnings"):  # fmt: skip
        assert label in t.rows, label
    assert t.rows["1% labels: linear"][0][0] == "30.00 ± 2.00%"
    assert t.rows["forward FLOPs / image"][0][0] == "556.00 M"
    assert t.rows["parameters"][0][0] == "11,000,000"
    assert best_of(t, "loss") == [1]  # the pretext loss: lower is better
    assert t.rows["fine-tune top-1"][0][0] == "60.00%"  # eval all supersedes the older row
    assert t.rows["online kNN@200 (last)"][:2] == [("30.00%", False), ("40.00%", True)]
    # charts: inline SVG (no XML prolog or namespace), one per kind, with its legend
    titles = ("Training loss", "Online kNN accuracy", "Fine-tuning test accuracy",
              "Robustness: corruption accuracy (linear probe)")  # fmt: skip
    charts = re.findall(r'<div class="chart" role="img" aria-label="([^"]+)"><svg', html)
    assert charts == list(titles)
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    for legend in ("simclr_a", "byol_b", "byol_b (partial)", "random:simclr_a"):
        assert f">{legend}</text>" in html, legend
    # config shown escaped inside <details>
    assert "<details><summary>config.yaml</summary><pre>method: simclr" in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends" in html
    assert "<script" not in html


def test_markdown_table_and_assets(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "report"
    _, md_path = build_report([runs["a"], runs["b"]], out, eval_paths=[runs["evalout"]])
    md = md_path.read_text()
    assert "| kNN@200 top-1 ↑ | 60.00% | **72.00%** | 18.00% |" in md
    assert "| **Frozen features** |" in md
    links = re.findall(r"\]\((assets/[^)]+\.png)\)", md)
    assert "assets/simclr_a/reconstruction_step00000020.png" in links
    assert "assets/byol_b/colorization_step00000040.png" in links
    assert "assets/byol_b/tsne.png" in links  # from the eval result's "pictures"
    for link in links:
        assert (out / link).is_file(), link
    for svg in ("loss", "online_knn", "finetune", "robustness_linear"):
        assert f"(assets/charts/{svg}.svg)" in md
        root = ElementTree.parse(out / "assets" / "charts" / f"{svg}.svg").getroot()
        assert root.tag == "{http://www.w3.org/2000/svg}svg"  # a standalone SVG file


def test_pictures_embedded_and_self_contained(runs: dict[str, Path], tmp_path: Path) -> None:
    html_path, _ = build_report([runs["a"], runs["b"]], tmp_path / "r", [runs["evalout"]])
    html = html_path.read_text()
    images = re.findall(r'<img src="([^"]+)" alt="([^"]+)"', html)
    assert len(images) == 2 + 2 + 1  # 2 + 1 run pictures, + colorization, + eval t-SNE
    assert all(src.startswith("data:image/png;base64,iVBORw0KGgo") for src, _ in images)
    assert "eval tsne" in {alt for _, alt in images}
    # nothing fetched from anywhere: every src/href is a data URI or a fragment, no URL at all
    assert "http://" not in html and "https://" not in html
    for ref in re.findall(r'(?:src|href)="([^"]*)"', html):
        assert ref.startswith(("data:", "#")), ref
    assert "@import" not in html
    assert all(ref.startswith("#") for ref in re.findall(r"url\(([^)]*)\)", html))  # clip paths
    assert "Content-Security-Policy" in html
    # the page still works after moving it: no reference to the run directories' files
    moved = tmp_path / "moved"
    shutil.copytree(html_path.parent, moved)
    shutil.rmtree(runs["root"])
    assert (moved / "index.html").read_text() == html


def test_picture_cap_keeps_latest_of_each_kind(tmp_path: Path) -> None:
    run = make_run(tmp_path, "mae_many", pictures=MAX_PICTURES_PER_COLUMN + 8)
    write_png(run / "pictures" / "masks_step00000001.png")
    columns, _ = collect([run])
    names = [p.name for p in columns[0].pictures]
    assert len(names) == MAX_PICTURES_PER_COLUMN
    assert "masks_step00000001" in names
    assert f"reconstruction_step{10 * (MAX_PICTURES_PER_COLUMN + 8):08d}" in names
    assert "reconstruction_step00000010" not in names  # the oldest are left out
    assert any("not shown" in n for n in columns[0].notes)


def test_missing_and_broken_files_are_tolerated(runs: dict[str, Path], tmp_path: Path) -> None:
    broken = tmp_path / "runs" / "broken_run"
    broken.mkdir()
    (broken / "summary.json").write_text('{"steps": 4')  # cut off
    write_jsonl(broken / "metrics.jsonl", [
        {"step": 1, "loss": 3.0}, {"step": 2, "loss": float("nan")}, {"step": 3, "loss": 2.0},
        {"step": 4, "event": "end", "images_per_second": 321.0, "seconds": 60.0, "steps": 4},
    ], tail="not json\n[1, 2]\n")  # fmt: skip
    (broken / "eval.jsonl").write_text('{"encoder": "x", "knn@200": 0.5}\n{oops\n')
    (broken / "pictures").mkdir()
    (broken / "pictures" / "fake.png").write_text("not a png")
    bad_eval = tmp_path / "bad.json"
    bad_eval.write_text("{")
    html_path, md_path = build_report(
        [runs["empty"], broken, tmp_path / "does_not_exist"],
        tmp_path / "report",
        eval_paths=[bad_eval, tmp_path / "nowhere.json", runs["evalout"]],
    )
    html = html_path.read_text()
    t = table_of(html)
    assert t.header[1].startswith("empty_run") and t.header[2].startswith("broken_run")
    assert t.rows["train images / s"][1][0] == "321.0"  # from the "end" event
    assert t.rows["kNN@200 top-1"][:3] == [("–", False), ("50.00%", False), ("–", False)]
    assert "missing: config.yaml, summary.json, metrics.jsonl" in html
    assert "summary.json is not valid JSON" in html
    assert "unreadable line(s) skipped" in html
    assert "not a PNG file" in html  # shown as a note, not embedded
    assert "is not a directory" in html and "no such file or directory" in html
    assert "bad.json is not valid JSON" in html
    assert "Training loss" in html  # the NaN point is dropped, the chart still drawn
    assert "| train images / s ↑ |" in md_path.read_text()
    # nothing at all to show
    html_path, _ = build_report([], tmp_path / "nothing")
    assert "nothing to report" in html_path.read_text()


def test_eval_json_list_and_matching(runs: dict[str, Path], tmp_path: Path) -> None:
    """``--json`` lists are read too; a checkpoint path matches its run directory."""
    rows = [eval_all_result(str(runs["a"] / "checkpoints" / "step_40.pt"), 1.1),
            eval_all_result("/elsewhere/exported.safetensors", 0.5)]  # fmt: skip
    rows[1]["label"] = "exported"
    listing = tmp_path / "rows.json"
    listing.write_text(json.dumps(rows))
    columns, _ = collect([runs["a"]], [listing])
    assert [c.name for c in columns] == ["simclr_a", "exported"]
    assert [c.kind for c in columns] == ["run", "baseline"]
    table = {r.label: r.values for r in metric_rows(columns)}
    assert table["kNN@200 top-1"] == [pytest.approx(0.66), pytest.approx(0.3)]


def test_single_protocol_eval_rows(tmp_path: Path) -> None:
    """Rows of ``selfsup eval finetune / low-label / pretext`` in eval.jsonl are shown too."""
    run = make_run(tmp_path, "rotnet_x", pictures=0)
    pic = write_png(run / "pictures" / "rotations_eval_tiny_test.png")
    write_jsonl(run / "eval.jsonl", [
        {"encoder": str(run), "protocol": "finetune", "data": "tiny", "top1": 0.42,
         "best_top1": 0.45,
         "curve": [{"epoch": 1, "test_top1": 0.3}, {"epoch": 2, "test_top1": 0.42}]},
        {"protocol": "low_label", "data": "tiny", "encoder": str(run),
         "fractions": {"0.1": {"images": 6, "linear": {"mean": 0.33, "std": 0.0, "runs": [0.33]}}}},
        {"encoder": str(run), "method": "rotnet", "data": "tiny:test", "images": 64,
         "pictures": [str(pic)], "rotation_accuracy": 0.9, "loss": 0.3},
    ])  # fmt: skip
    columns, _ = collect([run])
    table = {r.label: r.values[0] for r in metric_rows(columns)}
    assert table["fine-tune top-1"] == 0.42
    assert float(table["10% labels: linear"]) == 0.33
    assert table["rotation_accuracy"] == 0.9 and "images" not in table
    assert [p.name for p in columns[0].pictures] == ["rotations_eval_tiny_test"]  # not twice
    assert table["collapse warnings"] == 1


def test_charts_scale_and_thinning() -> None:
    from selfsup.report.charts import MAX_POINTS, Series, _thin, line_chart

    steep = [(float(s), 100.0 / s**2) for s in range(1, 2001)]
    svg = line_chart([Series("a", steep, "#000")], title="t", xlabel="step", ylabel="loss")
    assert "loss (log scale)" in svg  # four decades: a log axis
    thinned = _thin(steep)
    assert len(thinned) <= MAX_POINTS + 1 and thinned[-1] == steep[-1] and thinned[0] == steep[0]
    flat = line_chart([Series("b", [(1.0, 2.0), (2.0, 1.5)], "#000")], title="t", xlabel="x",
                      ylabel="loss")  # fmt: skip
    assert "log scale" not in flat and ">loss</text>" in flat
    again = line_chart([Series("b", [(1.0, 2.0), (2.0, 1.5)], "#000")], title="t", xlabel="x",
                       ylabel="loss")  # fmt: skip
    assert again == flat  # deterministic: no dates, fixed ids


def test_command_line(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert report_main([str(runs["a"]), "--eval", str(runs["evalout"]), "--out",
                        str(tmp_path / "cli")]) == 0  # fmt: skip
    assert "index.html" in capsys.readouterr().out
    assert (tmp_path / "cli" / "report.md").is_file()
    # the same through the main command
    assert selfsup_main(["report", str(runs["a"]), str(runs["b"]), "--out",
                         str(tmp_path / "main")]) == 0  # fmt: skip
    html = (tmp_path / "main" / "index.html").read_text()
    assert "simclr_a" in html and "byol_b" in html
    with pytest.raises(SystemExit):
        selfsup_main(["report", "--out", str(tmp_path / "none")])


# -- in a browser ------------------------------------------------------------------------------


def _chromium(*args: str, profile: Path) -> subprocess.CompletedProcess[str]:
    cmd = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-extensions", "--disable-dev-shm-usage", "--mute-audio",
        f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=3000", "--window-size=1280,2400", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines()
            if "CONSOLE" in line or "Uncaught" in line or "Refused to" in line]  # fmt: skip


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs chromium: apt-get install chromium")
def test_page_in_headless_chromium(runs: dict[str, Path], tmp_path: Path) -> None:
    html_path, _ = build_report([runs["a"], runs["b"]], tmp_path / "report", [runs["evalout"]])
    url = html_path.resolve().as_uri()
    # the console check works: a page with an error and a blocked request is caught
    canary = tmp_path / "canary.html"
    canary.write_text('<!DOCTYPE html><meta http-equiv="Content-Security-Policy" '
                      "content=\"default-src 'none'; script-src 'unsafe-inline'\">"
                      '<img src="https://example.invalid/x.png" alt="x">'
                      "<script>console.error('canary'); undefinedFn();</script>")  # fmt: skip
    seen = _console_errors(_chromium("--dump-dom", canary.as_uri(), profile=tmp_path / "p0").stderr)
    assert any("canary" in line for line in seen) and any("Uncaught" in line for line in seen), (
        "chromium's console messages are not on stderr: the checks below would be blind\n"
        + "\n".join(seen)
    )

    dom = _chromium("--dump-dom", url, profile=tmp_path / "p1")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console_errors(dom.stderr) == [], dom.stderr
    assert '<table class="metrics" id="metrics">' in dom.stdout
    assert dom.stdout.count('<img src="data:image/png;base64,') == 5
    assert dom.stdout.count("<svg") >= 4

    if os.environ.get("SELFSUP_TEST_ARTIFACTS"):
        shot = Path(os.environ["SELFSUP_TEST_ARTIFACTS"]) / "report.png"
    else:
        shot = tmp_path / "report.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    shot.unlink(missing_ok=True)
    run = _chromium(f"--screenshot={shot}", url, profile=tmp_path / "p2")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_errors(run.stderr) == [], run.stderr
    assert shot.is_file() and shot.read_bytes().startswith(b"\x89PNG")
    print(f"screenshot: {shot}")
